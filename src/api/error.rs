//! API errors: JSON bodies with a stable `code`, a message and the field at
//! fault.
//!
//! The HTTP status of an error comes from its code's entry in the error
//! table ([`crate::error_code`]), and only from there: the store and model
//! speak in codes, and this module turns a code into a response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error_code::{self as code, Code};
use crate::store::{Rejection, StoreError};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: clients match on this, never on `message`.
    #[schema(value_type = String)]
    pub code: &'static Code,
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header (429 and 503 that will pass).
    pub retry_after_secs: Option<u64>,
}

/// The HTTP status the table gives `code`.
pub fn status_of(code: &Code) -> StatusCode {
    // The table's test holds every status to a valid error status.
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl ApiError {
    pub fn new(code: &'static Code, message: impl Into<String>) -> Self {
        ApiError {
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
            },
            retry_after_secs: None,
        }
    }

    pub fn code(&self) -> &'static Code {
        self.body.code
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.body.code)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(code::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(code::FORBIDDEN, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, message)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError {
            body: ErrorBody {
                code: r.code,
                message: r.message,
                field: r.field,
            },
            retry_after_secs: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(r) => r.into(),
            StoreError::NoLeader => ApiError::new(
                code::NO_LEADER,
                "no Raft leader could be reached in time; retry",
            )
            .retry_after(1),
            StoreError::Unavailable(m) => ApiError::new(code::UNAVAILABLE, m),
            StoreError::NoQuorum(m) => ApiError::new(
                code::NO_QUORUM,
                format!("the leader cannot reach a quorum, nothing was written; retry: {m}"),
            ),
            StoreError::OutcomeUnknown(m) => ApiError::new(
                code::OUTCOME_UNKNOWN,
                format!("the write may or may not have been applied (check before retrying): {m}"),
            ),
            StoreError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = %self.body.code, message = %self.body.message, "request failed");
        }
        let mut response = (status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_answer_with_their_own_codes() {
        let check = |e: StoreError, code: &str, status: u16| {
            let e = ApiError::from(e);
            assert_eq!((e.code().name(), e.status().as_u16()), (code, status));
        };
        check(StoreError::NoLeader, "no_leader", 503);
        check(StoreError::NoQuorum("cut off".into()), "no_quorum", 503);
        check(StoreError::Unavailable("x".into()), "unavailable", 503);
        check(
            StoreError::OutcomeUnknown("x".into()),
            "outcome_unknown",
            503,
        );
        check(StoreError::Internal("x".into()), "internal", 500);
        check(
            Rejection::new(code::MISSING_REFERENCE, "no such profile").into(),
            "missing_reference",
            409,
        );
    }

    #[test]
    fn a_response_carries_the_tables_status() {
        for code in code::ALL {
            let response = ApiError::new(code, "m").into_response();
            assert_eq!(response.status().as_u16(), code.status(), "{code}");
        }
    }
}
