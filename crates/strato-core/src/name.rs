//! Cluster names, with AmlCompute's rules.

use crate::error::FieldError;

pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 24;

/// Checks a cluster name: 3 to 24 characters of ASCII letters, digits and
/// `-`; starts with a letter; every `-` is followed later by at least one
/// letter (so `gpu-2` is refused and `gpu-a2` accepted).
pub fn validate_cluster_name(name: &str) -> Result<(), FieldError> {
    let err = |rule: String| Err(FieldError::new("name", rule));
    let len = name.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return err(format!(
            "must be {MIN_LEN} to {MAX_LEN} characters long (got {len})"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return err(format!(
            "may hold only letters, digits and '-' (found {bad:?})"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return err("must start with a letter".to_owned());
    }
    if let Some(last_dash) = name.rfind('-')
        && !name[last_dash..].chars().any(|c| c.is_ascii_alphabetic())
    {
        return err(format!(
            "every '-' must be followed later by at least one letter (as in 'gpu-a2', not 'gpu-2'); {name:?} is not"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_refuses_the_documented_examples() {
        for ok in [
            "cpu",
            "gpu-a2",
            "cpu-cluster",
            "A1b2-c",
            "abcdefghijklmnopqrstuvwx",
        ] {
            assert_eq!(validate_cluster_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "gpu-2",
            "1cpu",
            "-cpu",
            "cpu-",
            "cpu_1",
            "cpu.x",
            "cpu a",
            "abcdefghijklmnopqrstuvwxy",
            "gpu-a-2",
            "é-cpu",
        ] {
            let e = validate_cluster_name(bad).expect_err(bad);
            assert_eq!(e.field, "name");
        }
    }

    /// An oracle written differently from the validator: every rule checked
    /// on its own.
    fn obeys_rules(name: &str) -> bool {
        let bytes = name.as_bytes();
        let len_ok = (3..=24).contains(&name.chars().count());
        let chars_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        let first_ok = bytes.first().is_some_and(u8::is_ascii_alphabetic);
        let dashes_ok = bytes
            .iter()
            .enumerate()
            .all(|(i, b)| *b != b'-' || bytes[i + 1..].iter().any(u8::is_ascii_alphabetic));
        len_ok && chars_ok && first_ok && dashes_ok
    }

    proptest! {
        #[test]
        fn never_accepts_a_name_that_breaks_a_rule(name in "[a-zA-Z0-9_ .é-]{0,30}") {
            prop_assert_eq!(validate_cluster_name(&name).is_ok(), obeys_rules(&name));
        }

        #[test]
        fn accepts_every_well_formed_name(name in "[a-z][a-z0-9]{2,10}(-[a-z][a-z0-9]{0,4})?") {
            prop_assert!(validate_cluster_name(&name).is_ok());
        }
    }
}
