//! Azure's timestamp text: RFC 3339 UTC with seven fractional digits
//! (`2024-05-01T10:00:00.0000000Z`).

use time::OffsetDateTime;
use time::macros::format_description;

/// Format `t` as Azure does.
#[must_use]
pub fn azure(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let base = t
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    format!("{base}.{:07}Z", t.nanosecond() / 100)
}

/// Azure's "never": `0001-01-01T00:00:00Z`.
pub const NEVER: &str = "0001-01-01T00:00:00Z";
