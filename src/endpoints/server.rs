//! The HTTP side of one task's `169.254.170.2:80`: metadata (v3, v4, stats) for the task's
//! containers and its role's credentials, with the ECS agent's paths, status codes and error
//! bodies. One router per task, on a listener bound inside the task's network namespace
//! ([`listen_in_netns`]), so a request can only name its own task: an endpoint id or a
//! credentials id of another task is unknown here.
//!
//! Like the agent's task server: a token-bucket rate limit over every request (40 rps, burst
//! 60 by default), gorilla/mux's path cleaning (301) and `404 page not found`, GET only, and a
//! 5 s budget per request. Credentials never reach a log line: requests are logged by route,
//! never by path, and the keys' `Debug` redacts the secrets.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::credentials::{CredentialStore, Lookup};
use super::metadata::{self, MetadataContext, Tags, Version};
use super::stats::StatsSampler;
use crate::model::task::TaskRecord;

/// Requests with a larger body are refused: every route is a GET.
pub const MAX_BODY_BYTES: usize = 4096;
/// The agent's task server read and write timeouts.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// `ECS_TASK_METADATA_RPS_LIMIT`: steady requests per second and burst, per task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { per_second: 40.0, burst: 60 }
    }
}

/// The live task, as the engine knows it: the endpoints read tasks only through this.
pub trait TaskSource: Send + Sync {
    /// The task's current record; `None` once it is gone.
    fn task(&self) -> Option<Arc<TaskRecord>>;
    /// The task's tags, for `/taskWithTags`.
    fn tags(&self) -> Vec<(String, String)> {
        vec![]
    }
    /// The container instance's tags, for `/taskWithTags`.
    fn container_instance_tags(&self) -> Vec<(String, String)> {
        vec![]
    }
}

impl<F: Fn() -> Option<Arc<TaskRecord>> + Send + Sync> TaskSource for F {
    fn task(&self) -> Option<Arc<TaskRecord>> {
        self()
    }
}

/// The credentials store: the task role's keys by credentials id.
pub trait CredentialsSource: Send + Sync {
    fn lookup(&self, id: &str) -> Lookup;
}

impl CredentialsSource for CredentialStore {
    fn lookup(&self, id: &str) -> Lookup {
        CredentialStore::lookup(self, id)
    }
}

/// Everything one task's listener serves from.
pub struct TaskState {
    task_id: String,
    source: Arc<dyn TaskSource>,
    credentials: Arc<dyn CredentialsSource>,
    metadata: MetadataContext,
    stats: StatsSampler,
    limiter: TokenBucket,
    /// Task protection for the agent API; without it those routes answer a server error.
    protection: Option<Arc<dyn super::protection::ProtectionSource>>,
}

