//! HTTP dates (RFC 1123, as IMDS's Scheduled Events write `NotBefore`),
//! without a date library: days from the civil calendar (H. Hinnant).

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `Mon, 19 Sep 2016 18:29:47 GMT` for seconds since the epoch.
pub fn rfc1123(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0)];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Seconds since the epoch of an RFC 1123 date.
pub fn parse_rfc1123(s: &str) -> Option<i64> {
    let mut parts = s.split_whitespace().skip(1);
    let d: i64 = parts.next()?.parse().ok()?;
    let m = MONTHS
        .iter()
        .position(|x| Some(*x) == parts.clone().next())? as i64
        + 1;
    parts.next();
    let y: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>());
    let (h, mi, se) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    Some(days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_like_imds() {
        assert_eq!(rfc1123(1_474_309_787), "Mon, 19 Sep 2016 18:29:47 GMT");
        assert_eq!(
            parse_rfc1123("Mon, 19 Sep 2016 18:29:47 GMT"),
            Some(1_474_309_787)
        );
        assert_eq!(parse_rfc1123("not a date"), None);
    }

    proptest! {
        #[test]
        fn round_trips(t in 0i64..4_102_444_800) {
            prop_assert_eq!(parse_rfc1123(&rfc1123(t)), Some(t));
        }
    }
}
