//! End-to-end: federation to Entra ID. Real Entra cannot be reached from
//! here, so a stand-in token endpoint (Python, HTTPS with the test CA)
//! records what the control plane sends: the path as far as Entra's
//! `/<tenant>/oauth2/v2.0/token`, the form `azure_identity`'s
//! `ClientAssertionCredential` posts, and an assertion that verifies against
//! the control plane's JWKS. A job gets the stand-in's token through the
//! agent's identity endpoint, unchanged.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strato_e2e::{ControlPlane, TEST_IMAGE, job_log_lines, require_docker, wait_job_state};
use strato_proto::v1;

const TENANT: &str = "0d0c0b0a-0000-4000-8000-0000000000fe";
const ISSUER: &str = "https://strato.example.com/";
const TRAINER: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/trainer";
const TRAINER_CLIENT: &str = "7f0c5a9e-1111-4222-8333-944455556666";

/// Answers every POST with a token named after the client id, and appends
/// the request (path and form) to a file as one JSON line.
const STAND_IN: &str = r#"
import http.server, json, ssl, sys, urllib.parse
cert, key, record = sys.argv[1], sys.argv[2], sys.argv[3]
class Entra(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers['Content-Length'])).decode()))
        with open(record, 'a') as f:
            f.write(json.dumps({'path': self.path, 'form': form}) + '\n')
        body = json.dumps({'token_type': 'Bearer', 'expires_in': 3599, 'ext_expires_in': 3599,
                           'access_token': 'entra-token-for-' + form.get('client_id', '')}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', 0), Entra)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(cert, key)
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct StandIn(Child);

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_dir() -> std::path::PathBuf {
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data/azurite/tls");
    assert!(
        tls.join("cert.pem").exists(),
        "the test CA is missing under {}: run `cargo xtask setup`",
        tls.display()
    );
    tls
}

fn start_stand_in(record: &Path) -> (StandIn, u16) {
    let tls = tls_dir();
    let mut child = Command::new("python3")
        .args(["-c", STAND_IN])
        .arg(tls.join("cert.pem"))
        .arg(tls.join("key.pem"))
        .arg(record)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (apt-get install -y python3)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the stand-in's port");
    let port = line.trim().parse().expect("a port");
    (StandIn(child), port)
}

const PROBE: &str = r#"wget -q -O - --header "secret: $MSI_SECRET" "$MSI_ENDPOINT?api-version=2017-09-01&resource=https://storage.azure.com" 2>&1; echo; echo "== done""#;

#[tokio::test]
async fn federation_exchanges_a_signed_assertion_for_an_entra_token() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("requests.jsonl");
    let (_entra, port) = start_stand_in(&record);
    let authority = format!("https://127.0.0.1:{port}");
    let ca = tls_dir().join("ca.pem");
    let federated = format!("{TRAINER}={TRAINER_CLIENT}");
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &[
            "--reconcile-interval-ms",
            "200",
            "--token-issuer",
            ISSUER,
            "--federation-tenant-id",
            TENANT,
            "--federated-identity",
            &federated,
            "--federation-authority-host",
            &authority,
            "--federation-ca-file",
            ca.to_str().expect("utf-8 path"),
        ],
    )
    .await
    .expect("start");
    for (name, identity) in [("fed-user", TRAINER), ("fed-system", "[system]")] {
        let out = cp.cli(&[
            "compute",
            "create",
            "-n",
            name,
            "-s",
            "Standard_D2_v2",
            "--max-nodes",
            "1",
            "--assign-identity",
            identity,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let jobs = cp.jobs().await;
    let run = |cluster: &'static str| {
        let mut jobs = jobs.clone();
        async move {
            let id = jobs
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(v1::JobSpec {
                        cluster: cluster.into(),
                        image: TEST_IMAGE.into(),
                        command: vec!["sh".into(), "-c".into(), PROBE.into()],
                        ..Default::default()
                    }),
                })
                .await
                .expect("submit")
                .into_inner()
                .id;
            wait_job_state(
                &mut jobs,
                &id,
                v1::JobState::Completed,
                Duration::from_secs(90),
            )
            .await;
            job_log_lines(&mut jobs, &id)
                .await
                .into_iter()
                .map(|l| l.line)
                .collect::<Vec<String>>()
                .join("\n")
        }
    };

    // The user-assigned identity: the job gets Entra's token as it is.
    let output = run("fed-user").await;
    assert!(
        output.contains(&format!(
            "\"access_token\":\"entra-token-for-{TRAINER_CLIENT}\""
        )),
        "{output}"
    );
    let requests = std::fs::read_to_string(&record).expect("the stand-in was asked");
    let request: serde_json::Value =
        serde_json::from_str(requests.lines().next().expect("one request")).expect("json");
    assert_eq!(request["path"], format!("/{TENANT}/oauth2/v2.0/token"));
    let form = &request["form"];
    assert_eq!(form["client_id"], TRAINER_CLIENT);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "https://storage.azure.com/.default");
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    // The assertion is the control plane's, for this cluster, for Entra.
    let assertion = form["client_assertion"].as_str().expect("an assertion");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&cp.http_get("/jwks")).expect("jwks");
    let kid = jsonwebtoken::decode_header(assertion)
        .expect("header")
        .kid
        .expect("kid");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).expect("kid in the JWKS"))
        .expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["api://AzureADTokenExchange"]);
    validation.set_issuer(&[ISSUER]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
        .expect("the assertion verifies against the control plane's JWKS")
        .claims;
    assert_eq!(claims["sub"], "strato:cluster:fed-user");

    // A system-assigned identity cannot be federated: refused, saying why.
    let output = run("fed-system").await;
    assert!(output.contains("400"), "{output}");
    assert!(
        cp.log_text().contains("which Entra ID cannot federate"),
        "the refusal says why"
    );
    assert!(!output.contains("access_token"), "{output}");
    assert_eq!(
        std::fs::read_to_string(&record)
            .expect("record")
            .lines()
            .count(),
        1,
        "nothing was sent to Entra for the system-assigned identity"
    );
}
