//! The ECS API over HTTP (AWS JSON 1.1): target parsing, typed requests, error mapping, and
//! one file per resource. This module never touches containerd.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::Engine;
use crate::model::arn::Identity;
use crate::model::check::{Check, Checker};
use crate::model::shapes;
use crate::model::time::Clock;
use crate::store::Store;

mod account_settings;
mod attributes;
mod clusters;
mod container_instances;
pub mod error;
mod exec;
mod forward;
mod pagination;
pub mod services;
mod tags;
mod task_definitions;
mod task_protection;
mod tasks;
mod view;

pub use error::{ApiError, Exception};
pub use forward::{Forwarder, Upstream};

/// The `X-Amz-Target` prefix of every ECS operation.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
/// Requests larger than this are refused before they are parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const JSON_1_1: &str = "application/x-amz-json-1.1";

/// What every handler works with.
#[derive(Debug)]
pub struct Ctx {
    pub store: Arc<Store>,
    pub engine: Arc<Engine>,
    /// ECS Exec sessions (ExecuteCommand, the data channel, AmazonSSM's session calls).
    pub exec: Arc<crate::exec::Exec>,
    pub identity: Identity,
    pub clock: Arc<dyn Clock>,
    pub forward: Option<Forwarder>,
    /// Task networks (awsvpc subnets pick one) and host port settings.
    pub network: Arc<crate::network::Settings>,
    /// The address the API listens on, once bound (ExecuteCommand's streamUrl falls back to it).
    pub listen_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Runs the services: the API hands it the changes it checked.
    pub scheduler: Arc<crate::scheduler::Scheduler>,
    /// Requests by operation and outcome, for the introspection API's `/metrics`.
    pub metrics: Arc<crate::endpoints::introspection::ApiMetrics>,
}

impl Ctx {
    pub fn now(&self) -> f64 {
        self.clock.now()
    }
}

/// Declares the implemented operations once: the typed request enum, its parser and the
/// dispatch to handlers all come from this list. `blocking` handlers are synchronous store
/// work run on the blocking pool; `awaits` handlers are async (they talk to the engine);
/// `encoded` handlers are async and answer bytes they encoded themselves (hot reads served
/// from memory, spliced from stored JSON).
macro_rules! operations {
    ($($kind:ident $op:ident($req:ty) => $handler:path),* $(,)?) => {
        /// A parsed, model-checked request for one implemented operation.
        #[derive(Debug)]
        #[allow(clippy::large_enum_variant)]
        pub enum Request {
            $($op($req),)*
        }

        /// The operations ecsd serves itself.
        pub const IMPLEMENTED: &[&str] = &[$(stringify!($op)),*];

        impl Request {
            /// Parses the body of operation `op`. `Ok(None)`: ecsd does not implement `op`.
            pub fn parse(op: &str, body: &[u8]) -> Result<Option<Request>, ApiError> {
                Ok(Some(match op {
                    $(stringify!($op) => Request::$op(decode(body)?),)*
                    _ => return Ok(None),
                }))
            }

            pub fn operation(&self) -> &'static str {
                match self {
                    $(Request::$op(_) => stringify!($op),)*
                }
            }
        }

        /// Runs a request to completion and encodes the response body.
        pub async fn handle(ctx: &Arc<Ctx>, request: Request) -> Result<Vec<u8>, ApiError> {
            match request {
                $(Request::$op(r) => call!($kind, ctx, r, $handler),)*
            }
        }
    };
}

macro_rules! call {
    (blocking, $ctx:expr, $r:expr, $h:path) => {{
        let ctx = Arc::clone($ctx);
        let r = $r;
        tokio::task::spawn_blocking(move || encode(&$h(&ctx, r)?))
            .await
            .map_err(|e| ApiError::new(Exception::Server, format!("the handler failed: {e}")))?
    }};
    (awaits, $ctx:expr, $r:expr, $h:path) => {
        encode(&$h($ctx, $r).await?)
    };
    (encoded, $ctx:expr, $r:expr, $h:path) => {
        $h($ctx, $r).await
    };
}

