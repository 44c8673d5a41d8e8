//! The one table from kinds of failure to what each protocol answers: a gRPC code and an HTTP
//! status. Every error a client receives, from a handler or from a layer of the edge stack,
//! becomes an [`ApiError`] and leaves through here, as a `tonic::Status` or an axum response.
//!
//! Internal errors are ours, not the client's: the client gets a short message and an error
//! id, and the log gets the id with the whole chain of causes (the engine's own words).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

use crate::error::{Classify, ErrorKind, chain};
use crate::proto::google::rpc;

/// The gRPC code and the HTTP status of each kind of failure: the one table. HTTP follows the
/// KServe v2 protocol where it says (400, 404, 503) and the usual meanings beyond it.
fn codes(kind: ErrorKind) -> (Code, StatusCode) {
    match kind {
        ErrorKind::InvalidArgument => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
        ErrorKind::NotFound => (Code::NotFound, StatusCode::NOT_FOUND),
        ErrorKind::ResourceExhausted => (Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS),
        // The code tonic gives a gRPC message over the limit, so both transports agree.
        ErrorKind::TooLarge => (Code::OutOfRange, StatusCode::PAYLOAD_TOO_LARGE),
        ErrorKind::DeadlineExceeded => (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT),
        ErrorKind::FailedPrecondition => (Code::FailedPrecondition, StatusCode::BAD_REQUEST),
        ErrorKind::Unavailable => (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        // The client went away; nobody reads this reply.
        ErrorKind::Cancelled => (Code::Cancelled, StatusCode::BAD_REQUEST),
        ErrorKind::Unauthenticated => (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
        ErrorKind::PermissionDenied => (Code::PermissionDenied, StatusCode::FORBIDDEN),
        ErrorKind::Internal => (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// The gRPC code for a kind of failure.
pub fn grpc_code(kind: ErrorKind) -> Code {
    codes(kind).0
}

/// The HTTP status for a kind of failure.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    codes(kind).1
}

/// A failure as the client is told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    /// A refusal the edge words itself (an overloaded server, a malformed header).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// What the client is told of `error`. Internal errors are logged here, with an id the
    /// client's message repeats; client errors are not ours to log above debug.
    pub fn from_error<E: Classify + std::error::Error + 'static>(error: &E) -> ApiError {
        let kind = error.kind();
        if kind != ErrorKind::Internal {
            tracing::debug!(%error, "request refused");
            return ApiError::new(kind, error.to_string());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(error_id = %id, error = %chain(error), "request failed");
        ApiError::new(
            kind,
            format!("{error} (error id {id}; the server's log has the detail)"),
        )
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message the client reads.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        Status::new(grpc_code(error.kind), error.message)
    }
}

impl IntoResponse for ApiError {
    /// `{"error": message}` with the status for its kind, as KServe v2 REST specifies.
    fn into_response(self) -> Response {
        (
            http_status(self.kind),
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The status a gRPC client gets for `error`.
pub fn status<E: Classify + std::error::Error + 'static>(error: &E) -> Status {
    ApiError::from_error(error).into()
}

/// A status as a `google.rpc.Status` message, for errors carried inside a stream.
pub fn to_rpc(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_grpc_code_and_http_status() {
        let table = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument, 400),
            (ErrorKind::NotFound, Code::NotFound, 404),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted, 429),
            (ErrorKind::TooLarge, Code::OutOfRange, 413),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded, 504),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition, 400),
            (ErrorKind::Unavailable, Code::Unavailable, 503),
            (ErrorKind::Cancelled, Code::Cancelled, 400),
            (ErrorKind::Unauthenticated, Code::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, Code::PermissionDenied, 403),
            (ErrorKind::Internal, Code::Internal, 500),
        ];
        for (kind, code, http) in table {
            assert_eq!(
                (grpc_code(kind), http_status(kind).as_u16()),
                (code, http),
                "{kind:?}"
            );
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("model 'm' version 1: the model failed while running")]
    struct Failed(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("shape mismatch in node #3")]
    struct Inner;

    impl Classify for Failed {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Internal
        }
    }

    #[test]
    fn internal_errors_give_the_client_an_id_not_the_engine_chain() {
        let error = ApiError::from_error(&Failed(Inner));
        let message = error.message();
        assert!(
            message.starts_with("model 'm' version 1: the model failed while running (error id "),
            "{message}"
        );
        assert!(!message.contains("node #3"), "{message}");
        let status = Status::from(error.clone());
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            error.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
