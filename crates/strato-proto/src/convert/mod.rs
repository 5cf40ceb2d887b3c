//! Conversions between wire messages and `strato-core` types, one module
//! per area. Wire input is untrusted: converting it can fail with a
//! `FieldError` naming the field.

mod cluster;
mod job;

pub use cluster::*;
pub use job::*;

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(unix_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: i32::try_from(unix_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf timestamp as RFC 3339 in UTC (`2026-11-23T11:18:33Z`).
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    ts.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds() {
        let ts = timestamp(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        assert!(rfc3339(&ts).starts_with("2023-11-14T22:13:20.123"));
    }
}