impl fmt::Debug for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskState")
            .field("task_id", &self.task_id)
            .field("metadata", &self.metadata)
            .field("stats", &self.stats)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl TaskState {
    pub fn new(
        task_id: &str,
        source: Arc<dyn TaskSource>,
        credentials: Arc<dyn CredentialsSource>,
        metadata: MetadataContext,
        stats: StatsSampler,
        limit: RateLimit,
    ) -> TaskState {
        TaskState {
            task_id: task_id.to_owned(),
            source,
            credentials,
            metadata,
            stats,
            limiter: TokenBucket::new(limit),
            protection: None,
        }
    }

    /// The same, serving the agent API's task protection from `source`.
    pub fn with_protection(mut self, source: Arc<dyn super::protection::ProtectionSource>) -> TaskState {
        self.protection = Some(source);
        self
    }

    pub(super) fn protection_source(&self) -> Option<&Arc<dyn super::protection::ProtectionSource>> {
        self.protection.as_ref()
    }

    /// This listener's task, when one of its containers has endpoint id `id`.
    pub(super) fn task_for_endpoint(&self, id: &str) -> Option<Arc<TaskRecord>> {
        self.task().filter(|t| t.containers.iter().any(|c| c.endpoint_id.as_deref() == Some(id)))
    }

    /// The task, if the source still has it and it is this listener's.
    fn task(&self) -> Option<Arc<TaskRecord>> {
        self.source.task().filter(|t| t.id == self.task_id)
    }

    fn answer(&self, call: &Call) -> (StatusCode, Vec<u8>) {
        match call {
            Call::Credentials { api, id } => self.credentials(*api, id.as_deref()),
            Call::Metadata { what, version, id } => self.metadata(*what, *version, id),
        }
    }

    fn metadata(&self, what: What, version: Version, id: &str) -> (StatusCode, Vec<u8>) {
        let task = self.task();
        let Some((task, index)) = task.and_then(|t| {
            t.containers.iter().position(|c| c.endpoint_id.as_deref() == Some(id)).map(|i| (t, i))
        }) else {
            return lookup_failure(what, version, id);
        };
        let c = &task.containers[index];
        match what {
            What::Container => match version {
                Version::V4 => json(StatusCode::OK, &metadata::container_v4(&task, c, &self.metadata)),
                Version::V3 => json(StatusCode::OK, &metadata::container_v3(&task, c, &self.metadata)),
            },
            What::Task { tags } => {
                let tags = tags.then(|| Tags {
                    task: self.source.tags().into_iter().collect(),
                    container_instance: self.source.container_instance_tags().into_iter().collect(),
                });
                match version {
                    Version::V4 => {
                        json(StatusCode::OK, &metadata::task_v4(&task, &self.metadata, tags.as_ref()))
                    }
                    Version::V3 => {
                        json(StatusCode::OK, &metadata::task_v3(&task, &self.metadata, tags.as_ref()))
                    }
                }
            }
            What::ContainerStats => match self.stats.container(&task, c, version) {
                Some(stats) => json(StatusCode::OK, &stats),
                None => {
                    let status = if version == Version::V4 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    json(status, &format!("Unable to get container stats for: {}", c.runtime_id))
                }
            },
            What::TaskStats => {
                self.stats.retain(&task);
                let all: serde_json::Map<String, serde_json::Value> = self
                    .stats
                    .task(&task, version)
                    .into_iter()
                    .map(|(id, stats)| {
                        let value = match (stats, version) {
                            (Some(s), _) => serde_json::to_value(s).unwrap_or_default(),
                            (None, Version::V4) => serde_json::Value::Object(serde_json::Map::new()),
                            (None, Version::V3) => serde_json::Value::Null,
                        };
                        (id, value)
                    })
                    .collect();
                json(StatusCode::OK, &all)
            }
        }
    }

    /// Only this task's credentials id is served; any other is unknown, as on a host
    /// without that task.
    fn credentials(&self, api: CredentialsApi, id: Option<&str>) -> (StatusCode, Vec<u8>) {
        let prefix = api.prefix();
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return credentials_error(
                StatusCode::BAD_REQUEST,
                "NoIdInRequest",
                &format!("{prefix}No Credential ID in the request"),
            );
        };
        let not_found = || {
            credentials_error(
                StatusCode::BAD_REQUEST,
                "InvalidIdInRequest",
                &format!("{prefix}Credentials not found"),
            )
        };
        let ours = self.task().and_then(|t| t.credentials_id.clone());
        if !ours.is_some_and(|ours| constant_time_eq(ours.as_bytes(), id.as_bytes())) {
            return not_found();
        }
        match self.credentials.lookup(id) {
            Lookup::Found(creds) => match serde_json::to_vec(&creds) {
                Ok(body) => (StatusCode::OK, body),
                Err(_) => credentials_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "Internal server error",
                ),
            },
            Lookup::Uninitialized => credentials_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "CredentialsUninitialized",
                &format!("{prefix}Credentials uninitialized for ID"),
            ),
            Lookup::Unknown => not_found(),
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// `/v3/{id}...` and `/v4/{id}...`, by a container's endpoint id.
    Metadata {
        what: What,
        version: Version,
        id: String,
    },
    Credentials {
        api: CredentialsApi,
        id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Container,
    Task { tags: bool },
    ContainerStats,
    TaskStats,
}

