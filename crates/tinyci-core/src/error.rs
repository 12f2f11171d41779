//! Showing an error with its causes.

/// An error's message and every source's, joined with ": ", for a refusal that must travel
/// as text (over the wire, into a page or a log line) without losing why. A cause whose text
/// the message already holds (many errors quote their source in their own message) is not
/// repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot store the upload")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_in_order() {
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&error), "cannot store the upload: disk full");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("store: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read run r-1")]
    struct Top(#[source] Quoting);

    #[test]
    fn a_cause_the_message_already_quotes_is_not_repeated() {
        let error = Top(Quoting(std::io::Error::other("map full")));
        assert_eq!(error_chain(&error), "cannot read run r-1: store: map full");
    }
}
