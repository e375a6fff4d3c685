//! JSON text for device responses: ASCII only, non-ASCII escaped as `\uXXXX`, because the Node
//! provisioning SDK decodes response bodies as 7-bit ASCII.

use serde_json::Value;

/// Serialise `value` with every non-ASCII character escaped.
#[must_use]
pub(crate) fn to_ascii_json(value: &Value) -> String {
    let text = value.to_string();
    if text.is_ascii() {
        return text;
    }
    // Non-ASCII characters can only occur inside JSON strings, so escaping them everywhere
    // keeps the document valid.
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_round_trips() {
        let v = serde_json::json!({"name": "Zürich 🌍", "n": 1});
        let s = to_ascii_json(&v);
        assert!(s.is_ascii());
        assert!(s.contains("\\u00fc") && s.contains("\\ud83c\\udf0d"), "{s}");
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
    }
}
