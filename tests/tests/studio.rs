//! The studio in a real browser: headless Chromium through chromedriver
//! (WebDriver), against a control plane with the local provider. Its
//! screenshots go to target/studio-screenshots (docs/ keeps a copy).

use std::time::Duration;

use serde_json::json;
use strato_e2e::browser::{Browser, screenshots_dir};
use strato_e2e::{ControlPlane, TEST_IMAGE, require_docker};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_studio_in_a_real_browser() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start_fast(&dir.path().join("data"))
        .await
        .expect("start");
    let owner = cp.admin().token.clone().expect("the owner token");
    let reader = cp.cli_ok(&[
        "token", "create", "--name", "viewer", "--role", "Reader", "-o", "json",
    ]);
    let reader: serde_json::Value = serde_json::from_slice(&reader.stdout).expect("json");
    let reader = reader["secret"].as_str().expect("secret").to_owned();
    let studio = format!("https://{}/studio", cp.http);
    let shots = screenshots_dir();
    let browser = Browser::start().await.expect("browser");

    // Signing in: a wrong token is refused on the page, the right one is
    // a session in a cookie the page's scripts cannot read.
    browser.goto(&studio).await.expect("open");
    assert!(browser.url().await.expect("url").ends_with("/studio/login"));
    let token = browser.find("#f-token").await.expect("token field");
    browser.fill(&token, "strato_wrong").await.expect("type");
    browser
        .click(&browser.find("form button").await.expect("sign in"))
        .await
        .expect("click");
    browser
        .wait_for_text("Sign in", false, WAIT)
        .await
        .expect("still the sign-in page");
    assert!(
        browser.find("#f-token-error").await.is_ok(),
        "the refusal shows at the field"
    );
    sign_in(&browser, &owner).await;
    let cookie = browser
        .cookies()
        .await
        .expect("cookies")
        .into_iter()
        .find(|c| c["name"] == "__Host-strato_studio")
        .expect("the session cookie");
    assert_eq!(
        (
            cookie["httpOnly"].as_bool(),
            cookie["secure"].as_bool(),
            cookie["sameSite"].as_str()
        ),
        (Some(true), Some(true), Some("Strict")),
        "{cookie}"
    );

    // Creating a cluster: a bad name shows the API's rule at the name
    // field; a good one makes the cluster.
    browser
        .click(
            &browser
                .find("a[href='/studio/compute/new']")
                .await
                .expect("new"),
        )
        .await
        .expect("click");
    // GPU or CPU narrows the sizes offered.
    browser
        .click(
            &browser
                .find("#f-kind option[value='gpu']")
                .await
                .expect("GPU"),
        )
        .await
        .expect("pick");
    let offered = browser
        .run(
            "return Array.from(document.querySelectorAll('#f-size option'))\
               .filter(o => !o.hidden).map(o => o.value);",
            json!([]),
        )
        .await
        .expect("offered sizes");
    let offered: Vec<String> = serde_json::from_value(offered).expect("names");
    assert!(
        !offered.is_empty() && offered.iter().all(|s| s.starts_with("Standard_N")),
        "GPU sizes only: {offered:?}"
    );
    browser
        .click(
            &browser
                .find("#f-kind option[value='cpu']")
                .await
                .expect("CPU"),
        )
        .await
        .expect("pick");
    let name = browser.find("#f-name").await.expect("name field");
    browser.fill(&name, "9-bad-name").await.expect("type");
    let size = browser
        .find("#f-size option[value='Standard_D2_v2']")
        .await
        .expect("a size");
    browser.click(&size).await.expect("pick");
    browser
        .fill(&browser.find("#f-max_nodes").await.expect("max"), "1")
        .await
        .expect("type");
    let preview = browser.find("#quota-preview").await.expect("preview");
    let said = browser.text(&preview).await.expect("preview text");
    assert!(
        said.contains("At most 1 nodes × 2 vCPUs = 2 vCPUs of standardDv2Family"),
        "the quota it would use shows, as typed, before submitting: {said}"
    );
    browser
        .click(
            &browser
                .find("#create-cluster button[type=submit]")
                .await
                .expect("create"),
        )
        .await
        .expect("submit");
    let error = match browser.find("#f-name-error").await {
        Ok(e) => e,
        Err(e) => panic!(
            "the name's error: {e}: {}",
            browser.source().await.unwrap_or_default()
        ),
    };
    let said = browser.text(&error).await.expect("text");
    assert!(said.contains("name"), "{said}");
    browser
        .screenshot(&shots.join("create-cluster-error.png"))
        .await
        .expect("screenshot");
    let name = browser.find("#f-name").await.expect("name field");
    browser.fill(&name, "web").await.expect("type");
    browser
        .click(
            &browser
                .find("#create-cluster button[type=submit]")
                .await
                .expect("create"),
        )
        .await
        .expect("submit");
    browser
        .wait_for_text("Scale settings", false, WAIT)
        .await
        .expect("the cluster's page");
    assert!(
        browser
            .url()
            .await
            .expect("url")
            .ends_with("/studio/compute/web")
    );

    // A job from the CLI: its node appears, runs it, and goes idle.
    let script = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 1; done";
    let job = cp.cli_ok(&[
        "job",
        "submit",
        "--compute",
        "web",
        "--image",
        TEST_IMAGE,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let job = String::from_utf8_lossy(&job.stdout).trim().to_owned();
    browser
        .wait_for_text("scale up: node web-", true, WAIT)
        .await
        .expect("the node and why it came show on the cluster's page");

    // Its log on its page while it prints.
    browser
        .goto(&format!("{studio}/jobs/{job}"))
        .await
        .expect("job page");
    let logs = browser.find("#logs").await.expect("logs");
    let seen_partial = std::sync::atomic::AtomicBool::new(false);
    strato_e2e::wait_for("the job's last line on its page", WAIT, || {
        let (browser, logs, seen_partial) = (&browser, &logs, &seen_partial);
        async move {
            let text = browser.text(logs).await.ok()?;
            if text.contains("line-1") && !text.contains("line-6") {
                seen_partial.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            text.contains("line-6").then_some(())
        }
    })
    .await;
    let seen_partial = seen_partial.into_inner();
    assert!(seen_partial, "the page showed lines while the job printed");
    // The page shows how the job ended once its log does.
    browser
        .wait_for_text("completed", false, WAIT)
        .await
        .expect("the job's final state");
    browser
        .wait_for_text("The job ended.", false, WAIT)
        .await
        .expect("the stream ends with the job");
    browser
        .screenshot(&shots.join("job-logs.png"))
        .await
        .expect("screenshot");
    browser
        .goto(&format!("{studio}/compute/web"))
        .await
        .expect("cluster page");
    strato_e2e::wait_for("the node idle in its own row", WAIT, || {
        let (browser, page) = (&browser, format!("{studio}/compute/web"));
        async move {
            browser.goto(&page).await.ok()?;
            // The node's own row: its State cell.
            let mut states = Vec::new();
            for cell in browser.all("#nodes tbody tr td:nth-child(2)").await.ok()? {
                states.push(browser.text(&cell).await.unwrap_or_default());
            }
            (states == ["idle"]).then_some(())
        }
    })
    .await;
    browser
        .screenshot(&shots.join("cluster.png"))
        .await
        .expect("screenshot");

    // Canceling a job from its page.
    let long = cp.cli_ok(&[
        "job",
        "submit",
        "--compute",
        "web",
        "--image",
        TEST_IMAGE,
        "--",
        "sleep",
        "300",
    ]);
    let long = String::from_utf8_lossy(&long.stdout).trim().to_owned();
    browser
        .goto(&format!("{studio}/jobs/{long}"))
        .await
        .expect("job page");
    browser
        .click(
            &browser
                .find("form[action$='/cancel'] button")
                .await
                .expect("cancel"),
        )
        .await
        .expect("click");
    browser
        .wait_for_text("canceled", true, WAIT)
        .await
        .expect("the job is canceled");

    // The lists, also in a narrow window.
    browser.goto(&format!("{studio}/jobs")).await.expect("jobs");
    browser
        .screenshot(&shots.join("jobs.png"))
        .await
        .expect("screenshot");
    browser
        .goto(&format!("{studio}/jobs?page=not-a-token"))
        .await
        .expect("a bad page");
    browser
        .wait_for_text("page_token", false, WAIT)
        .await
        .expect("a page token it did not give is refused, naming it");
    browser
        .goto(&format!("{studio}/quota"))
        .await
        .expect("quota");
    browser
        .wait_for_text("standardDv2Family", false, WAIT)
        .await
        .expect("the family the cluster uses");
    browser
        .screenshot(&shots.join("quota.png"))
        .await
        .expect("screenshot");
    browser.resize(400, 860).await.expect("narrow");
    browser
        .goto(&format!("{studio}/compute"))
        .await
        .expect("compute");
    browser
        .screenshot(&shots.join("compute-narrow.png"))
        .await
        .expect("screenshot");
    browser.resize(1280, 900).await.expect("wide");
    browser
        .screenshot(&shots.join("compute.png"))
        .await
        .expect("screenshot");

    // Signing out ends the session: its cookie no longer opens a page.
    let session = format!(
        "__Host-strato_studio={}",
        cookie["value"].as_str().expect("value")
    );
    browser
        .click(&browser.find("nav form button").await.expect("sign out"))
        .await
        .expect("click");
    browser
        .wait_for_text("Sign in", false, WAIT)
        .await
        .expect("the sign-in page");
    let after = studio_get(&cp, "/studio/compute", &session).await;
    assert_eq!(after, (303, "/studio/login".to_owned()), "an old session");

    // A Reader sees no buttons that change anything, and a forged POST
    // (with the Reader's own CSRF token) is refused by the use case.
    let third = cp.cli_ok(&[
        "job",
        "submit",
        "--compute",
        "web",
        "--image",
        TEST_IMAGE,
        "--",
        "sleep",
        "300",
    ]);
    let third = String::from_utf8_lossy(&third.stdout).trim().to_owned();
    sign_in(&browser, &reader).await;
    assert!(
        browser
            .all("a[href='/studio/compute/new']")
            .await
            .expect("links")
            .is_empty(),
        "a Reader gets no create button"
    );
    browser
        .goto(&format!("{studio}/jobs/{third}"))
        .await
        .expect("job page");
    browser.find("h1").await.expect("the page");
    assert!(
        browser
            .all("form[action$='/cancel']")
            .await
            .expect("forms")
            .is_empty(),
        "a Reader gets no cancel button"
    );
    let forged = browser
        .run(
            "const csrf = document.querySelector('input[name=csrf]').value;\
             return fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf})})\
               .then(async r => r.status + ' ' + await r.text());",
            json!([format!("/studio/jobs/{third}/cancel")]),
        )
        .await
        .expect("forged post");
    let forged = forged.as_str().unwrap_or_default();
    assert!(
        forged.starts_with("403 ") && forged.contains("jobs/cancel"),
        "the Reader's cancel is refused by its role: {forged}"
    );
    let no_token = browser
        .run(
            "return fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf: 'x'})})\
               .then(r => r.status);",
            json!([format!("/studio/jobs/{third}/cancel")]),
        )
        .await
        .expect("post without the token");
    assert_eq!(
        no_token,
        json!(403),
        "a POST without the session's CSRF token"
    );
    let state = cp.cli_ok(&["job", "show", "-n", &third, "-o", "json"]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("json");
    assert_ne!(state["state"], "canceled", "nothing was canceled");
    cp.cli_ok(&["job", "cancel", "-n", &third]);
}

async fn sign_in(browser: &Browser, token: &str) {
    let studio = browser.url().await.expect("url");
    let base = studio.split("/studio").next().expect("base").to_owned();
    browser
        .goto(&format!("{base}/studio/login"))
        .await
        .expect("login");
    let field = browser.find("#f-token").await.expect("token field");
    browser.fill(&field, token).await.expect("type");
    browser
        .click(&browser.find("form button").await.expect("sign in"))
        .await
        .expect("click");
    browser
        .wait_for_text("Compute clusters", false, WAIT)
        .await
        .expect("signed in");
}

/// A GET with only `cookie`: its status and where it redirects.
async fn studio_get(cp: &ControlPlane, path: &str, cookie: &str) -> (u16, String) {
    let ca = cp.admin().ca_certificate.clone().expect("the CA");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--cacert",
            "/dev/stdin",
            "-H",
            &format!("Cookie: {cookie}"),
            &format!("https://{}{path}", cp.http),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(ca.as_bytes())?;
            child.wait_with_output()
        })
        .expect("curl");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, to) = said.split_once(' ').unwrap_or((&said, ""));
    let to = to
        .split_once("/studio")
        .map(|(_, p)| format!("/studio{p}"))
        .unwrap_or_default();
    (code.parse().unwrap_or(0), to)
}