impl Call {
    /// For logs: the route, never the path (it carries the credentials id).
    fn route(&self) -> &'static str {
        let (what, v4) = match self {
            Call::Credentials { api: CredentialsApi::V1, .. } => return "v1 credentials",
            Call::Credentials { api: CredentialsApi::V2, .. } => return "v2 credentials",
            Call::Metadata { what, version, .. } => (what, *version == Version::V4),
        };
        match (what, v4) {
            (What::Container, true) => "v4 container",
            (What::Container, false) => "v3 container",
            (What::Task { tags: false }, true) => "v4 task",
            (What::Task { tags: true }, true) => "v4 taskWithTags",
            (What::Task { tags: false }, false) => "v3 task",
            (What::Task { tags: true }, false) => "v3 taskWithTags",
            (What::ContainerStats, true) => "v4 stats",
            (What::ContainerStats, false) => "v3 stats",
            (What::TaskStats, true) => "v4 task stats",
            (What::TaskStats, false) => "v3 task stats",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredentialsApi {
    V1,
    V2,
}

impl CredentialsApi {
    fn prefix(self) -> &'static str {
        match self {
            CredentialsApi::V1 => "CredentialsV1Request: ",
            CredentialsApi::V2 => "CredentialsV2Request: ",
        }
    }
}

/// The agent's answer to an endpoint id it does not know: 404 in v4; in v3, 500 for metadata
/// and 400 for stats. Container metadata looks the container up first, the rest the task.
fn lookup_failure(what: What, version: Version, id: &str) -> (StatusCode, Vec<u8>) {
    let name = match what {
        What::Container => "container metadata",
        What::Task { .. } => "task metadata",
        What::ContainerStats => "container stats",
        What::TaskStats => "task stats",
    };
    let (v, status) = match (version, what) {
        (Version::V4, _) => ("V4", StatusCode::NOT_FOUND),
        (Version::V3, What::Container | What::Task { .. }) => ("V3", StatusCode::INTERNAL_SERVER_ERROR),
        (Version::V3, What::ContainerStats | What::TaskStats) => ("V3", StatusCode::BAD_REQUEST),
    };
    let reason = if what == What::Container {
        format!("unable to get container ID from request: unable to get docker ID from v3 endpoint ID: {id}")
    } else {
        format!("unable to get task arn from request: unable to get task Arn from v3 endpoint ID: {id}")
    };
    json(status, &format!("{v} {name} handler: {reason}"))
}

#[derive(Serialize)]
struct CredentialsError<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "HTTPErrorCode")]
    http_error_code: u16,
}

