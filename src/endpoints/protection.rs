//! The agent API's task scale-in protection: `GET`/`PUT $ECS_AGENT_URI/task-protection/v1/state`
//! from inside a task, answered with the agent's shapes (`protection`, `failure`, `error`).
//! The protection itself is the engine's ([`ProtectionSource`]); the endpoints only read and
//! write it through that trait.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::info;

use super::metadata::rfc3339_nano;
use super::server::TaskState;
use crate::model::task::{TaskProtection, TaskRecord};

/// Where a task's protection is kept.
#[async_trait::async_trait]
pub trait ProtectionSource: Send + Sync {
    /// Task `rec`'s protection, after setting it (`enabled`, `expiresInMinutes`) when `update`.
    async fn protection(&self, rec: &TaskRecord, update: Option<(bool, Option<i64>)>) -> ProtectionOutcome;
}

/// What the agent API answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ProtectionOutcome {
    Protection(TaskProtection),
    /// ECS's `failures[]` reason for the task (`TASK_NOT_VALID` for a standalone task).
    Failure {
        reason: &'static str,
    },
    Error {
        code: &'static str,
        message: String,
        status: u16,
    },
}

const NO_TASK: &str = "Failed to find a task for the request";

pub(super) async fn get_state(State(state): State<Arc<TaskState>>, UrlPath(id): UrlPath<String>) -> Response {
    answer(&state, &id, None).await
}

pub(super) async fn put_state(
    State(state): State<Arc<TaskState>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let request = match parse_request(&body) {
        Ok(r) => r,
        Err(message) => {
            let arn = state.task_for_endpoint(&id).map(|t| t.arn.clone()).unwrap_or_default();
            return error(StatusCode::BAD_REQUEST, &arn, "InvalidParameterException", message);
        }
    };
    answer(&state, &id, Some(request)).await
}

/// The request as the agent decodes it: Go's JSON decoder (field names in any case, no
/// unknown fields), then `ProtectionEnabled` required.
fn parse_request(body: &[u8]) -> Result<(Option<bool>, Option<i64>), &'static str> {
    const UNDECODABLE: &str = "UpdateTaskProtection: failed to decode request";
    let value: Value = serde_json::from_slice(body).map_err(|_| UNDECODABLE)?;
    let fields = match value {
        Value::Null => return Ok((None, None)),
        Value::Object(fields) => fields,
        _ => return Err(UNDECODABLE),
    };
    let (mut enabled, mut minutes) = (None, None);
    for (k, v) in fields {
        match k.to_ascii_lowercase().as_str() {
            "protectionenabled" => match v {
                Value::Null => {}
                Value::Bool(b) => enabled = Some(b),
                _ => return Err(UNDECODABLE),
            },
            "expiresinminutes" => match v {
                Value::Null => {}
                v => minutes = Some(v.as_i64().ok_or(UNDECODABLE)?),
            },
            _ => return Err(UNDECODABLE),
        }
    }
    Ok((enabled, minutes))
}

async fn answer(state: &TaskState, id: &str, update: Option<(Option<bool>, Option<i64>)>) -> Response {
    let Some(task) = state.task_for_endpoint(id) else {
        return error(StatusCode::NOT_FOUND, "", "ResourceNotFoundException", NO_TASK);
    };
    let update = match update {
        None => None,
        Some((Some(enabled), minutes)) => Some((enabled, minutes)),
        Some((None, _)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &task.arn,
                "InvalidParameterException",
                "Invalid request: does not contain 'ProtectionEnabled' field",
            );
        }
    };
    // The agent calls ECS with the task role's keys: a task without a role cannot.
    if task.credentials_id.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            &task.arn,
            "AccessDeniedException",
            "Invalid Request: no task IAM role credentials available for task",
        );
    }
    let Some(source) = state.protection_source() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &task.arn, "ServerException", NO_TASK);
    };
    let outcome = source.protection(&task, update).await;
    info!(task_id = %task.id, ?update, ?outcome, "task protection request");
    match outcome {
        ProtectionOutcome::Protection(p) => reply(
            StatusCode::OK,
            json!({"protection": {
                "ExpirationDate": p.expires_at.map(rfc3339_nano),
                "ProtectionEnabled": p.enabled,
                "TaskArn": task.arn,
            }}),
        ),
        ProtectionOutcome::Failure { reason } => {
            reply(StatusCode::OK, json!({"failure": {"Arn": task.arn, "Detail": null, "Reason": reason}}))
        }
        ProtectionOutcome::Error { code, message, status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, &task.arn, code, &message)
        }
    }
}

fn error(status: StatusCode, arn: &str, code: &str, message: &str) -> Response {
    let mut e = json!({"Code": code, "Message": message});
    if !arn.is_empty() {
        e["Arn"] = arn.into();
    }
    reply(status, json!({ "error": e }))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::parse_request;

    #[test]
    fn requests_decode_as_the_agent_decodes_them() {
        assert_eq!(parse_request(br#"{"ProtectionEnabled":true}"#), Ok((Some(true), None)));
        assert_eq!(
            parse_request(br#"{"protectionEnabled":true,"ExpiresInMinutes":60}"#),
            Ok((Some(true), Some(60)))
        );
        assert_eq!(parse_request(b"null"), Ok((None, None)));
        assert_eq!(parse_request(b"{}"), Ok((None, None)));
        let bad = Err("UpdateTaskProtection: failed to decode request");
        assert_eq!(parse_request(b""), bad);
        assert_eq!(parse_request(br#"{"ProtectionEnabled":true,"ExpiresInMinutes":"x"}"#), bad);
        assert_eq!(parse_request(br#"{"ProtectionEnabled":true,"Other":5}"#), bad);
    }
}