operations! {
    blocking CreateCluster(shapes::CreateClusterRequest) => clusters::create,
    blocking DescribeClusters(shapes::DescribeClustersRequest) => clusters::describe,
    blocking ListClusters(shapes::ListClustersRequest) => clusters::list,
    blocking UpdateCluster(shapes::UpdateClusterRequest) => clusters::update,
    blocking UpdateClusterSettings(shapes::UpdateClusterSettingsRequest) => clusters::update_settings,
    blocking DeleteCluster(shapes::DeleteClusterRequest) => clusters::delete,
    blocking RegisterTaskDefinition(shapes::RegisterTaskDefinitionRequest) => task_definitions::register,
    encoded DescribeTaskDefinition(shapes::DescribeTaskDefinitionRequest) => task_definitions::describe,
    blocking ListTaskDefinitions(shapes::ListTaskDefinitionsRequest) => task_definitions::list,
    blocking ListTaskDefinitionFamilies(shapes::ListTaskDefinitionFamiliesRequest) => task_definitions::list_families,
    blocking DeregisterTaskDefinition(shapes::DeregisterTaskDefinitionRequest) => task_definitions::deregister,
    blocking DeleteTaskDefinitions(shapes::DeleteTaskDefinitionsRequest) => task_definitions::delete,
    blocking TagResource(shapes::TagResourceRequest) => tags::tag,
    blocking UntagResource(shapes::UntagResourceRequest) => tags::untag,
    blocking ListTagsForResource(shapes::ListTagsForResourceRequest) => tags::list,
    blocking ListAccountSettings(shapes::ListAccountSettingsRequest) => account_settings::list,
    blocking PutAccountSetting(shapes::PutAccountSettingRequest) => account_settings::put,
    blocking PutAccountSettingDefault(shapes::PutAccountSettingDefaultRequest) => account_settings::put_default,
    blocking DeleteAccountSetting(shapes::DeleteAccountSettingRequest) => account_settings::delete,
    awaits RunTask(shapes::RunTaskRequest) => tasks::run,
    awaits StartTask(shapes::StartTaskRequest) => tasks::start,
    awaits StopTask(shapes::StopTaskRequest) => tasks::stop,
    encoded DescribeTasks(shapes::DescribeTasksRequest) => tasks::describe,
    blocking ListTasks(shapes::ListTasksRequest) => tasks::list,
    blocking PutAttributes(shapes::PutAttributesRequest) => attributes::put,
    blocking ListAttributes(shapes::ListAttributesRequest) => attributes::list,
    blocking DeleteAttributes(shapes::DeleteAttributesRequest) => attributes::delete,
    awaits CreateService(shapes::CreateServiceRequest) => services::create,
    awaits UpdateService(shapes::UpdateServiceRequest) => services::update,
    awaits DeleteService(shapes::DeleteServiceRequest) => services::delete,
    blocking DescribeServices(shapes::DescribeServicesRequest) => services::describe,
    blocking ListServices(shapes::ListServicesRequest) => services::list,
    blocking ListServicesByNamespace(shapes::ListServicesByNamespaceRequest) => services::list_by_namespace,
    blocking ListServiceDeployments(shapes::ListServiceDeploymentsRequest) => services::list_deployments,
    blocking DescribeServiceDeployments(shapes::DescribeServiceDeploymentsRequest) => services::describe_deployments,
    awaits StopServiceDeployment(shapes::StopServiceDeploymentRequest) => services::stop_deployment,
    blocking DescribeServiceRevisions(shapes::DescribeServiceRevisionsRequest) => services::describe_revisions,
    blocking ListContainerInstances(shapes::ListContainerInstancesRequest) => container_instances::list,
    awaits DescribeContainerInstances(shapes::DescribeContainerInstancesRequest) => container_instances::describe,
    awaits ExecuteCommand(shapes::ExecuteCommandRequest) => exec::execute_command,
    awaits UpdateTaskProtection(shapes::UpdateTaskProtectionRequest) => task_protection::update,
    awaits GetTaskProtection(shapes::GetTaskProtectionRequest) => task_protection::get,
}

