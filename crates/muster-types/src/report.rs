//! One line for an error and its causes.
//!
//! muster's error types describe only their own layer and expose what caused them through
//! [`std::error::Error::source`]; [`report`] joins the chain once, so no cause is printed twice.

/// `error: cause: cause …`, each level once (a level whose text repeats the previous one is
/// skipped, for foreign error types that print their cause themselves).
#[must_use]
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut previous = out.clone();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !previous.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        previous = text;
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::report;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the database")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("storage failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let e = Outer(std::io::Error::other("Permission denied (os error 13)"));
        assert_eq!(
            report(&e),
            "cannot open the database: Permission denied (os error 13)"
        );
        let e = Repeats(std::io::Error::other("disk full"));
        assert_eq!(report(&e), "storage failed: disk full");
    }
}
