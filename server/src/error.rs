//! What can go wrong inside the service, and how each case reaches a gRPC client.

use tonic::{Code, Status};

/// How many characters of a client-supplied value an error message may echo back.
const ECHO_LIMIT: usize = 32;

/// An error of the order service. Converted to a [`tonic::Status`] only at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No order has this ID.
    #[error("order {} not found", Echo(.0))]
    NotFound(String),
    /// The request was empty where a value is required.
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::NotFound(_) => Code::NotFound,
            Error::Empty(_) => Code::InvalidArgument,
        };
        Status::new(code, error.to_string())
    }
}

/// Displays a client-supplied value quoted and cut to [`ECHO_LIMIT`] characters, so an error
/// message never carries more than a short prefix of what the client sent.
pub(crate) struct Echo<'a>(pub(crate) &'a str);

impl std::fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(ECHO_LIMIT) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_id() {
        let status = Status::from(Error::NotFound("999".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), r#"order "999" not found"#);
    }

    #[test]
    fn long_ids_are_cut_on_a_char_boundary() {
        let id = "é".repeat(10_000);
        let message = Status::from(Error::NotFound(id)).message().to_owned();
        assert!(message.chars().count() < ECHO_LIMIT + 20, "{message}");
        assert!(message.contains('…'));
    }
}