/// Decodes and model-checks a request body. An empty body is an empty object, as AWS
/// clients send for operations without input.
fn decode<T: DeserializeOwned + Check>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path == "?" || path.is_empty() {
            format!("The request body is not valid JSON for this operation: {inner}")
        } else {
            format!("The value at '{path}' is not valid: {inner}")
        };
        ApiError::new(Exception::Serialization, message)
    })?;
    let errors = Checker::run(&value);
    if !errors.is_empty() {
        let n = errors.len();
        let noun = if n == 1 { "error" } else { "errors" };
        return Err(ApiError::invalid_parameter(format!(
            "{n} validation {noun} detected: {}",
            errors.join("; ")
        )));
    }
    Ok(value)
}

/// A record of a cached table: from memory when the store has it there, else read on the
/// blocking pool, so a hot read never waits on a transaction.
async fn cached<V: 'static>(
    ctx: &Arc<Ctx>,
    table: crate::store::Table<V>,
    key: &str,
) -> Result<Option<Arc<[u8]>>, ApiError> {
    if let Some(hit) = ctx.store.cached_raw(table, key) {
        return Ok(hit);
    }
    let (store, key) = (Arc::clone(&ctx.store), key.to_owned());
    tokio::task::spawn_blocking(move || store.get_raw(table, &key))
        .await
        .map_err(|e| ApiError::new(Exception::Server, format!("the read failed: {e}")))?
        .map_err(ApiError::from)
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let ctx = Arc::clone(ctx);
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .map_err(|e| ApiError::new(Exception::Server, format!("the handler failed: {e}")))?
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value)
        .map_err(|e| ApiError::new(Exception::Server, format!("ecsd could not encode the response: {e}")))
}

/// The HTTP router: every ECS call is a POST whose operation is in `X-Amz-Target`; ECS
/// Exec's data channel is a websocket under `/v1/data-channel/`.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/v1/data-channel/{session_id}", axum::routing::get(exec::data_channel))
        .fallback(entry)
        .with_state(ctx)
}

async fn entry(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Body) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let op = target.strip_prefix(TARGET_PREFIX).unwrap_or(&target).to_owned();
    let span = info_span!("api", op = %op, request_id = %request_id);
    let started = Instant::now();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    async move {
        let result = exec::REQUEST_HOST.scope(host, respond(&ctx, &target, &headers, body)).await;
        let outcome = match &result {
            Ok(Reply::Json(_)) => "ok",
            Ok(Reply::Forwarded(_)) => "forwarded",
            Err(e) => e.exception.name(),
        };
        ctx.metrics.record(metric_operation(&target), outcome);
        let mut response = match result {
            Ok(Reply::Json(bytes)) => {
                info!(status = 200, ms = started.elapsed().as_millis() as u64, "ok");
                json_response(StatusCode::OK, bytes)
            }
            Ok(Reply::Forwarded(response)) => {
                info!(status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "forwarded");
                response
            }
            Err(e) => {
                let status = e.exception.status();
                if status.is_server_error() {
                    warn!(status = status.as_u16(), exception = e.exception.name(), message = %e.message, "failed");
                } else {
                    info!(status = status.as_u16(), exception = e.exception.name(), message = %e.message, "rejected");
                }
                error_response(&e)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            // A forwarded answer keeps the request id its upstream gave it.
            if !response.headers().contains_key("x-amzn-requestid") {
                response.headers_mut().insert("x-amzn-RequestId", v);
            }
        }
        response
    }
    .instrument(span)
    .await
}