fn credentials_error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Vec<u8>) {
    json(status, &CredentialsError { code, message, http_error_code: status.as_u16() })
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> (StatusCode, Vec<u8>) {
    match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, b"\"failed to encode the response\"".to_vec()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The task's router: metadata, stats and credentials routes, behind the rate limit.
pub fn router(state: Arc<TaskState>) -> Router {
    use Version::{V3, V4};
    let mut router = Router::new();
    for (prefix, version) in [("/v4", V4), ("/v3", V3)] {
        let meta = move |what: What| move |id: String| Call::Metadata { what, version, id };
        router = router
            .route(&format!("{prefix}/"), with_empty_id(meta(What::Container)))
            .route(&format!("{prefix}/{{id}}"), with_id(meta(What::Container)))
            .route(&format!("{prefix}/{{id}}/task"), with_id(meta(What::Task { tags: false })))
            .route(&format!("{prefix}/{{id}}/taskWithTags"), with_id(meta(What::Task { tags: true })))
            .route(&format!("{prefix}/{{id}}/stats"), with_id(meta(What::ContainerStats)))
            .route(&format!("{prefix}/{{id}}/task/stats"), with_id(meta(What::TaskStats)));
    }
    router
        .route("/v2/credentials/", with_empty_id(|_| Call::Credentials { api: CredentialsApi::V2, id: None }))
        .route(
            "/v2/credentials/{*id}",
            with_id(|id| Call::Credentials { api: CredentialsApi::V2, id: Some(id) }),
        )
        .route(
            "/v1/credentials",
            get(|State(state): State<Arc<TaskState>>, RawQuery(query): RawQuery| {
                let id = query.as_deref().and_then(|q| query_param(q, "id"));
                dispatch(state, Call::Credentials { api: CredentialsApi::V1, id })
            }),
        )
        .route(
            "/api/{id}/task-protection/v1/state",
            get(super::protection::get_state).put(super::protection::put_state),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn with_id(make: impl Fn(String) -> Call + Clone + Send + Sync + 'static) -> MethodRouter<Arc<TaskState>> {
    get(move |State(state): State<Arc<TaskState>>, UrlPath(id): UrlPath<String>| dispatch(state, make(id)))
}

/// `{id}` may be empty for the agent (`/v4/` is the container route with id "").
fn with_empty_id(
    make: impl Fn(String) -> Call + Clone + Send + Sync + 'static,
) -> MethodRouter<Arc<TaskState>> {
    get(move |State(state): State<Arc<TaskState>>| dispatch(state, make(String::new())))
}

async fn dispatch(state: Arc<TaskState>, call: Call) -> Response {
    let started = Instant::now();
    let route = call.route();
    let task_id = state.task_id.clone();
    let (status, body) = match tokio::task::spawn_blocking(move || state.answer(&call)).await {
        Ok(answer) => answer,
        Err(e) => {
            warn!(task_id = %task_id, route, error = %e, "metadata handler failed");
            json(StatusCode::INTERNAL_SERVER_ERROR, "failed to get metadata")
        }
    };
    info!(task_id = %task_id, route, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "task metadata request");
    with_type(status, JSON, Body::from(body))
}

/// Rate limit, path cleaning, body size and time budget, in front of every route.
async fn guard(State(state): State<Arc<TaskState>>, request: Request, next: Next) -> Response {
    if !state.limiter.try_take(Instant::now()) {
        debug!(task_id = %state.task_id, status = 429, "task metadata request over the rate limit");
        return with_type(
            StatusCode::TOO_MANY_REQUESTS,
            TEXT,
            Body::from("You have reached maximum request limit."),
        );
    }
    let path = request.uri().path();
    let cleaned = clean_path(path);
    if cleaned != path {
        let location = match request.uri().query() {
            Some(q) => format!("{cleaned}?{q}"),
            None => cleaned,
        };
        let mut response = StatusCode::MOVED_PERMANENTLY.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, v);
        }
        return response;
    }
    let too_large = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES);
    if too_large {
        return with_type(StatusCode::PAYLOAD_TOO_LARGE, TEXT, Body::from("request body too large\n"));
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => with_type(StatusCode::SERVICE_UNAVAILABLE, TEXT, Body::from("request timed out\n")),
    }
}

async fn not_found() -> Response {
    let mut response = with_type(StatusCode::NOT_FOUND, TEXT, Body::from("404 page not found\n"));
    response.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// gorilla/mux's `cleanPath`: Go's `path.Clean`, keeping a trailing slash.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut cleaned = format!("/{}", parts.join("/"));
    if path.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

/// The first `name=` parameter of a query string, decoded as Go's `url.Query()` does.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(h)) => {
                let digit = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
                out.push(digit(h[0]) * 16 + digit(h[1]));
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug)]
struct TokenBucket {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(limit: RateLimit) -> TokenBucket {
        TokenBucket { limit, state: Mutex::new((f64::from(limit.burst), Instant::now())) }
    }

    fn try_take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let refilled = tokens + now.saturating_duration_since(last).as_secs_f64() * self.limit.per_second;
        let available = refilled.min(f64::from(self.limit.burst));
        if available >= 1.0 {
            *state = (available - 1.0, now.max(last));
            true
        } else {
            *state = (available, now.max(last));
            false
        }
    }
}

