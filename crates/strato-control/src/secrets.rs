//! Secrets at rest (registry passwords): sealed with AES-256-GCM (ring)
//! under a key made once at `DATA_DIR/secrets.key` (32 random bytes, 0600),
//! so the database alone, or a backup of it, holds no secret in clear. Each
//! sealed value is bound to what it belongs to (`registry:NAME`), so a
//! value copied to another row does not open. Stored as base64 of the
//! nonce (12 bytes) followed by the ciphertext and its tag.

use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the sealed secret is not base64 of a nonce and a ciphertext")]
    Malformed,
    #[error("the sealed secret does not open with this control plane's key (DATA_DIR/secrets.key)")]
    WrongKey,
}

/// The key secrets are sealed with.
pub struct SecretBox {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

const KEY_FILE: &str = "secrets.key";

impl SecretBox {
    /// The key at `DATA_DIR/secrets.key`, made (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let random = SystemRandom::new();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; 32];
                random
                    .fill(&mut bytes)
                    .map_err(|_| std::io::Error::other("no randomness for the secrets key"))?;
                strato_runtime::write_private(&path, &bytes)?;
                bytes
            }
            Err(e) => return Err(e),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
            std::io::Error::other(format!("{} is not a 32-byte key", path.display()))
        })?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
            random,
        })
    }

    /// `secret` sealed for `owner` (e.g. `registry:acr`).
    pub fn seal(&self, secret: &str, owner: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // SystemRandom fails only where the OS has no randomness at all; a
        // zero nonce would then repeat, so refuse to go on.
        self.random
            .fill(&mut nonce)
            .expect("the operating system's random source");
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any length a registry password has");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// The secret `sealed` holds for `owner`.
    pub fn open(&self, sealed: &str, owner: &str) -> Result<String, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
        let mut rest = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut rest)
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_owner_and_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = SecretBox::load_or_create(dir.path()).expect("key");
        let sealed = secrets.seal("hunter2", "registry:acr");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            secrets.seal("hunter2", "registry:acr"),
            "a fresh nonce each time"
        );
        assert_eq!(
            secrets.open(&sealed, "registry:acr").expect("opens"),
            "hunter2"
        );
        assert!(matches!(
            secrets.open(&sealed, "registry:other"),
            Err(SecretError::WrongKey)
        ));
        assert!(matches!(
            secrets.open("%%%", "registry:acr"),
            Err(SecretError::Malformed)
        ));
        // The same directory gives the same key; another one does not.
        let again = SecretBox::load_or_create(dir.path()).expect("key again");
        assert_eq!(
            again.open(&sealed, "registry:acr").expect("opens"),
            "hunter2"
        );
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = SecretBox::load_or_create(other.path()).expect("key");
        assert!(matches!(
            stranger.open(&sealed, "registry:acr"),
            Err(SecretError::WrongKey)
        ));
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("key file")
                .permissions()
                .mode()
        };
        assert_eq!(mode & 0o077, 0, "the key is its owner's alone");
    }
}
