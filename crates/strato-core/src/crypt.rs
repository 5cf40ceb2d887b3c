//! SHA-512 crypt (`$6$`, Ulrich Drepper's "Unix crypt using SHA-256 and
//! SHA-512", the default of glibc's crypt(3)): what a cluster's admin
//! password is kept as. It is what `/etc/shadow` holds, so SSH setup on a
//! node needs nothing more (`usermod -p HASH`), and the password itself is
//! never stored.

use sha2::{Digest as _, Sha512};

/// The rounds of the scheme's default (`$6$SALT$…` without `rounds=`).
const ROUNDS: usize = 5000;
/// The longest salt the scheme uses.
pub const MAX_SALT: usize = 16;
/// crypt's base-64 alphabet, for salts and the hash.
pub const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `$6$SALT$HASH` of `password`, with `salt` cut to 16 characters.
pub fn sha512_crypt(password: &str, salt: &str) -> String {
    let key = password.as_bytes();
    let salt = &salt.as_bytes()[..salt.len().min(MAX_SALT)];
    let digest = |parts: &[&[u8]]| {
        let mut h = Sha512::new();
        for p in parts {
            h.update(p);
        }
        h.finalize()
    };
    let b = digest(&[key, salt, key]);
    let mut a = Sha512::new();
    a.update(key);
    a.update(salt);
    let mut left = key.len();
    while left > 64 {
        a.update(b);
        left -= 64;
    }
    a.update(&b[..left]);
    let mut bits = key.len();
    while bits > 0 {
        if bits & 1 == 1 {
            a.update(b);
        } else {
            a.update(key);
        }
        bits >>= 1;
    }
    let mut result = a.finalize();
    let repeat = |digest: &[u8], len: usize| -> Vec<u8> {
        digest.iter().copied().cycle().take(len).collect()
    };
    let mut dp = Sha512::new();
    for _ in 0..key.len() {
        dp.update(key);
    }
    let p = repeat(&dp.finalize(), key.len());
    let mut ds = Sha512::new();
    for _ in 0..16 + usize::from(result[0]) {
        ds.update(salt);
    }
    let s = repeat(&ds.finalize(), salt.len());
    for i in 0..ROUNDS {
        let mut c = Sha512::new();
        if i % 2 == 1 {
            c.update(&p);
        } else {
            c.update(result);
        }
        if i % 3 != 0 {
            c.update(&s);
        }
        if i % 7 != 0 {
            c.update(&p);
        }
        if i % 2 == 1 {
            c.update(result);
        } else {
            c.update(&p);
        }
        result = c.finalize();
    }
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    let mut out = String::with_capacity(3 + salt.len() + 1 + 86);
    out.push_str("$6$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut put = |w: u32, n: usize| {
        let mut w = w;
        for _ in 0..n {
            out.push(char::from(ALPHABET[(w & 0x3f) as usize]));
            w >>= 6;
        }
    };
    for (x, y, z) in ORDER {
        put(
            (u32::from(result[x]) << 16) | (u32::from(result[y]) << 8) | u32::from(result[z]),
            4,
        );
    }
    put(u32::from(result[63]), 2);
    out
}

/// The longest password [`verify`] hashes: the scheme's cost grows with
/// the square of the length, and admin passwords are at most 123
/// characters (at most 4 bytes each).
pub const MAX_PASSWORD_BYTES: usize = 512;

/// Whether `password` is the one `hash` (`$6$SALT$…`) was made from. A
/// password over [`MAX_PASSWORD_BYTES`] is not: it is never hashed.
pub fn verify(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Some(rest) = hash.strip_prefix("$6$") else {
        return false;
    };
    let Some((salt, _)) = rest.split_once('$') else {
        return false;
    };
    let made = sha512_crypt(password, salt);
    // Not early-out: the comparison takes as long whatever differs.
    made.len() == hash.len()
        && made
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether `text` looks like a SHA-512 crypt hash.
pub fn is_hash(text: &str) -> bool {
    text.starts_with("$6$") && text.len() > 3 + 1 + 86 && !text.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specifications_vectors_and_openssl() {
        // From Drepper's specification (also `openssl passwd -6`).
        assert_eq!(
            sha512_crypt("Hello world!", "saltstring"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
        // A salt over 16 characters is cut.
        assert_eq!(
            sha512_crypt("", "saltstringsaltstring"),
            sha512_crypt("", "saltstringsaltst")
        );
        // A key over 64 bytes takes the long path (`openssl passwd -6 -salt s`).
        assert_eq!(
            sha512_crypt(&"x".repeat(100), "s"),
            "$6$s$Ry4ZPOXCn8T2Vsfwu/WXZRluJIbjyELSq6ml2qfjBoLUw0RjK7drmwYPczkn3j4NYpDktoCI4V4Al5zm713vM."
        );
    }

    #[test]
    fn verify_takes_the_salt_from_the_hash() {
        let hash = sha512_crypt("Sup3r-Secret-Value", "abcDEF0123456789");
        assert!(is_hash(&hash));
        assert!(verify("Sup3r-Secret-Value", &hash));
        assert!(!verify("Sup3r-Secret-Valuf", &hash));
        assert!(!verify("Sup3r-Secret-Value", "plain"));
        // A huge password is refused without hashing it.
        let huge = "A1-".repeat(1_000_000);
        assert!(!verify(&huge, &hash));
    }
}
