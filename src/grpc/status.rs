//! The one place where predictd's errors become gRPC statuses.

use std::fmt;

use tonic::{Code, Status};

use crate::error::{Classify, ErrorKind};
use crate::proto::google::rpc;

/// The gRPC code for each kind of failure.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
    }
}

/// A status carrying the error's message. Internal errors are logged here with their detail;
/// client errors are not ours to log above debug.
pub fn status<E: Classify + fmt::Display>(error: &E) -> Status {
    let kind = error.kind();
    if kind == ErrorKind::Internal {
        tracing::error!(%error, "request failed");
    } else {
        tracing::debug!(%error, "request refused");
    }
    Status::new(code(kind), error.to_string())
}

/// The same status as a `google.rpc.Status` message, for errors carried inside a stream.
pub fn to_rpc(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}
