//! API errors: JSON bodies with a stable `code`, a message and the field at
//! fault.
//!
//! Architecture invariant: only `api/` knows about HTTP status codes; the
//! store and model speak in stable codes and this module maps them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::{Rejection, StoreError};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: clients match on this, never on `message`.
    pub code: String,
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header (429 and 503 that will pass).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code: code.to_string(),
                message: message.into(),
                field: None,
            },
            retry_after_secs: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// The HTTP status for a store rejection code.
pub(crate) fn status_for(code: &str) -> StatusCode {
    match code {
        "not_found" => StatusCode::NOT_FOUND,
        "already_exists" | "duplicate" | "in_use" | "key_mismatch" | "missing_reference"
        | "patch_test_failed" => StatusCode::CONFLICT,
        "precondition_failed" => StatusCode::PRECONDITION_FAILED,
        "stale_user" => StatusCode::CONFLICT,
        "forbidden" => StatusCode::FORBIDDEN,
        "read_only" => StatusCode::METHOD_NOT_ALLOWED,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_join_token" | "join_token_revoked" | "join_token_expired"
        | "join_token_used_up" => StatusCode::UNAUTHORIZED,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError {
            status: status_for(&r.code),
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
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "no Raft leader could be reached in time; retry",
            )
            .retry_after(1),
            StoreError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            StoreError::NoQuorum(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                format!("the leader cannot reach a quorum, nothing was written; retry: {m}"),
            ),
            StoreError::OutcomeUnknown(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!("the write may or may not have been applied (check before retrying): {m}"),
            ),
            StoreError::DeadlineExceeded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline_exceeded",
                "the write waited past its deadline before it could be proposed; nothing was written; retry",
            )
            .retry_after(1),
            StoreError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.body.code, message = %self.body.message, "request failed");
        }
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
