//! The one error type of the API and its JSON body
//! `{"error": {"code", "message", "param"}}`. Every status is decided in
//! [`ApiError::status`]; 5xx bodies never carry the cause.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `MethodNotAllowed` is a known route asked with a method it does not
/// serve; the router adds its `Allow` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidParameter {
        param: String,
        message: String,
    },
    UnknownParameter {
        param: String,
    },
    InvalidCursor {
        param: String,
        message: String,
    },
    Unauthorized {
        message: String,
    },
    Forbidden {
        message: String,
        param: Option<String>,
    },
    NotFound {
        message: String,
    },
    MethodNotAllowed {
        method: String,
    },
    Unavailable {
        message: String,
    },
    /// `min_position` not reached in time; answered with `Retry-After`.
    NotCaughtUp {
        message: String,
    },
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidParameter { param: param.to_owned(), message: message.into() }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::Unauthorized { message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden { message: message.into(), param: None }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound { message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. } | ApiError::UnknownParameter { .. } | ApiError::InvalidCursor { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable { .. } | ApiError::NotCaughtUp { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidParameter { .. } => "invalid_parameter",
            ApiError::UnknownParameter { .. } => "unknown_parameter",
            ApiError::InvalidCursor { .. } => "invalid_cursor",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::NotCaughtUp { .. } => "not_caught_up",
        }
    }

    fn message_and_param(&self) -> (String, Option<&str>) {
        match self {
            ApiError::InvalidParameter { param, message } | ApiError::InvalidCursor { param, message } => {
                (message.clone(), Some(param))
            }
            ApiError::UnknownParameter { param } => (format!("unknown parameter {param}"), Some(param)),
            ApiError::Forbidden { message, param } => (message.clone(), param.as_deref()),
            ApiError::MethodNotAllowed { method } => {
                (format!("method {method} is not allowed on this route; the Allow header lists those it serves"), None)
            }
            ApiError::Unauthorized { message }
            | ApiError::NotFound { message }
            | ApiError::Unavailable { message }
            | ApiError::NotCaughtUp { message } => (message.clone(), None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (message, param) = self.message_and_param();
        let mut error = json!({"code": self.code(), "message": message});
        if let Some(param) = param {
            error["param"] = json!(param);
        }
        let mut response = (self.status(), axum::Json(json!({ "error": error }))).into_response();
        match self {
            ApiError::Unauthorized { .. } => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"refund-projector\", Basic realm=\"refund-projector\""),
                );
            }
            ApiError::NotCaughtUp { .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A store failure: logged once here with its cause, answered as an opaque 503.
pub fn store_unavailable(err: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "store read failed");
    ApiError::Unavailable { message: "the store is not available".to_owned() }
}
