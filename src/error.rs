//! The one table that says what kind of failure each error is. Protocol front ends map a
//! [`ErrorKind`] to their own codes (gRPC status, HTTP status) in exactly one place each.

/// What a caller should make of an error, independent of the protocol that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the model's signature.
    InvalidArgument,
    /// The model or version does not exist.
    NotFound,
    /// The server is too busy to take the request now; retry later.
    ResourceExhausted,
    /// The request is larger than the server takes (`--max-message-bytes`).
    TooLarge,
    /// The request's deadline passed before it could be answered.
    DeadlineExceeded,
    /// The request is valid but the server is not in a state to carry it out (a repository
    /// change while model control is not explicit).
    FailedPrecondition,
    /// The model exists but cannot serve now (still loading, failed to load, shutting down).
    Unavailable,
    /// The client went away before the work ran.
    Cancelled,
    /// The call carries no API key, or one the server does not accept.
    Unauthenticated,
    /// The call's API key may not use this endpoint group.
    PermissionDenied,
    /// A fault on our side (a model that failed while running); details are logged.
    Internal,
}

/// Implemented by every layer's error type, so that front ends classify without knowing them.
pub trait Classify {
    /// The kind of failure.
    fn kind(&self) -> ErrorKind;
}

/// An error and its chain of causes, `outer: inner: innermost`: what the log (and an offline
/// caller, who has no log to read) is told. A cause whose words its outer error already ends
/// with (`"model 'm': {error}"`) is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let words = e.to_string();
        if !text.ends_with(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        cause = e.source();
    }
    text
}