/// The operation's name as a metric label: one of ECS's (or the Session Manager calls ecsd
/// answers), else `unknown`, so what a client sends cannot grow the series.
fn metric_operation(target: &str) -> &'static str {
    if let Some(op) = target.strip_prefix(TARGET_PREFIX) {
        return shapes::ALL_OPERATIONS.iter().find(|o| **o == op).copied().unwrap_or("unknown");
    }
    match target.strip_prefix(exec::SSM_PREFIX) {
        Some("ResumeSession") => "AmazonSSM.ResumeSession",
        Some("TerminateSession") => "AmazonSSM.TerminateSession",
        _ => "unknown",
    }
}

enum Reply {
    Json(Vec<u8>),
    Forwarded(Response),
}

async fn respond(ctx: &Arc<Ctx>, target: &str, headers: &HeaderMap, body: Body) -> Result<Reply, ApiError> {
    if let Some(op) = target.strip_prefix(exec::SSM_PREFIX) {
        let body = read_body(headers, body).await?;
        return exec::ssm(ctx, op, &body).await.map(Reply::Json);
    }
    let Some(op) = target.strip_prefix(TARGET_PREFIX) else {
        let message = if target.is_empty() {
            "The request has no X-Amz-Target header: ECS operations are POSTed to / with X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>".to_owned()
        } else {
            format!(
                "Unknown operation {target}: ecsd serves the ECS API, whose targets start with {TARGET_PREFIX}"
            )
        };
        return Err(ApiError::new(Exception::UnknownOperation, message));
    };
    let body = read_body(headers, body).await?;
    match Request::parse(op, &body)? {
        Some(request) => Ok(Reply::Json(handle(ctx, request).await?)),
        None if !shapes::ALL_OPERATIONS.contains(&op) => Err(ApiError::new(
            Exception::UnknownOperation,
            format!("Unknown operation {op}: the ECS API has no operation of that name"),
        )),
        None => match &ctx.forward {
            Some(f) => f.forward(headers, body).await.map(Reply::Forwarded),
            None => Err(ApiError::new(
                Exception::UnknownOperation,
                format!(
                    "ecsd does not implement the ECS operation {op}; set ECS_ENDPOINT_URL to forward operations ecsd does not implement to another ECS endpoint"
                ),
            )),
        },
    }
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let too_large = |n: Option<u64>| {
        let size = n.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
        ApiError::client(format!(
            "The request body is too large{size}: ecsd accepts at most {MAX_BODY_BYTES} bytes"
        ))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large(declared));
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| too_large(None))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_1_1));
    r
}

fn error_response(e: &ApiError) -> Response {
    let body = serde_json::json!({ "__type": e.exception.name(), "message": e.message });
    let mut r = json_response(e.exception.status(), body.to_string().into_bytes());
    r.headers_mut().insert("x-amzn-ErrorType", HeaderValue::from_static(e.exception.name()));
    r
}

/// Resolves a cluster reference (name, ARN or nothing) to a cluster name, treating ARNs of
/// another account or region as clusters that do not exist.
fn cluster_name(ctx: &Ctx, reference: Option<&str>) -> Result<String, ApiError> {
    use crate::model::arn::ArnError;
    ctx.identity.cluster_name(reference).map_err(|e| match e {
        ArnError::Foreign(_) => ApiError::cluster_not_found(),
        e => ApiError::invalid_parameter(format!("cluster: {e}")),
    })
}

/// This host's container instance id (made once, kept in the store).
pub fn host_instance_id(ctx: &Ctx) -> Result<String, ApiError> {
    container_instances::instance_id(ctx)
}

/// Makes sure the cluster `name` exists: the cluster this host joins (`ECS_CLUSTER`).
pub fn ensure_cluster(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    clusters::ensure(ctx, name)
}

/// Makes sure the `default` cluster exists, as ECS does for hosts that name no cluster.
pub fn ensure_default_cluster(ctx: &Ctx) -> Result<(), ApiError> {
    clusters::ensure(ctx, crate::model::arn::DEFAULT_CLUSTER)
}