/// Signing in through the OIDC issuer (a real one: panva's oidc-provider
/// with its development login pages): authorization code with PKCE, the
/// user's roles from their role assignments.
#[tokio::test]
async fn signing_in_through_the_oidc_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer_port = strato_e2e::free_port();
    let issuer_url = format!("https://127.0.0.1:{issuer_port}");
    let ca = strato_e2e::OidcIssuer::ca_file().display().to_string();
    let cp = ControlPlane::start(
        &dir.path().join("data"),
        &[
            "--provider",
            "none",
            "--oidc-issuer",
            &issuer_url,
            "--oidc-audience",
            "api://strato",
            "--oidc-ca-file",
            &ca,
            "--studio-oidc-client-id",
            "strato-studio",
            "--studio-oidc-scope",
            "openid api",
        ],
    )
    .await
    .expect("start");
    let issuer = strato_e2e::OidcIssuer::start_for_studio(
        &dir.path().join("oidc"),
        issuer_port,
        &format!("https://{}/studio/login/callback", cp.http),
    )
    .await
    .expect("issuer");
    // The issuer came up after the control plane (whose port its client
    // names): wait until the control plane has its keys, as a caller with
    // one of its tokens finds.
    let probe = issuer.token("ml-team", "api://strato").expect("a token");
    strato_e2e::wait_for("the issuer's keys", WAIT, || {
        let cp = &cp;
        let probe = probe.clone();
        async move {
            let channel = cp.channel_with(Some(&probe)).await.ok()?;
            let answer = strato_proto::v1::access_service_client::AccessServiceClient::new(channel)
                .who_am_i(strato_proto::v1::WhoAmIRequest {})
                .await;
            match answer {
                Err(e) if e.code() == tonic::Code::Unauthenticated => None,
                _ => Some(()),
            }
        }
    })
    .await;
    cp.cli_ok(&[
        "role",
        "assignment",
        "create",
        "--principal",
        "oidc:alice",
        "--role",
        "Reader",
    ]);
    let studio = format!("https://{}/studio", cp.http);

    // Without this browser's own state, a callback is refused.
    let forged = studio_get(&cp, "/studio/login/callback?code=stolen&state=guessed", "").await;
    assert_eq!(forged.0, 400, "a callback this browser did not start");

    let browser = Browser::start().await.expect("browser");
    browser
        .goto(&format!("{studio}/login"))
        .await
        .expect("login page");
    browser
        .click(
            &browser
                .find("a[href='/studio/login/oidc']")
                .await
                .expect("the issuer's button"),
        )
        .await
        .expect("click");
    // The issuer's own pages: sign in as alice, then let the studio in.
    let login = browser
        .find("input[name=login]")
        .await
        .expect("the issuer's login");
    browser.fill(&login, "alice").await.expect("type");
    browser
        .fill(
            &browser
                .find("input[name=password]")
                .await
                .expect("password"),
            "any",
        )
        .await
        .expect("type");
    browser
        .click(&browser.find("button[type=submit]").await.expect("sign-in"))
        .await
        .expect("click");
    // The consent page (not the login page's button, which may still be
    // there while the browser moves on).
    browser
        .find("input[name=prompt][value=consent]")
        .await
        .expect("the consent page");
    browser
        .click(&browser.find("button[type=submit]").await.expect("continue"))
        .await
        .expect("consent");
    let page = browser
        .wait_for_text("Compute clusters", false, WAIT)
        .await
        .expect("signed in");
    assert!(page.contains("oidc:alice"), "{page}");
    assert!(
        browser
            .all("a[href='/studio/compute/new']")
            .await
            .expect("links")
            .is_empty(),
        "alice is a Reader"
    );
}
