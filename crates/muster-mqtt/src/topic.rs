//! Topic names, topic filters and Azure IoT property bags.
//!
//! Matching follows MQTT 3.1.1 §4.7: `+` matches exactly one level (possibly empty), `#` matches
//! any number of levels (including none) and must be the last level, and a filter starting with
//! a wildcard does not match topics starting with `$`.
//!
//! Azure IoT puts properties into topics as a URL-encoded bag, e.g.
//! `devices/d1/messages/events/$.ct=application%2Fjson&color=red` or
//! `$dps/registrations/res/202/?$rid=1&retry-after=3`; [`parse_property_bag`] and
//! [`encode_property_bag`] read and write such bags.

/// Whether `topic` (a topic name) matches `filter` (a topic filter).
///
/// An invalid filter (see [`valid_filter`]) or an invalid topic name (see [`valid_topic_name`])
/// matches nothing.
#[must_use]
pub fn matches(filter: &str, topic: &str) -> bool {
    if !valid_filter(filter) || !valid_topic_name(topic) {
        return false;
    }
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` is a valid topic filter: 1–65535 bytes, no U+0000, `+` only as a whole
/// level, `#` only as the whole last level.
#[must_use]
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether `topic` is a valid topic name (as in PUBLISH): 1–65535 bytes, no U+0000, no
/// wildcards.
#[must_use]
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= usize::from(u16::MAX) && !topic.contains(['+', '#', '\0'])
}

/// Splits an Azure IoT property bag (`a=1&b=x%20y&c`) into URL-decoded `(key, value)` pairs.
///
/// Pairs are separated by `&` (empty pieces are skipped); a piece without `=` is a key with an
/// empty value; the first `=` separates key from value. `%XX` escapes are decoded (invalid ones
/// are kept literally), `+` stays a `+`, and bytes that do not decode to UTF-8 become U+FFFD.
#[must_use]
pub fn parse_property_bag(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| match piece.split_once('=') {
            Some((key, value)) => (percent_decode(key), percent_decode(value)),
            None => (percent_decode(piece), String::new()),
        })
        .collect()
}

/// Joins `(key, value)` pairs into a property bag, percent-encoding every byte except the
/// unreserved characters `A-Z a-z 0-9 - . _ ~`.
///
/// A pair with an empty value is written as its key alone, which [`parse_property_bag`] reads
/// back as an empty value.
#[must_use]
pub fn encode_property_bag<I, K, V>(pairs: I) -> String
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = String::new();
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        percent_encode(key.as_ref(), &mut out);
        let value = value.as_ref();
        if !value.is_empty() {
            out.push('=');
            percent_encode(value, &mut out);
        }
    }
    out
}

/// Every byte but the unreserved characters `A-Za-z0-9-._~` is escaped in a bag.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn percent_encode(s: &str, out: &mut String) {
    out.extend(percent_encoding::utf8_percent_encode(s, UNRESERVED));
}