/// Runs `f` on a short-lived thread that has entered the network namespace at `netns` (a
/// `/run/netns/X` or `/proc/PID/ns/net` path). Sockets it opens stay in that namespace after
/// the thread ends. Blocks the caller briefly.
pub(crate) fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = netns.to_owned();
    let context =
        move |e: io::Error| io::Error::new(e.kind(), format!("network namespace {}: {e}", path.display()));
    let netns = netns.to_owned();
    std::thread::Builder::new()
        .name("ecsd-netns".into())
        .spawn(move || {
            let file = File::open(&netns)?;
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("the thread that entered the namespace panicked"))?
        .map_err(context)
}

/// A non-blocking listener on `addr` inside the network namespace at `netns`, for [`serve`].
pub fn listen_in_netns(netns: &Path, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    in_netns(netns, move || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish (each is bounded by [`REQUEST_TIMEOUT`]) and closes the listener.
pub async fn serve(
    listener: std::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::credentials::Credentials;
    use crate::endpoints::metadata::tests::{DOCKER_ID, ENDPOINT, awsvpc_task, context};

    const CREDS_ID: &str = "cred-1";

    struct FakeCredentials;

    impl CredentialsSource for FakeCredentials {
        fn lookup(&self, id: &str) -> Lookup {
            match id {
                CREDS_ID => Lookup::Found(Credentials {
                    role_arn: "arn:aws:iam::111122223333:role/app".into(),
                    access_key_id: "ASIAEXAMPLE".into(),
                    secret_access_key: "secret".into(),
                    token: "token".into(),
                    expiration: "2024-05-01T16:00:00Z".into(),
                }),
                "cred-pending" => Lookup::Uninitialized,
                _ => Lookup::Unknown,
            }
        }
    }

    struct Tagged(TaskRecord);

    impl TaskSource for Tagged {
        fn task(&self) -> Option<Arc<TaskRecord>> {
            Some(Arc::new(self.0.clone()))
        }
        fn tags(&self) -> Vec<(String, String)> {
            vec![("team".into(), "payments".into())]
        }
    }

    struct Server {
        base: String,
        client: reqwest::Client,
        shutdown: CancellationToken,
        _cgroups: tempfile::TempDir,
    }

    impl Server {
        async fn start(source: Arc<dyn TaskSource>, limit: RateLimit) -> Server {
            let cgroups = tempfile::tempdir().unwrap();
            let task_id = source.task().unwrap().id.clone();
            let stats = StatsSampler::new(cgroups.path(), Path::new("/proc"));
            let state = TaskState::new(&task_id, source, Arc::new(FakeCredentials), context(), stats, limit);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let shutdown = CancellationToken::new();
            tokio::spawn(serve(listener, router(Arc::new(state)), shutdown.clone()));
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            Server { base, client, shutdown, _cgroups: cgroups }
        }

        async fn of(task: TaskRecord) -> Server {
            Server::start(Arc::new(move || Some(Arc::new(task.clone()))), RateLimit::default()).await
        }

        async fn get(&self, path: &str) -> (u16, String, String) {
            let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
            let status = r.status().as_u16();
            let content_type =
                r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            (status, content_type, r.text().await.unwrap())
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn task_v4_json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test]
    async fn metadata_routes_answer_for_the_tasks_endpoint_ids() {
        let s = Server::start(Arc::new(Tagged(awsvpc_task())), RateLimit::default()).await;
        let (status, ct, body) = s.get(&format!("/v4/{ENDPOINT}")).await;
        assert_eq!((status, ct.as_str()), (200, "application/json"));
        assert_eq!(task_v4_json(&body)["DockerId"], DOCKER_ID);
        let (status, _, body) = s.get(&format!("/v4/{ENDPOINT}/task")).await;
        assert_eq!(status, 200);
        let task = task_v4_json(&body);
        assert_eq!(task["FaultInjectionEnabled"], false);
        assert!(task.get("TaskTags").is_none());
        let (_, _, body) = s.get(&format!("/v4/{ENDPOINT}/taskWithTags")).await;
        assert_eq!(task_v4_json(&body)["TaskTags"], serde_json::json!({"team": "payments"}));
        let (status, _, body) = s.get(&format!("/v3/{ENDPOINT}")).await;
        assert_eq!(status, 200);
        assert!(task_v4_json(&body).get("ContainerARN").is_none());
        let (status, _, body) = s.get(&format!("/v3/{ENDPOINT}/taskWithTags")).await;
        assert_eq!(status, 200);
        assert!(task_v4_json(&body).get("LaunchType").is_none());
    }

    #[tokio::test]
    async fn unknown_ids_get_the_agents_errors() {
        let s = Server::of(awsvpc_task()).await;
        let cases = [
            (
                "/v4/nope",
                404,
                "V4 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: nope",
            ),
            (
                "/v4/nope/task",
                404,
                "V4 task metadata handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v4/nope/taskWithTags",
                404,
                "V4 task metadata handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v4/nope/stats",
                404,
                "V4 container stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v4/nope/task/stats",
                404,
                "V4 task stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v3/nope",
                500,
                "V3 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: nope",
            ),
            (
                "/v3/nope/task",
                500,
                "V3 task metadata handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v3/nope/stats",
                400,
                "V3 container stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v3/nope/task/stats",
                400,
                "V3 task stats handler: unable to get task arn from request: unable to get task Arn from v3 endpoint ID: nope",
            ),
            (
                "/v4/",
                404,
                "V4 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: ",
            ),
            // The runtime id is not an endpoint id.
            (
                &format!("/v4/{DOCKER_ID}") as &str,
                404,
                &format!(
                    "V4 container metadata handler: unable to get container ID from request: unable to get docker ID from v3 endpoint ID: {DOCKER_ID}"
                ) as &str,
            ),
        ];
        for (path, status, message) in cases {
            let (got, ct, body) = s.get(path).await;
            assert_eq!((got, ct.as_str()), (status, "application/json"), "{path}");
            assert_eq!(body, serde_json::to_string(message).unwrap(), "{path}");
        }
    }

    #[tokio::test]
    async fn another_tasks_ids_are_unknown() {
        let mut other = awsvpc_task();
        other.id = "other".into();
        other.containers[0].endpoint_id = Some("other-endpoint".into());
        other.credentials_id = Some("cred-other".into());
        let mine = Server::of(awsvpc_task()).await;
        let theirs = Server::of(other).await;
        assert_eq!(theirs.get("/v4/other-endpoint").await.0, 200);
        assert_eq!(mine.get("/v4/other-endpoint").await.0, 404);
        assert_eq!(theirs.get(&format!("/v4/{ENDPOINT}")).await.0, 404);
        let (status, _, body) = theirs.get(&format!("/v2/credentials/{CREDS_ID}")).await;
        assert_eq!(status, 400);
        assert!(body.contains("InvalidIdInRequest"), "{body}");
        // A source that answers with another task than the listener's is not trusted either.
        let task = awsvpc_task();
        let source: Arc<dyn TaskSource> = Arc::new(move || Some(Arc::new(task.clone())));
        let cgroups = tempfile::tempdir().unwrap();
        let stats = StatsSampler::new(cgroups.path(), Path::new("/proc"));
        let state =
            TaskState::new("mine", source, Arc::new(FakeCredentials), context(), stats, RateLimit::default());
        let call = Call::Metadata { what: What::Container, version: Version::V4, id: ENDPOINT.into() };
        assert_eq!(state.answer(&call).0, StatusCode::NOT_FOUND);
        let call = Call::Credentials { api: CredentialsApi::V2, id: Some(CREDS_ID.into()) };
        assert_eq!(state.answer(&call).0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn credentials_answers_and_errors() {
        let s = Server::of(awsvpc_task()).await;
        let (status, ct, body) = s.get(&format!("/v2/credentials/{CREDS_ID}")).await;
        assert_eq!((status, ct.as_str()), (200, "application/json"));
        assert_eq!(
            body,
            r#"{"RoleArn":"arn:aws:iam::111122223333:role/app","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret","Token":"token","Expiration":"2024-05-01T16:00:00Z"}"#
        );
        let (status, _, body) = s.get(&format!("/v1/credentials?id={CREDS_ID}")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"RoleArn""#));
        assert_eq!(
            s.get("/v2/credentials/").await.2,
            r#"{"code":"NoIdInRequest","message":"CredentialsV2Request: No Credential ID in the request","HTTPErrorCode":400}"#
        );
        let (no_id, not_found) = ("No Credential ID in the request", "Credentials not found");
        let cases = [
            ("/v2/credentials/unknown", "InvalidIdInRequest", "V2", not_found),
            ("/v2/credentials/cred-1/x", "InvalidIdInRequest", "V2", not_found),
            ("/v1/credentials", "NoIdInRequest", "V1", no_id),
            ("/v1/credentials?id=", "NoIdInRequest", "V1", no_id),
            ("/v1/credentials?id=nope", "InvalidIdInRequest", "V1", not_found),
        ];
        for (path, code, api, message) in cases {
            let body = format!(
                r#"{{"code":"{code}","message":"Credentials{api}Request: {message}","HTTPErrorCode":400}}"#
            );
            assert_eq!(s.get(path).await, (400, "application/json".to_owned(), body), "{path}");
        }
        let mut pending = awsvpc_task();
        pending.credentials_id = Some("cred-pending".into());
        let s = Server::of(pending).await;
        assert_eq!(
            s.get("/v2/credentials/cred-pending").await,
            (
                503,
                "application/json".to_owned(),
                r#"{"code":"CredentialsUninitialized","message":"CredentialsV2Request: Credentials uninitialized for ID","HTTPErrorCode":503}"#.to_owned()
            )
        );
        let mut roleless = awsvpc_task();
        roleless.credentials_id = None;
        let s = Server::of(roleless).await;
        assert_eq!(s.get(&format!("/v2/credentials/{CREDS_ID}")).await.0, 400);
    }

    #[tokio::test]
    async fn stats_without_a_cgroup() {
        let s = Server::of(awsvpc_task()).await;
        let (status, _, body) = s.get(&format!("/v4/{ENDPOINT}/stats")).await;
        assert_eq!((status, body), (500, format!("\"Unable to get container stats for: {DOCKER_ID}\"")));
        let (status, _, body) = s.get(&format!("/v3/{ENDPOINT}/stats")).await;
        assert_eq!((status, body), (400, format!("\"Unable to get container stats for: {DOCKER_ID}\"")));
        assert_eq!(
            s.get(&format!("/v4/{ENDPOINT}/task/stats")).await.2,
            format!(r#"{{"{DOCKER_ID}":{{}}}}"#)
        );
        assert_eq!(
            s.get(&format!("/v3/{ENDPOINT}/task/stats")).await.2,
            format!(r#"{{"{DOCKER_ID}":null}}"#)
        );
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_unclean_paths() {
        let s = Server::of(awsvpc_task()).await;
        assert_eq!(
            s.get("/v5/x").await,
            (404, "text/plain; charset=utf-8".to_owned(), "404 page not found\n".to_owned())
        );
        assert_eq!(s.get(&format!("/v4/{ENDPOINT}/")).await.0, 404);
        let r = s.client.post(format!("{}/v4/{ENDPOINT}", s.base)).body("x").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        let r = s.client.get(format!("{}//v4//{ENDPOINT}?a=b", s.base)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 301);
        assert_eq!(r.headers()["location"], format!("/v4/{ENDPOINT}?a=b").as_str());
        let r = s
            .client
            .get(format!("{}/v4/{ENDPOINT}", s.base))
            .header("content-length", "5000")
            .body(vec![b'x'; 5000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 413);
    }

    #[tokio::test]
    async fn the_61st_request_of_a_burst_is_refused() {
        let task = awsvpc_task();
        let s = Server::start(
            Arc::new(move || Some(Arc::new(task.clone()))),
            RateLimit { per_second: 0.01, burst: 60 },
        )
        .await;
        for i in 0..60 {
            assert_ne!(s.get("/v4/nope").await.0, 429, "request {i}");
        }
        assert_eq!(
            s.get(&format!("/v4/{ENDPOINT}")).await,
            (
                429,
                "text/plain; charset=utf-8".to_owned(),
                "You have reached maximum request limit.".to_owned()
            )
        );
    }

    #[test]
    fn token_bucket_refills_at_the_steady_rate() {
        let bucket = TokenBucket::new(RateLimit::default());
        let t0 = Instant::now();
        assert!((0..60).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_millis(20)));
        assert!(bucket.try_take(t0 + Duration::from_millis(26)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(27)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!((0..60).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn paths_are_cleaned_like_gorilla() {
        for (path, clean) in [
            ("/v4/x", "/v4/x"),
            ("//v4//x", "/v4/x"),
            ("/v4/./x/", "/v4/x/"),
            ("/v4/../task", "/task"),
            ("/..", "/"),
            ("/", "/"),
            ("/v2/credentials/", "/v2/credentials/"),
        ] {
            assert_eq!(clean_path(path), clean, "{path}");
        }
        assert_eq!(query_param("a=1&id=x%2Fy+z", "id").as_deref(), Some("x/y z"));
        assert_eq!(query_param("id", "id").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "id"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn debug_hides_the_secrets() {
        let Lookup::Found(creds) = FakeCredentials.lookup(CREDS_ID) else { panic!() };
        let text = format!("{:?}", Lookup::Found(creds));
        assert!(!text.contains("secret\"") && !text.contains("\"token\""), "{text}");
    }

    /// Serves a task inside a fresh network namespace and fetches its metadata from inside it.
    #[tokio::test]
    #[ignore = "needs root"]
    async fn serves_inside_a_network_namespace() {
        let name = format!("ecsd-ut-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        struct Cleanup(String);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
            }
        }
        let _cleanup = Cleanup(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "addr", "add", "169.254.170.2/32", "dev", "lo"]);
        let netns = Path::new("/run/netns").join(&name);
        let listener = listen_in_netns(&netns, "169.254.170.2:80".parse().unwrap()).unwrap();
        let task = awsvpc_task();
        let source: Arc<dyn TaskSource> = Arc::new(move || Some(Arc::new(task.clone())));
        let cgroups = tempfile::tempdir().unwrap();
        let state = TaskState::new(
            "158d1c8083dd49d6b527399fd6414f5c",
            source,
            Arc::new(FakeCredentials),
            context(),
            StatsSampler::new(cgroups.path(), Path::new("/proc")),
            RateLimit::default(),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router(Arc::new(state)), shutdown.clone()));
        let fetch = |path: String| {
            let name = name.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("ip")
                    .args(["netns", "exec", &name, "busybox", "wget", "-qO-"])
                    .arg(format!("http://169.254.170.2{path}"))
                    .output()
                    .unwrap()
            })
        };
        let out = fetch(format!("/v4/{ENDPOINT}")).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["DockerId"], DOCKER_ID);
        let out = fetch(format!("/v2/credentials/{CREDS_ID}")).await.unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"AccessKeyId\":\"ASIAEXAMPLE\""));
        // The namespace's own counters: only loopback, which stats leave out.
        let dev = crate::endpoints::stats::read_net_dev_in_netns(&netns).unwrap();
        assert!(dev.contains("lo:"), "{dev}");
        assert!(crate::endpoints::stats::parse_net_dev(&dev).is_empty());
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
