//! ECS Exec on the API listener: ExecuteCommand (ECS's checks and errors), the data channel's
//! websocket route, and the two AmazonSSM calls the session-manager-plugin sends to the
//! endpoint it was given (ResumeSession, TerminateSession).

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{ApiError, Ctx, Exception, cluster_name, clusters};
use crate::exec::{ExecuteRequest, GrantError};
use crate::model::arn::ResourceArn;
use crate::model::shapes::{ExecuteCommandRequest, ExecuteCommandResponse, Session};

/// The `X-Amz-Target` prefix of the SSM operations ecsd answers.
pub const SSM_PREFIX: &str = "AmazonSSM.";

tokio::task_local! {
    /// The `Host` the current API request came to (ExecuteCommand's streamUrl is built on it).
    pub(super) static REQUEST_HOST: Option<String>;
}

/// The host (and port) clients reach ecsd at: the request's `Host` when it is a plain
/// host name or address, else the address ecsd listens on.
fn client_host(ctx: &Ctx) -> String {
    let given = REQUEST_HOST.try_with(Clone::clone).ok().flatten();
    let plain = |h: &String| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    };
    match given.filter(plain) {
        Some(h) => h,
        None => ctx.listen_addr.get().map_or_else(|| "127.0.0.1:8000".to_owned(), |a| a.to_string()),
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        let exception = match &e {
            GrantError::TooManySessions { .. } => Exception::Client,
            GrantError::Random(_) => Exception::Server,
            _ => Exception::InvalidParameter,
        };
        ApiError::new(exception, e.to_string())
    }
}

pub async fn execute_command(
    ctx: &Arc<Ctx>,
    req: ExecuteCommandRequest,
) -> Result<ExecuteCommandResponse, ApiError> {
    let cluster = cluster_name(ctx, req.cluster.as_deref())?;
    if !clusters::is_active(ctx, &cluster).await? {
        return Err(ApiError::cluster_not_found());
    }
    let reference = req.task.unwrap_or_default();
    let task_id = if reference.starts_with("arn:") {
        match ctx.identity.parse(&reference) {
            Ok(ResourceArn::Task { cluster: c, id }) if c == cluster => id,
            Ok(ResourceArn::Task { .. }) | Err(crate::model::arn::ArnError::Foreign(_)) => {
                return Err(GrantError::TaskNotFound.into());
            }
            Ok(_) | Err(_) => {
                return Err(ApiError::invalid_parameter(format!(
                    "task: {reference} is not a task id or task ARN"
                )));
            }
        }
    } else {
        reference
    };
    let request = ExecuteRequest {
        cluster: cluster.clone(),
        task_id,
        container: req.container.filter(|c| !c.is_empty()),
        command: req.command.unwrap_or_default(),
        interactive: req.interactive,
    };
    let granted = ctx.exec.grant(&request)?;
    let stream_url = ctx.exec.stream_url(&client_host(ctx), &granted.grant.session_id);
    Ok(ExecuteCommandResponse {
        cluster_arn: Some(ctx.identity.cluster_arn(&cluster)),
        container_arn: Some(granted.container_arn),
        container_name: Some(granted.container_name),
        interactive: true,
        session: Some(Session {
            session_id: Some(granted.grant.session_id),
            stream_url: Some(stream_url),
            token_value: Some(granted.grant.token),
        }),
        task_arn: Some(granted.task_arn),
    })
}

/// The data channel's websocket: `GET /v1/data-channel/{session_id}`.
pub async fn data_channel(
    State(ctx): State<Arc<Ctx>>,
    Path(session_id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let exec = Arc::clone(&ctx.exec);
    upgrade
        .max_message_size(crate::exec::MAX_MESSAGE)
        .max_frame_size(crate::exec::MAX_MESSAGE)
        .max_write_buffer_size(4 << 20)
        // What comes from a client is small (acknowledgements, keystrokes, 1 KiB of piped
        // stdin per message); tungstenite zeroes a read buffer this big for every read.
        .read_buffer_size(16 << 10)
        .on_failed_upgrade(|e| warn!(error = %e, "a data channel websocket failed to upgrade"))
        .on_upgrade(move |socket| exec.serve(session_id, socket))
}

#[derive(Debug, Deserialize)]
struct SessionRequest {
    #[serde(rename = "SessionId")]
    session_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct ResumeSessionResponse {
    #[serde(rename = "SessionId")]
    session_id: String,
    #[serde(rename = "TokenValue", skip_serializing_if = "Option::is_none")]
    token_value: Option<String>,
    #[serde(rename = "StreamUrl", skip_serializing_if = "Option::is_none")]
    stream_url: Option<String>,
}

#[derive(Debug, Serialize)]
struct TerminateSessionResponse {
    #[serde(rename = "SessionId")]
    session_id: String,
}

/// `AmazonSSM.<op>`: ResumeSession answers a new token while the session lives (none once it
/// ended, which the plugin reports as a timeout); TerminateSession ends it.
pub async fn ssm(ctx: &Arc<Ctx>, op: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if !matches!(op, "ResumeSession" | "TerminateSession") {
        return Err(ApiError::new(
            Exception::UnknownOperation,
            format!(
                "ecsd answers only AmazonSSM.ResumeSession and AmazonSSM.TerminateSession (for ECS Exec sessions), not AmazonSSM.{op}"
            ),
        ));
    }
    let req: SessionRequest =
        serde_json::from_slice(if body.is_empty() { b"{}" } else { body }).map_err(|e| {
            ApiError::new(Exception::Serialization, format!("The request body is not valid JSON: {e}"))
        })?;
    let Some(session_id) = req.session_id.filter(|s| !s.is_empty()) else {
        return Err(ApiError::new(
            Exception::Validation,
            "1 validation error detected: Value null at 'sessionId' failed to satisfy constraint: Member must not be null",
        ));
    };
    let body = if op == "ResumeSession" {
        let token = ctx.exec.resume(&session_id);
        let stream_url = token.as_ref().map(|_| ctx.exec.stream_url(&client_host(ctx), &session_id));
        serde_json::to_vec(&ResumeSessionResponse { session_id, token_value: token, stream_url })
    } else {
        ctx.exec.terminate(&session_id);
        serde_json::to_vec(&TerminateSessionResponse { session_id })
    };
    body.map_err(|e| ApiError::new(Exception::Server, format!("ecsd could not encode the response: {e}")))
}
