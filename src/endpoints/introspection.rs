//! The ECS agent's introspection API v1 (`/v1/metadata`, `/v1/tasks`, `/license`) on the
//! host, by default at 127.0.0.1:51678, plus `/metrics` in Prometheus' text format.
//!
//! It reads tasks only through an [`AgentSource`] the daemon gives it (the engine's view),
//! and counts API requests in [`ApiMetrics`], which the API layer feeds. Requests are GETs
//! without bodies, each bounded in time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::metadata::{self, MetadataContext, Network, PortResponse, VolumeResponse};
use super::server::{REQUEST_TIMEOUT, query_param};
use crate::model::network::NetworkMode;
use crate::model::task::{TaskRecord, TaskStatus};

const JSON: &str = "application/json";
/// Prometheus' text exposition format.
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The agent's short runtime id: `docker ps`'s 12 characters.
const SHORT_ID: usize = 12;

/// What the introspection API reads from the rest of the daemon.
pub trait AgentSource: Send + Sync {
    /// Every task the engine knows, STOPPED ones it still keeps included.
    fn tasks(&self) -> Vec<Arc<TaskRecord>>;
    /// ECS Exec sessions open now.
    fn exec_sessions(&self) -> usize;
}

/// ECS API requests by operation and outcome (`ok`, `forwarded`, or the exception's name).
#[derive(Debug, Default)]
pub struct ApiMetrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl ApiMetrics {
    /// Counts one request. Both labels are from fixed sets (the caller maps an operation it
    /// does not know to `unknown`), so the series stay bounded whatever clients send.
    pub fn record(&self, operation: &'static str, outcome: &'static str) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((operation, outcome)).or_default() +=
            1;
    }

    fn snapshot(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything the introspection API answers from.
pub struct Introspection {
    /// The cluster this host joined (`ECS_CLUSTER`).
    pub cluster: String,
    pub container_instance_arn: Option<String>,
    /// `Amazon ECS Agent - v<version> (<commit>)`'s place: ecsd's version and commit.
    pub version: String,
    pub metadata: MetadataContext,
    pub source: Arc<dyn AgentSource>,
    pub api: Arc<ApiMetrics>,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("cluster", &self.cluster)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetadataResponse {
    pub cluster: String,
    pub container_instance_arn: Option<String>,
    pub version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TasksResponse {
    pub tasks: Option<Vec<TaskResponse>>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskResponse {
    pub arn: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub desired_status: &'static str,
    pub known_status: &'static str,
    pub family: String,
    pub version: String,
    pub containers: Option<Vec<ContainerResponse>>,
}

#[derive(Debug, Serialize)]
pub struct ContainerResponse {
    #[serde(rename = "DockerId")]
    pub docker_id: String,
    #[serde(rename = "DockerName")]
    pub docker_name: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Image")]
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(rename = "StartedAt", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(rename = "Ports", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortResponse>,
    #[serde(rename = "Networks", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    #[serde(rename = "Volumes", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeResponse>,
}

/// The agent's backend status of a task: PENDING until it runs, RUNNING while containers
/// run (stopping included), STOPPED once they have all stopped.
fn backend_known(task: &TaskRecord) -> &'static str {
    match task.last {
        TaskStatus::Running | TaskStatus::Deactivating | TaskStatus::Stopping => "RUNNING",
        TaskStatus::Deprovisioning | TaskStatus::Stopped => "STOPPED",
        _ => "PENDING",
    }
}

/// The desired status, blanked where the agent blanks it: known STOPPED but not desired so,
/// or known RUNNING and desired PENDING.
fn backend_desired(task: &TaskRecord, known: &str) -> &'static str {
    let desired = if task.desired >= TaskStatus::Deactivating {
        "STOPPED"
    } else if task.desired >= TaskStatus::Running {
        "RUNNING"
    } else {
        "PENDING"
    };
    match (known, desired) {
        ("STOPPED", d) if d != "STOPPED" => "",
        ("RUNNING", "PENDING") => "",
        (_, d) => d,
    }
}

/// One task as `/v1/tasks` shows it.
pub fn task_response(task: &TaskRecord, cx: &MetadataContext) -> TaskResponse {
    let known = backend_known(task);
    let awsvpc = task.network_mode() == NetworkMode::Awsvpc;
    let containers = task
        .containers
        .iter()
        .map(|c| {
            let v3 = metadata::container_v3(task, c, cx);
            ContainerResponse {
                docker_id: c.runtime_id.clone(),
                docker_name: v3.docker_name,
                name: c.name.clone(),
                image: c.image.clone(),
                image_id: v3.image_id,
                created_at: v3.created_at,
                started_at: v3.started_at,
                ports: v3.ports,
                // The agent shows networks for awsvpc tasks only.
                networks: if awsvpc {
                    v3.networks
                        .into_iter()
                        .map(|n| Network {
                            network_mode: n.network_mode,
                            ipv4_addresses: n.ipv4_addresses,
                            ipv6_addresses: n.ipv6_addresses,
                            ..Network::default()
                        })
                        .collect()
                } else {
                    vec![]
                },
                volumes: v3.volumes,
            }
        })
        .collect();
    TaskResponse {
        arn: task.arn.clone(),
        desired_status: backend_desired(task, known),
        known_status: known,
        family: task.definition.family.clone().unwrap_or_default(),
        version: task.definition.revision.to_string(),
        containers: Some(containers),
    }
}

/// Why `/v1/tasks?…` has no single task to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskQueryError {
    #[error("request contains both taskarn and dockerid; specify one")]
    Both,
    #[error("no task found for {0}")]
    NotFound(String),
    #[error("several tasks have a container whose id starts with {0}; give more of the id")]
    Ambiguous(String),
}

impl TaskQueryError {
    fn status(&self) -> StatusCode {
        match self {
            TaskQueryError::NotFound(_) => StatusCode::NOT_FOUND,
            TaskQueryError::Both | TaskQueryError::Ambiguous(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The task `?taskarn=` or `?dockerid=` names: a dockerid longer than the short id must match
/// a runtime id exactly; a shorter one is a prefix of the runtime ids' short form.
pub fn find_task<'a>(
    tasks: &'a [Arc<TaskRecord>],
    taskarn: Option<&str>,
    dockerid: Option<&str>,
) -> Result<Option<&'a TaskRecord>, TaskQueryError> {
    match (taskarn, dockerid) {
        (Some(_), Some(_)) => Err(TaskQueryError::Both),
        (None, None) => Ok(None),
        (Some(arn), None) => tasks
            .iter()
            .find(|t| t.arn == arn)
            .map(|t| Some(t.as_ref()))
            .ok_or_else(|| TaskQueryError::NotFound(format!("task arn {arn}"))),
        (None, Some(id)) => {
            let matches = |runtime_id: &str| {
                if id.len() > SHORT_ID {
                    runtime_id == id
                } else {
                    !id.is_empty() && runtime_id.get(..SHORT_ID).unwrap_or(runtime_id).starts_with(id)
                }
            };
            let mut found = tasks
                .iter()
                .filter(|t| t.containers.iter().any(|c| matches(&c.runtime_id)))
                .map(|t| t.as_ref());
            match (found.next(), found.next()) {
                (Some(t), None) => Ok(Some(t)),
                (Some(_), Some(_)) => Err(TaskQueryError::Ambiguous(id.to_owned())),
                (None, _) => Err(TaskQueryError::NotFound(format!("container id {id}"))),
            }
        }
    }
}

/// `/metrics`: tasks by status, API requests by operation and outcome, ECS Exec sessions.
pub fn metrics_text(tasks: &[Arc<TaskRecord>], api: &ApiMetrics, exec_sessions: usize) -> String {
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for status in [
        TaskStatus::Provisioning,
        TaskStatus::Pending,
        TaskStatus::Activating,
        TaskStatus::Running,
        TaskStatus::Deactivating,
        TaskStatus::Stopping,
        TaskStatus::Deprovisioning,
        TaskStatus::Stopped,
    ] {
        by_status.insert(status.as_str(), 0);
    }
    for t in tasks {
        *by_status.entry(t.last.as_str()).or_default() += 1;
    }
    let mut out = String::new();
    out.push_str("# HELP ecsd_tasks Tasks ecsd keeps, by last status.\n# TYPE ecsd_tasks gauge\n");
    for (status, n) in by_status {
        let _ = writeln!(out, "ecsd_tasks{{status=\"{status}\"}} {n}");
    }
    out.push_str(
        "# HELP ecsd_api_requests_total ECS API requests, by operation and outcome.\n\
         # TYPE ecsd_api_requests_total counter\n",
    );
    for ((operation, outcome), n) in api.snapshot() {
        let _ =
            writeln!(out, "ecsd_api_requests_total{{operation=\"{operation}\",outcome=\"{outcome}\"}} {n}");
    }
    out.push_str("# HELP ecsd_exec_sessions ECS Exec sessions open now.\n# TYPE ecsd_exec_sessions gauge\n");
    let _ = writeln!(out, "ecsd_exec_sessions {exec_sessions}");
    out
}

/// The introspection router: the agent's paths, `/metrics`, and the list of commands for
/// anything else.
pub fn router(state: Arc<Introspection>) -> Router {
    Router::new()
        .route("/v1/metadata", get(v1_metadata))
        .route("/v1/tasks", get(v1_tasks))
        .route("/license", get(license))
        .route("/metrics", get(metrics))
        .fallback(commands)
        .layer(middleware::from_fn(bounded))
        .layer(DefaultBodyLimit::max(0))
        .with_state(state)
}

/// Every request ends within the agent's 5 s; none may carry a body.
async fn bounded(request: Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

async fn v1_metadata(State(s): State<Arc<Introspection>>) -> Response {
    json(
        StatusCode::OK,
        &MetadataResponse {
            cluster: s.cluster.clone(),
            container_instance_arn: s.container_instance_arn.clone(),
            version: s.version.clone(),
        },
    )
}

async fn v1_tasks(State(s): State<Arc<Introspection>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let taskarn = query_param(&query, "taskarn");
    let dockerid = query_param(&query, "dockerid");
    let tasks = s.source.tasks();
    match find_task(&tasks, taskarn.as_deref(), dockerid.as_deref()) {
        Ok(Some(task)) => json(StatusCode::OK, &task_response(task, &s.metadata)),
        Ok(None) => json(
            StatusCode::OK,
            &TasksResponse { tasks: Some(tasks.iter().map(|t| task_response(t, &s.metadata)).collect()) },
        ),
        Err(e) => {
            tracing::debug!(error = %e, "introspection task query");
            json(e.status(), &TaskResponse::default())
        }
    }
}

async fn license() -> Response {
    let text = format!(
        "ecsd {}\nLicensed under the {} license.\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_LICENSE")
    );
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn metrics(State(s): State<Arc<Introspection>>) -> Response {
    let text = metrics_text(&s.source.tasks(), &s.api, s.source.exec_sessions());
    let mut r = Body::from(text).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(METRICS));
    r
}

async fn commands() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({"AvailableCommands": ["/v1/metadata", "/v1/tasks", "/license", "/metrics"]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::metadata::tests::{DOCKER_ID, awsvpc_task, context};

    fn tasks() -> Vec<Arc<TaskRecord>> {
        let a = awsvpc_task();
        let mut b = awsvpc_task();
        b.id = "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into();
        b.arn = format!("arn:aws:ecs:us-west-2:111122223333:task/default/{}", b.id);
        b.containers[0].runtime_id = format!("ffff{}", &DOCKER_ID[4..]);
        vec![Arc::new(a), Arc::new(b)]
    }

    #[test]
    fn a_running_awsvpc_task_matches_the_reference_shape() {
        let t = awsvpc_task();
        let body = serde_json::to_value(task_response(&t, &context())).unwrap();
        let c = &body["Containers"][0];
        assert_eq!(body["Arn"], t.arn.as_str());
        assert_eq!(body["DesiredStatus"], "RUNNING");
        assert_eq!(body["KnownStatus"], "RUNNING");
        assert_eq!(body["Family"], t.definition.family.as_deref().unwrap());
        assert_eq!(body["Version"], t.definition.revision.to_string());
        assert_eq!(c["DockerId"], DOCKER_ID);
        assert_eq!(c["DockerName"], metadata::docker_name(&t, &t.containers[0]));
        assert_eq!(c["Name"], "web");
        assert_eq!(c["Networks"][0]["NetworkMode"], "awsvpc");
        // v1 networks carry the mode and addresses only, not v4's interface properties.
        let network = c["Networks"][0].as_object().unwrap();
        assert!(
            network.keys().all(|k| ["NetworkMode", "IPv4Addresses"].contains(&k.as_str())),
            "{network:?}"
        );
        // The whole answer, in the agent's field order and omissions: the reference's example
        // (ecs-reference.md §5) with this task's ids, times and address.
        let tasks = TasksResponse { tasks: Some(vec![task_response(&t, &context())]) };
        assert_eq!(serde_json::to_string(&tasks).unwrap(), include_str!("testdata/v1_tasks.json").trim_end());
    }

    #[test]
    fn statuses_are_the_backends_and_desired_is_blanked_as_the_agent_does() {
        let mut t = awsvpc_task();
        t.last = TaskStatus::Pending;
        t.desired = TaskStatus::Running;
        let r = task_response(&t, &context());
        assert_eq!((r.known_status, r.desired_status), ("PENDING", "RUNNING"));
        t.last = TaskStatus::Stopping;
        t.desired = TaskStatus::Stopped;
        let r = task_response(&t, &context());
        assert_eq!((r.known_status, r.desired_status), ("RUNNING", "STOPPED"));
        t.last = TaskStatus::Stopped;
        let r = task_response(&t, &context());
        assert_eq!((r.known_status, r.desired_status), ("STOPPED", "STOPPED"));
        t.desired = TaskStatus::Running;
        let body = serde_json::to_value(task_response(&t, &context())).unwrap();
        assert!(body.get("DesiredStatus").is_none(), "{body}");
    }

    #[test]
    fn errors_have_the_agents_empty_bodies() {
        assert_eq!(
            serde_json::to_string(&TaskResponse::default()).unwrap(),
            r#"{"Arn":"","KnownStatus":"","Family":"","Version":"","Containers":null}"#
        );
        assert_eq!(serde_json::to_string(&TasksResponse { tasks: None }).unwrap(), r#"{"Tasks":null}"#);
        let m =
            MetadataResponse { cluster: "default".into(), container_instance_arn: None, version: "v".into() };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"Cluster":"default","ContainerInstanceArn":null,"Version":"v"}"#
        );
    }

    #[test]
    fn tasks_are_found_by_arn_full_id_or_short_prefix() {
        let tasks = tasks();
        let first = |r: Result<Option<&TaskRecord>, TaskQueryError>| r.unwrap().map(|t| t.id.clone());
        assert_eq!(first(find_task(&tasks, Some(&tasks[1].arn), None)), Some(tasks[1].id.clone()));
        assert_eq!(first(find_task(&tasks, None, Some(DOCKER_ID))), Some(tasks[0].id.clone()));
        assert_eq!(first(find_task(&tasks, None, Some(&DOCKER_ID[..12]))), Some(tasks[0].id.clone()));
        assert_eq!(first(find_task(&tasks, None, Some("ffff"))), Some(tasks[1].id.clone()));
        assert_eq!(first(find_task(&tasks, None, None)), None);
        // Longer than the short id: exact only.
        let err = find_task(&tasks, None, Some(&DOCKER_ID[..20])).unwrap_err();
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        assert_eq!(find_task(&tasks, Some("x"), Some("y")).unwrap_err(), TaskQueryError::Both);
        assert_eq!(TaskQueryError::Both.status(), StatusCode::BAD_REQUEST);
        let err = find_task(&tasks, Some("arn:aws:ecs:us-west-2:111122223333:task/default/nope"), None);
        assert_eq!(err.unwrap_err().status(), StatusCode::NOT_FOUND);
        // A short id is a prefix, not any substring.
        let inner = &DOCKER_ID[4..8];
        assert!(find_task(&tasks, None, Some(inner)).is_err_and(|e| e.status() == StatusCode::NOT_FOUND));
    }

    #[test]
    fn a_short_prefix_shared_by_two_tasks_is_a_bad_request() {
        let mut tasks = tasks();
        let mut c = (*tasks[1]).clone();
        c.containers[0].runtime_id = DOCKER_ID.to_owned();
        tasks[1] = Arc::new(c);
        let e = find_task(&tasks, None, Some(&DOCKER_ID[..6])).unwrap_err();
        assert_eq!(e, TaskQueryError::Ambiguous(DOCKER_ID[..6].to_owned()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let tasks = tasks();
        let api = ApiMetrics::default();
        api.record("RunTask", "ok");
        api.record("RunTask", "ok");
        api.record("RunTask", "InvalidParameterException");
        let text = metrics_text(&tasks, &api, 3);
        assert!(text.contains("# TYPE ecsd_tasks gauge\n"), "{text}");
        assert!(text.contains("ecsd_tasks{status=\"RUNNING\"} 2\n"), "{text}");
        assert!(text.contains("ecsd_tasks{status=\"STOPPED\"} 0\n"), "{text}");
        assert!(text.contains("ecsd_api_requests_total{operation=\"RunTask\",outcome=\"ok\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "ecsd_api_requests_total{operation=\"RunTask\",outcome=\"InvalidParameterException\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("ecsd_exec_sessions 3\n"), "{text}");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}
