//! Image references as Docker and registries accept them
//! (`[registry[:port]/]path[:tag][@algorithm:hex]`, the grammar of
//! distribution/reference), checked at submit so a job never reaches a node
//! with a name no engine could pull.

/// The longest image reference accepted, in bytes.
pub const MAX_IMAGE_REFERENCE_BYTES: usize = 512;

/// The registry an image reference names (`myacr.azurecr.io`,
/// `127.0.0.1:5000`), as Docker reads it: the first component, when there
/// are several and it looks like a host (a '.', a ':' or `localhost`);
/// `None` for Docker Hub's short names (`busybox`, `library/python`).
pub fn registry_of(reference: &str) -> Option<&str> {
    let (first, rest) = reference.split_once('/')?;
    (!rest.is_empty() && is_domain_like(first)).then_some(first)
}

/// Why `reference` is not an image reference, or `None` when it is one.
pub fn problem(reference: &str) -> Option<String> {
    if reference.is_empty() {
        return Some("is required".into());
    }
    if reference.len() > MAX_IMAGE_REFERENCE_BYTES {
        return Some(format!(
            "is {} bytes; at most {MAX_IMAGE_REFERENCE_BYTES}",
            reference.len()
        ));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest
        && !is_digest(digest)
    {
        return Some(format!(
            "digest {digest:?} is not ALGORITHM:HEX (e.g. sha256:…)"
        ));
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Some(format!(
            "tag {tag:?} must be letters, digits, '_', '.' and '-', not starting with '.' or '-', at most 128"
        ));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && is_domain_like(components[0]) {
        let domain = components.remove(0);
        if !is_domain(domain) {
            return Some(format!("registry {domain:?} is not HOST or HOST:PORT"));
        }
    }
    for c in components {
        if !is_path_component(c) {
            return Some(format!(
                "name component {c:?} must be lowercase letters and digits, separated by '.', '_', '__' or dashes"
            ));
        }
    }
    None
}

fn is_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    (1..=128).contains(&t.len())
        && t.as_bytes().first().is_some_and(|&b| word(b))
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// Whether `server` is a registry's HOST or HOST:PORT.
pub fn is_registry_server(server: &str) -> bool {
    is_domain(server)
}

/// Whether a reference's first component names a registry (Docker's rule: a
/// '.', a ':', `localhost`, or an uppercase letter, which no repository
/// path has).
fn is_domain_like(c: &str) -> bool {
    c.contains(['.', ':']) || c == "localhost" || c.bytes().any(|b| b.is_ascii_uppercase())
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && host.split('.').all(label_ok)
}

fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Between runs of letters and digits: '.', '_', '__' or any dashes.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_registries_accept_is_accepted() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for ok in [
            "busybox",
            "strato-test/busybox:latest",
            "library/ubuntu:22.04",
            "127.0.0.1:5000/team/img:v1",
            "localhost/x",
            "localhost:5000/x_y__z.w-v--u",
            "myregistry.azurecr.io/azureml/openmpi4.1.0-ubuntu22.04:20240101.v1",
            &format!("mcr.microsoft.com/a/b@{digest}"),
            &format!("a:b@{digest}"),
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn what_no_engine_could_pull_is_refused_saying_why() {
        let long = "a".repeat(MAX_IMAGE_REFERENCE_BYTES + 1);
        for (bad, says) in [
            ("", "required"),
            ("Busybox", "name component"),
            ("a//b", "name component"),
            ("a b", "name component"),
            ("-a", "name component"),
            ("a:", "tag"),
            ("a:-x", "tag"),
            ("a@sha256:xyz", "digest"),
            ("a@nohex", "digest"),
            ("my.reg:port/x", "registry"),
            (long.as_str(), "at most 512"),
        ] {
            let got = problem(bad).unwrap_or_default();
            assert!(got.contains(says), "{bad:?}: {got:?}");
        }
    }

    #[test]
    fn the_registry_is_the_first_component_when_it_looks_like_a_host() {
        assert_eq!(
            registry_of("myacr.azurecr.io/team/train:1"),
            Some("myacr.azurecr.io")
        );
        assert_eq!(registry_of("127.0.0.1:5000/img"), Some("127.0.0.1:5000"));
        assert_eq!(registry_of("localhost/img@sha256:00"), Some("localhost"));
        assert_eq!(registry_of("library/python:3"), None);
        assert_eq!(registry_of("busybox"), None);
        assert_eq!(registry_of("strato-test/busybox:latest"), None);
    }
}
