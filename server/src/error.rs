//! What can go wrong inside the service, and how each case reaches a gRPC client.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// How many characters of a client-supplied value an error message may echo back.
const ECHO_LIMIT: usize = 32;

/// How many field violations an answer lists in full (message and `BadRequest` details); the
/// rest are counted. Keeps `grpc-message` + `grpc-status-details-bin` far under the 16 KiB header
/// limit of common clients, whatever the order.
pub const REPORTED_VIOLATIONS: usize = 10;

/// One invalid field of a request, as reported in `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's proto name, such as `price` or `items[2]`.
    pub field: String,
    /// What is wrong with it, for a person.
    pub description: String,
}

/// An error of the order service. Converted to a [`tonic::Status`] only at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No order has this ID.
    #[error("order {} not found", Echo(.0))]
    NotFound(String),
    /// An order with this ID exists already.
    #[error("order {} already exists", Echo(.0))]
    AlreadyExists(String),
    /// The request was empty where a value is required.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// An order broke the validation rules; each bad field is listed.
    #[error("{} is invalid: {}", describe_order(.id), summary(.violations))]
    InvalidOrder {
        /// The order's ID as the client sent it (may be empty).
        id: String,
        /// One entry per bad field.
        violations: Vec<FieldViolation>,
    },
    /// The same order ID came twice where each may come once.
    #[error("order {} was sent more than once", Echo(.0))]
    Duplicate(String),
    /// A client stream carried more messages than one call may.
    #[error("too many messages in one call: at most {0}")]
    TooMany(usize),
    /// The client's own stream failed (bad framing, a message too large, a reset): its status
    /// goes back as it is.
    #[error("{}", .0.message())]
    Client(Status),
    /// The database did not answer in time: it is down, unreachable or overloaded.
    #[error("the order database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Every ID a sequence can give has been given.
    #[error("no more {0} can be assigned")]
    Exhausted(&'static str),
    /// A write's `COMMIT` failed or was cut off: the write may or may not have been applied.
    #[error("the commit's outcome is unknown: {0}")]
    InDoubt(sqlx::Error),
    /// The write's caller gave up before its commit began: it was not applied. Its caller is
    /// gone or has answered `UNAVAILABLE` already, so this reaches no one.
    #[error("the write was abandoned before its commit")]
    Abandoned,
    /// A client stream sent nothing for this long.
    #[error(
        "no message from the client for {0:?} (--stream-idle-timeout): the call was not applied"
    )]
    Idle(std::time::Duration),
    /// The `idempotency-key` metadata is not a key.
    /// (The most characters a key may have: the store's `MAX_KEY_CHARS`.)
    #[error("idempotency-key must be 1 to {0} visible ASCII characters")]
    BadKey(usize),
    /// The key was used before, for another request.
    #[error("idempotency-key {} was used before for a different {method} request: use a new key for a new request", Echo(.key))]
    KeyReused {
        /// The key.
        key: String,
        /// The method of its first request.
        method: String,
    },
    /// A call with this key is running now.
    #[error("a call with idempotency-key {} is still in progress: retry later with the same key", Echo(.0))]
    KeyInProgress(String),
    /// The database failed. Unreachable databases become `UNAVAILABLE`, anything else `INTERNAL`;
    /// either way the cause is logged and not sent to the client.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// The error of the order at `index` of a client stream: an invalid order's fields are named
    /// `orders[index].field`.
    pub fn at(self, index: usize) -> Self {
        match self {
            Error::InvalidOrder { id, violations } => Error::InvalidOrder {
                id,
                violations: violations
                    .into_iter()
                    .map(|v| FieldViolation {
                        field: format!("orders[{index}].{}", v.field),
                        description: v.description,
                    })
                    .collect(),
            },
            other => other,
        }
    }
}

/// What a client is told when the database cannot be reached. The cause is in the server's log.
pub const UNAVAILABLE_MESSAGE: &str =
    "the order database cannot be reached right now; the call was not applied, try again";

/// What a client is told when a write's commit failed half-way. The cause is in the log.
pub const IN_DOUBT_MESSAGE: &str = "the order database failed while committing: the call may or may not have been applied; retry with the same idempotency-key to find out";

/// What a client is told when something failed inside the server. The cause is in the log.
pub const INTERNAL_MESSAGE: &str = "internal error in the order server (its log has the cause)";

/// True when `error` means the database is down, unreachable or refusing connections for now,
/// so a retry may succeed: the client gets `UNAVAILABLE`.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // 08: connection exceptions; 57P: shutting down or starting up; 53: out of
                // resources (too many connections); 55P03: a lock not granted within
                // `lock_timeout` (`--database-timeout`).
                ["08", "57P", "53", "55P03"]
                    .iter()
                    .any(|class| code.starts_with(class))
            } else {
                // SQLite's extended codes keep the primary one in the low byte: 5 BUSY, 6 LOCKED.
                code.parse::<u32>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
            }
        }
        _ => false,
    }
}

fn describe_order(id: &str) -> String {
    if id.is_empty() {
        "the order".to_owned()
    } else {
        format!("order {}", Echo(id))
    }
}

fn summary(violations: &[FieldViolation]) -> String {
    let mut text = violations
        .iter()
        .take(REPORTED_VIOLATIONS)
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > REPORTED_VIOLATIONS {
        text.push_str(&format!(
            "; and {} more",
            violations.len() - REPORTED_VIOLATIONS
        ));
    }
    text
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::NotFound(_) => Status::new(Code::NotFound, message),
            Error::AlreadyExists(_) => Status::new(Code::AlreadyExists, message),
            Error::Empty(_) | Error::Duplicate(_) | Error::BadKey(_) => {
                Status::new(Code::InvalidArgument, message)
            }
            Error::KeyReused { .. } => Status::new(Code::FailedPrecondition, message),
            Error::KeyInProgress(_) => Status::new(Code::Aborted, message),
            Error::Idle(_) => Status::new(Code::DeadlineExceeded, message),
            Error::InDoubt(error) => {
                tracing::error!(%error, "a commit failed: its outcome is unknown");
                Status::new(Code::Unknown, IN_DOUBT_MESSAGE)
            }
            Error::Abandoned => Status::new(Code::Unavailable, UNAVAILABLE_MESSAGE),
            Error::TooMany(_) | Error::Exhausted(_) => {
                Status::new(Code::ResourceExhausted, message)
            }
            Error::Client(status) => status,
            Error::Timeout(_) => {
                tracing::warn!(error = %message, "database call timed out");
                Status::new(Code::Unavailable, UNAVAILABLE_MESSAGE)
            }
            Error::Database(error) if is_unavailable(&error) => {
                tracing::warn!(%error, "database unavailable");
                Status::new(Code::Unavailable, UNAVAILABLE_MESSAGE)
            }
            Error::Database(error) => {
                tracing::error!(%error, "database error");
                Status::new(Code::Internal, INTERNAL_MESSAGE)
            }
            Error::InvalidOrder { violations, .. } => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .take(REPORTED_VIOLATIONS)
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
        }
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

    #[test]
    fn invalid_orders_carry_bad_request_details() {
        let status = Status::from(Error::InvalidOrder {
            id: String::new(),
            violations: vec![
                FieldViolation {
                    field: "price".into(),
                    description: "must not be negative".into(),
                },
                FieldViolation {
                    field: "destination".into(),
                    description: "must not be empty".into(),
                },
            ],
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["price", "destination"]);
        assert!(status.message().contains("price must not be negative"));
    }
}
