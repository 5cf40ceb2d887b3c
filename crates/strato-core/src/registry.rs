//! Registry objects: a server job images name, and the credentials nodes
//! pull from it with. The rules a new one must meet.

use crate::FieldError;

/// The longest password (or token) a registry takes, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// The longest user name, in bytes.
pub const MAX_USERNAME_BYTES: usize = 256;

/// Checks a registry to create: its name, its server (HOST or HOST:PORT, as
/// image references name it) and its basic credentials (both required).
pub fn validate(
    name: &str,
    server: &str,
    username: &str,
    password: &str,
) -> Result<(), FieldError> {
    let name_ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !name_ok {
        return Err(FieldError::new(
            "name",
            "must be 1 to 64 lowercase letters, digits, '_' and '-', starting with a letter",
        ));
    }
    if !crate::image::is_registry_server(server) || server.contains('/') {
        return Err(FieldError::new(
            "server",
            "must be the registry's HOST or HOST:PORT as image names start with it, e.g. myacr.azurecr.io",
        ));
    }
    let printable = |s: &str| !s.chars().any(char::is_control);
    if username.is_empty()
        || username.len() > MAX_USERNAME_BYTES
        || !printable(username)
        || username.contains(':')
    {
        return Err(FieldError::new(
            "username",
            format!("is required: 1 to {MAX_USERNAME_BYTES} printable bytes without ':'"),
        ));
    }
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES || !printable(password) {
        return Err(FieldError::new(
            "password",
            format!("is required: 1 to {MAX_PASSWORD_BYTES} printable bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_needs_a_name_a_server_and_credentials() {
        assert_eq!(validate("acr", "myacr.azurecr.io", "u", "p"), Ok(()));
        assert_eq!(validate("local-1", "127.0.0.1:5000", "u", "p"), Ok(()));
        for (name, server, user, password, field) in [
            ("ACR", "myacr.azurecr.io", "u", "p", "name"),
            ("acr", "https://myacr.azurecr.io", "u", "p", "server"),
            ("acr", "myacr.azurecr.io/team", "u", "p", "server"),
            ("acr", "", "u", "p", "server"),
            ("acr", "myacr.azurecr.io", "", "p", "username"),
            ("acr", "myacr.azurecr.io", "a:b", "p", "username"),
            ("acr", "myacr.azurecr.io", "u", "", "password"),
            ("acr", "myacr.azurecr.io", "u", "line\nbreak", "password"),
        ] {
            let e = validate(name, server, user, password).expect_err(field);
            assert_eq!(e.field, field, "{name} {server} {user}");
        }
        let long = "p".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(
            validate("acr", "h.io", "u", &long).expect_err("long").field,
            "password"
        );
    }
}
