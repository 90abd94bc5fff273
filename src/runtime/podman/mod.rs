//! [`Runtime`] on Podman, through libpod's REST API v4 (Podman 4.0 and later), for hosts that
//! have Podman and no containerd.
//!
//! Per container `ID` the runtime owns one libpod container named `ID` (no pods: every container
//! joins ecsd's task network namespace by path). Its spec comes from [`specgen::to_specgen`];
//! conmon writes its output in k8s-file format to `LOG_DIR/container.log`, which ecsd's log
//! reader understands. Root filesystems are Podman's: [`Runtime::prepare`] only resolves the
//! image's layer directories (from the image's overlay `GraphDriver` data, topmost first) so
//! that the engine can read the image's /etc/passwd without mounting anything.
//!
//! Exits come from one `died` event stream (conmon's cleanup process emits it, with the exit
//! code); after the stream breaks it is reopened with `since=` the last event seen, so exits
//! during a service restart are replayed, and [`Event::Reconnected`] makes the engine compare
//! with [`Runtime::list`]. A poll of the containers started by this runtime backs the stream
//! up in case an event never comes (a cleanup process that failed).

mod client;
mod exec;
#[cfg(test)]
mod golden;
mod load;
pub mod service;
pub mod specgen;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hyper::Method;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::client::{Client, at, escape};
pub use self::service::{PodmanService, ServiceError};
pub use self::specgen::{RlimitPair, SpecGenerator, SpecgenError, SpecgenInput, to_specgen};
use crate::runtime::containerd::import::ImportError;
use crate::runtime::logs::LOG_FILE;
use crate::runtime::registry::{Credentials, RegistrySettings};
use crate::runtime::{
    Backend, ContainerState, Event, ExecProcess, ExecSpec, Image, ImageConfig, ImageSummary, ProcessStatus,
    PullOptions, Rootfs, Runtime, RuntimeError, Stdio,
};

/// The label every ecsd container carries (`spec::LABEL_TASK_ID`): [`Runtime::list`] shows
/// only containers with it, leaving the user's own Podman containers alone.
const LABEL_TASK_ID: &str = "ecsd.task-id";
const EVENTS_BUFFER: usize = 1024;
/// How often the started containers are checked for exits the event stream did not report.
const EXIT_POLL: Duration = Duration::from_secs(2);
/// A longer event line is dropped (libpod's are a few hundred bytes).
const EVENT_LINE_MAX: usize = 1 << 20;
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// A pull may take long; the registry's own timeouts are Podman's.
const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The "id" of calls about the whole store, for their errors.
const STORE: &str = "podman";

/// How to reach the Podman service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanOptions {
    /// libpod's REST socket.
    pub socket: PathBuf,
    /// The capabilities the service gives containers by default (containers.conf
    /// `default_capabilities`): for ecsd's own service [`service::DEFAULT_CAPABILITIES`].
    pub default_capabilities: Vec<String>,
    /// Where cgroups are mounted: the empty cgroups Podman leaves under a container's
    /// parent (conmon's) are removed with the container.
    pub cgroup_root: PathBuf,
    /// Which registries are reached without TLS verification (loopback ones always, as
    /// on containerd); their pulls ask libpod for `tlsVerify=false`.
    pub registry: RegistrySettings,
}

impl PodmanOptions {
    /// Options for the service ecsd supervises at `socket`.
    pub fn new(socket: &Path) -> Self {
        PodmanOptions {
            socket: socket.to_owned(),
            default_capabilities: service::DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            registry: RegistrySettings::default(),
        }
    }
}

/// The runtime on a Podman service.
#[derive(Debug)]
pub struct PodmanRuntime {
    client: Client,
    default_capabilities: Vec<String>,
    cgroup_root: PathBuf,
    registry: RegistrySettings,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

/// What the exit watchers share with the runtime.
#[derive(Debug, Default)]
struct Shared {
    /// Container id → image id, from prepare to create.
    prepared: Mutex<HashMap<String, String>>,
    /// Container id → pid of its process, for exits (libpod's `died` event has no pid),
    /// from start (or a listing) until its exit is reported.
    pids: Mutex<HashMap<String, u32>>,
    /// Exits reported, by container id and pid, so the stream and the poll report each once.
    reported: Mutex<HashSet<(String, u32)>>,
}

impl Drop for PodmanRuntime {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// libpod's image inspect, the parts used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageInspect {
    id: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    repo_digests: Vec<String>,
    #[serde(default)]
    config: Option<ImageInspectConfig>,
    #[serde(default)]
    graph_driver: Option<GraphDriver>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageInspectConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GraphDriver {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// One entry of libpod's container list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedContainer {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    state: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    exited_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerInspect {
    state: InspectState,
    #[serde(default)]
    host_config: Option<InspectHostConfig>,
    /// The container's exec sessions that libpod still keeps (running, or ended and not yet
    /// cleaned up).
    #[serde(rename = "ExecIDs", default)]
    exec_ids: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectHostConfig {
    #[serde(default)]
    cgroup_parent: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    finished_at: String,
}

/// A libpod event, the parts used.
#[derive(Debug, Deserialize)]
struct LibpodEvent {
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor")]
    actor: Option<Actor>,
    #[serde(rename = "timeNano", default)]
    time_nano: i64,
}

#[derive(Debug, Deserialize)]
struct Actor {
    #[serde(rename = "Attributes", default)]
    attributes: BTreeMap<String, String>,
}

impl PodmanRuntime {
    /// A runtime for `options`. Nothing is dialled yet, so this succeeds while the service is
    /// down.
    pub fn new(options: PodmanOptions) -> Self {
        PodmanRuntime {
            client: Client::new(&options.socket),
            default_capabilities: options.default_capabilities,
            cgroup_root: options.cgroup_root,
            registry: options.registry,
            shared: Arc::new(Shared::default()),
            shutdown: CancellationToken::new(),
        }
    }

    pub fn socket(&self) -> &Path {
        self.client.socket()
    }

    /// Podman's version; fails with `Unavailable` while the service does not answer.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(rename = "Version", default)]
            version: String,
        }
        let a = at("read the version", "service", "");
        let answer = self.client.call(Method::GET, "/version", None, a).await?;
        Ok(answer.json::<Version>(a)?.version)
    }

    /// `ecsd image import FILE`: loads the images of an OCI layout or `docker save` tar into
    /// the service's store (see [`load`]); returns their names.
    pub async fn import(&self, file: &Path) -> Result<Vec<String>, ImportError> {
        let f = file.to_owned();
        let plan = tokio::task::spawn_blocking(move || load::plan(&f)).await.map_err(|e| {
            RuntimeError::Internal {
                operation: "load image",
                what: "archive",
                id: file.display().to_string(),
                message: e.to_string(),
            }
        })??;
        let parts = match plan {
            load::Plan::Whole => vec![None],
            load::Plan::PerImage(parts) => parts.into_iter().map(Some).collect(),
        };
        let archive = file.display().to_string();
        let mut imported = Vec::new();
        for part in parts {
            let id = part.as_ref().map_or(archive.as_str(), |p| p.name.as_str()).to_owned();
            let a = at("load image", "archive", &id);
            let length = match &part {
                Some(part) => part.length,
                None => tokio::fs::metadata(file).await.ok().map(|m| m.len()),
            };
            let body = load::stream(file.to_owned(), part);
            let answer = self
                .client
                .upload("/images/load", "application/x-tar", body, length, a, PULL_TIMEOUT)
                .await?;
            #[derive(Deserialize)]
            struct Loaded {
                #[serde(rename = "Names", default)]
                names: Vec<String>,
            }
            let loaded: Loaded = client::check(answer, a)?.json(a)?;
            for name in loaded.names {
                if !imported.contains(&name) {
                    imported.push(name);
                }
            }
        }
        if imported.is_empty() {
            return Err(ImportError::Unnamed { archive });
        }
        info!(archive = %file.display(), images = ?imported, "imported into the Podman store");
        Ok(imported)
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInspect, RuntimeError> {
        let a = at("resolve image", "image", reference);
        let path = format!("/images/{}/json", escape(reference));
        match self.client.call_opt(Method::GET, &path, None, a).await? {
            Some(answer) => answer.json(a),
            None => Err(RuntimeError::ImageNotFound {
                reference: reference.to_owned(),
                runtime: Backend::Podman,
                store: self.client.socket().display().to_string(),
            }),
        }
    }

    async fn inspect_container(&self, id: &str) -> Result<Option<InspectState>, RuntimeError> {
        Ok(self.inspect(id).await?.map(|i| i.state))
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspect>, RuntimeError> {
        let a = at("inspect container", "container", id);
        let path = format!("/containers/{}/json", escape(id));
        match self.client.call_opt(Method::GET, &path, None, a).await? {
            Some(answer) => Ok(Some(answer.json::<ContainerInspect>(a)?)),
            None => Ok(None),
        }
    }

    /// Removes the empty cgroups Podman leaves for a container: its parent (the spec's
    /// `cgroupsPath`, which runc would have removed with the container) and what is left
    /// below it, so that the engine can remove the task's cgroup.
    async fn remove_cgroup_leftovers(&self, parent: &str) {
        let parent = parent.trim_start_matches('/');
        if parent.is_empty() || parent.split('/').any(|p| p == "..") {
            return;
        }
        let mut hierarchies = vec![self.cgroup_root.clone()];
        if let Ok(mut entries) = tokio::fs::read_dir(&self.cgroup_root).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                hierarchies.push(e.path());
            }
        }
        for h in hierarchies {
            let dir = h.join(parent);
            let Ok(mut children) = tokio::fs::read_dir(&dir).await else { continue };
            while let Ok(Some(c)) = children.next_entry().await {
                let name = c.file_name();
                let name = name.to_string_lossy();
                if name == "conmon" || name.starts_with("libpod-") {
                    // A cgroup still in use refuses (EBUSY); another container's conmon may be.
                    let _ = tokio::fs::remove_dir(c.path()).await;
                }
            }
            let _ = tokio::fs::remove_dir(&dir).await;
        }
    }

    /// The runtime's process count limit: the service's own (Podman lowers its nproc limit at
    /// start, and runc cannot raise a container's past it without CAP_SYS_RESOURCE).
    async fn nproc(&self) -> RlimitPair {
        let fallback = own_nproc();
        let Ok(stream) = tokio::net::UnixStream::connect(self.client.socket()).await else { return fallback };
        let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) else { return fallback };
        match tokio::fs::read_to_string(format!("/proc/{pid}/limits")).await {
            Ok(text) => parse_nproc(&text).unwrap_or(fallback),
            Err(_) => fallback,
        }
    }
}

fn own_nproc() -> RlimitPair {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nproc);
    RlimitPair { soft: l.current.unwrap_or(u64::MAX), hard: l.maximum.unwrap_or(u64::MAX) }
}

/// The `Max processes` line of a `/proc/PID/limits`.
fn parse_nproc(limits: &str) -> Option<RlimitPair> {
    let line = limits.lines().find(|l| l.starts_with("Max processes"))?;
    let mut fields = line["Max processes".len()..].split_whitespace();
    let value = |s: Option<&str>| match s? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some(RlimitPair { soft: value(fields.next())?, hard: value(fields.next())? })
}

/// The image as ecsd sees it: the registry digest when libpod knows one for this repository.
fn image_of(reference: &str, inspect: &ImageInspect) -> Image {
    let repo = reference
        .rsplit_once(':')
        .filter(|(r, t)| !t.contains('/') && !r.is_empty())
        .map_or(reference, |(r, _)| r);
    let repo = repo.split('@').next().unwrap_or(repo);
    let digest = inspect
        .repo_digests
        .iter()
        .find_map(|d| d.strip_prefix(repo).and_then(|rest| rest.strip_prefix('@')))
        .map(str::to_owned)
        .unwrap_or_else(|| inspect.digest.clone());
    let config = inspect.config.as_ref();
    let id = inspect.id.strip_prefix("sha256:").unwrap_or(&inspect.id);
    Image {
        name: reference.to_owned(),
        digest,
        config_digest: format!("sha256:{id}"),
        config: ImageConfig {
            env: config.and_then(|c| c.env.clone()).unwrap_or_default(),
            entrypoint: config.and_then(|c| c.entrypoint.clone()),
            cmd: config.and_then(|c| c.cmd.clone()),
            working_dir: config.and_then(|c| c.working_dir.clone()).filter(|w| !w.is_empty()),
            user: config.and_then(|c| c.user.clone()).filter(|u| !u.is_empty()),
            stop_signal: config.and_then(|c| c.stop_signal.clone()).filter(|s| !s.is_empty()),
            labels: config.and_then(|c| c.labels.clone()).unwrap_or_default(),
        },
    }
}

/// The image's layer directories, topmost first, from overlay's `UpperDir` and `LowerDir`.
fn layers_of(inspect: &ImageInspect) -> Vec<PathBuf> {
    let Some(driver) = &inspect.graph_driver else { return Vec::new() };
    let mut layers: Vec<PathBuf> = driver.data.get("UpperDir").map(PathBuf::from).into_iter().collect();
    if let Some(lower) = driver.data.get("LowerDir") {
        layers.extend(lower.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
    }
    layers
}

/// RFC 3339 (libpod's `FinishedAt`) to epoch seconds; 0 for the zero time or anything else.
fn epoch_of(rfc3339: &str) -> f64 {
    parse_rfc3339(rfc3339).unwrap_or(0.0)
}

fn parse_rfc3339(s: &str) -> Option<f64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset) = match rest.find(['Z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, "Z"),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let offset_secs = match offset {
        "Z" | "" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    if y < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    let frac: f64 = if frac.is_empty() { 0.0 } else { format!("0.{frac}").parse().unwrap_or(0.0) };
    Some(secs as f64 + frac)
}

fn status_of(state: &str, pid: i64, exit_code: i32, exited_at: f64) -> ProcessStatus {
    match state {
        "created" | "configured" | "initialized" => ProcessStatus::Created,
        "running" | "paused" | "stopping" => ProcessStatus::Running { pid: u32::try_from(pid).unwrap_or(0) },
        "exited" | "stopped" => ProcessStatus::Exited { code: exit_code, at: exited_at },
        _ => ProcessStatus::Missing,
    }
}

/// libpod's `X-Registry-Auth`: one Docker auth config as base64url JSON. A bare registry
/// token has no field there (`None`).
fn registry_auth_header(c: &Credentials) -> Option<String> {
    use base64::Engine as _;
    let json = match c {
        Credentials::Basic { username, password } => {
            serde_json::json!({"username": username, "password": password})
        }
        Credentials::IdentityToken(token) => serde_json::json!({"identitytoken": token}),
        Credentials::Bearer(_) => return None,
    };
    Some(base64::engine::general_purpose::URL_SAFE.encode(json.to_string()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Runtime for PodmanRuntime {
    async fn image(&self, reference: &str) -> Result<Image, RuntimeError> {
        let inspect = self.inspect_image(reference).await?;
        Ok(image_of(reference, &inspect))
    }

    async fn pull(&self, reference: &str, options: PullOptions) -> Result<Image, RuntimeError> {
        let mut query = format!("/images/pull?reference={}&quiet=true&policy=always", escape(reference));
        if crate::runtime::reference::parse_normalized(reference)
            .is_ok_and(|r| self.registry.is_insecure(&r.domain))
        {
            query.push_str("&tlsVerify=false");
        }
        let auth = match &options.credentials {
            Some(c) => registry_auth_header(c).or_else(|| {
                warn!(image = reference, "libpod takes no registry token: pulling without credentials");
                None
            }),
            None => None,
        };
        if let Some(platform) = &options.platform {
            query.push_str(&format!("&os=linux&arch={}", escape(&platform.architecture)));
        }
        let a = at("pull image", "image", reference);
        let headers: Vec<(&'static str, &str)> =
            auth.iter().map(|v| ("x-registry-auth", v.as_str())).collect();
        let answer =
            self.client.call_with_headers(Method::POST, &query, None, &headers, a, PULL_TIMEOUT).await?;
        let answer = client::check(answer, a)?;
        // A failed pull still answers 200, with an `error` line in the stream.
        for line in answer.body.split(|b| *b == b'\n') {
            #[derive(Deserialize)]
            struct Line {
                error: Option<String>,
            }
            if let Ok(Line { error: Some(message) }) = serde_json::from_slice::<Line>(line) {
                return Err(RuntimeError::Internal {
                    operation: "pull image",
                    what: "image",
                    id: reference.to_owned(),
                    message,
                });
            }
        }
        self.image(reference).await
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, RuntimeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Summary {
            #[serde(default)]
            digest: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            #[serde(default)]
            size: u64,
            #[serde(default)]
            created: f64,
        }
        let a = at("list images", "store", STORE);
        let list: Vec<Summary> = self.client.call(Method::GET, "/images/json", None, a).await?.json(a)?;
        Ok(list
            .into_iter()
            .flat_map(|s| {
                s.repo_tags.clone().unwrap_or_default().into_iter().map(move |name| ImageSummary {
                    name,
                    digest: s.digest.clone(),
                    media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                    size: s.size,
                    created_at: s.created,
                    pulled_at: None,
                    last_used_at: None,
                })
            })
            .collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError> {
        let a = at("remove image", "image", reference);
        let answer = self
            .client
            .call_with(
                Method::DELETE,
                &format!("/images/{}", escape(reference)),
                None,
                a,
                client::CALL_TIMEOUT,
            )
            .await?;
        match answer.status {
            s if s.is_success() || s == hyper::StatusCode::NOT_FOUND => Ok(()),
            hyper::StatusCode::CONFLICT => {
                let filters = escape(&serde_json::json!({"ancestor": [reference]}).to_string());
                let a = at("list containers", "image", reference);
                let containers = match self
                    .client
                    .call(Method::GET, &format!("/containers/json?all=true&filters={filters}"), None, a)
                    .await
                    .and_then(|answer| answer.json::<Vec<ListedContainer>>(a))
                {
                    Ok(listed) => listed.into_iter().filter_map(|c| c.names.into_iter().next()).collect(),
                    Err(e) => vec![format!("(which, libpod did not say: {e})")],
                };
                Err(RuntimeError::ImageInUse { reference: reference.to_owned(), containers })
            }
            _ => client::check(answer, a).map(|_| ()),
        }
    }

    async fn image_used(&self, _reference: &str, _at: f64) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn prepare(&self, id: &str, image: &Image) -> Result<Rootfs, RuntimeError> {
        let inspect = self.inspect_image(&image.name).await?;
        lock(&self.shared.prepared).insert(id.to_owned(), inspect.id.clone());
        Ok(Rootfs { layers: layers_of(&inspect) })
    }

    async fn create(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        labels: &BTreeMap<String, String>,
        stdio: &Stdio,
    ) -> Result<(), RuntimeError> {
        let image = lock(&self.shared.prepared).get(id).cloned().ok_or_else(|| RuntimeError::NotFound {
            what: "prepared root filesystem of container",
            id: id.to_owned(),
        })?;
        tokio::fs::create_dir_all(&stdio.log_dir)
            .await
            .map_err(|e| RuntimeError::io("create the log directory", &stdio.log_dir, e))?;
        let caps: Vec<&str> = self.default_capabilities.iter().map(String::as_str).collect();
        let log_path = stdio.log_dir.join(LOG_FILE);
        let input = SpecgenInput {
            name: id,
            image: &image,
            labels,
            log_path: &log_path,
            nproc: self.nproc().await,
            default_capabilities: &caps,
        };
        let generator = to_specgen(spec, &input).map_err(|e| RuntimeError::Invalid {
            runtime: Backend::Podman,
            operation: "create container",
            what: "container",
            id: id.to_owned(),
            message: e.to_string(),
        })?;
        let body = serde_json::to_value(&generator).map_err(|e| RuntimeError::Encode {
            what: "container spec",
            id: id.to_owned(),
            source: Arc::new(e),
        })?;
        let a = at("create container", "container", id);
        let answer = self
            .client
            .call_with(Method::POST, "/containers/create", Some(&body), a, client::CALL_TIMEOUT)
            .await?;
        if !answer.status.is_success() {
            // libpod answers 500 for a name in use too: look before classifying.
            if self.inspect_container(id).await?.is_some() {
                return Err(RuntimeError::AlreadyExists { what: "container", id: id.to_owned() });
            }
            return client::check(answer, a).map(|_| ());
        }
        lock(&self.shared.prepared).remove(id);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let a = at("start task", "task", id);
        self.client.call(Method::POST, &format!("/containers/{}/start", escape(id)), None, a).await?;
        let state = self
            .inspect_container(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound { what: "container", id: id.to_owned() })?;
        let pid = u32::try_from(state.pid).unwrap_or(0);
        lock(&self.shared.pids).insert(id.to_owned(), pid);
        Ok(pid)
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        if signal <= 0 || signal > 64 {
            return Err(RuntimeError::InvalidSignal { signal });
        }
        let a = at("signal task", "task", id);
        let path = format!("/containers/{}/kill?signal={signal}", escape(id));
        let answer = self.client.call_with(Method::POST, &path, None, a, client::CALL_TIMEOUT).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        // A container whose process is not running (libpod answers 409 or 500 for that) is
        // as containerd's missing task: the engine then collects the exit.
        let running = match answer.status {
            hyper::StatusCode::NOT_FOUND => false,
            _ => matches!(
                self.inspect_container(id).await?.map(|s| status_of(&s.status, s.pid, 0, 0.0)),
                Some(ProcessStatus::Running { .. })
            ),
        };
        if !running {
            return Err(RuntimeError::NotFound { what: "task", id: id.to_owned() });
        }
        client::check(answer, a).map(|_| ())
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecProcess, RuntimeError> {
        exec::start(&self.client, container_id, spec).await
    }

    /// conmon keeps an exec'd process running after the ecsd that started it died: the
    /// container's sessions that still run are killed here.
    async fn reap_execs(&self, container_id: &str) -> Result<Vec<String>, RuntimeError> {
        let Some(inspect) = self.inspect(container_id).await? else { return Ok(vec![]) };
        exec::reap_leftovers(&self.client, inspect.exec_ids.unwrap_or_default()).await
    }

    async fn remove(&self, id: &str) -> Result<Option<(i32, f64)>, RuntimeError> {
        let Some(inspect) = self.inspect(id).await? else {
            lock(&self.shared.prepared).remove(id);
            return Ok(None);
        };
        let state = inspect.state;
        let parent = inspect.host_config.map(|h| h.cgroup_parent).unwrap_or_default();
        let exit = match status_of(&state.status, state.pid, state.exit_code, epoch_of(&state.finished_at)) {
            ProcessStatus::Running { .. } => return Err(RuntimeError::StillRunning { id: id.to_owned() }),
            ProcessStatus::Exited { code, at } => Some((code, at)),
            _ => None,
        };
        let a = at("remove container", "container", id);
        self.client
            .call_opt(Method::DELETE, &format!("/containers/{}?force=true&t=0", escape(id)), None, a)
            .await?;
        lock(&self.shared.pids).remove(id);
        self.remove_cgroup_leftovers(&parent).await;
        Ok(exit)
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let filters = escape(&serde_json::json!({"label": [LABEL_TASK_ID]}).to_string());
        let a = at("list containers", "store", STORE);
        let listed: Vec<ListedContainer> = self
            .client
            .call(Method::GET, &format!("/containers/json?all=true&filters={filters}"), None, a)
            .await?
            .json(a)?;
        let mut pids = lock(&self.shared.pids);
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let id = c.names.first()?.clone();
                let status = status_of(&c.state, c.pid, c.exit_code, c.exited_at as f64);
                if let ProcessStatus::Running { pid } = status {
                    pids.entry(id.clone()).or_insert(pid);
                }
                Some(ContainerState { id, labels: c.labels.unwrap_or_default(), status })
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let a = at("ping", "service", "");
        self.client.call(Method::GET, "/_ping", None, a).await.map(|_| ())
    }

    fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(EVENTS_BUFFER);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let watcher = Watcher { client: self.client.clone(), shared: Arc::clone(&self.shared), tx };
                handle.spawn(watcher.clone().stream(self.shutdown.clone()));
                handle.spawn(watcher.poll(self.shutdown.clone()));
            }
            Err(e) => warn!(error = %e, "no async runtime: the exit stream stays empty"),
        }
        rx
    }
}

/// Turns libpod's `died` events (and, as a fallback, listings) into [`Event::Exit`].
#[derive(Debug, Clone)]
struct Watcher {
    client: Client,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Event>,
}

impl Watcher {
    /// Reports one exit, once per container id and pid.
    async fn exit(&self, id: &str, code: i32, at: f64) {
        let Some(pid) = lock(&self.shared.pids).get(id).copied() else {
            debug!(container = id, code, "exit of a container this runtime did not start or list");
            return;
        };
        if !lock(&self.shared.reported).insert((id.to_owned(), pid)) {
            return;
        }
        lock(&self.shared.pids).remove(id);
        let _ = self.tx.send(Event::Exit { id: id.to_owned(), pid, code, at }).await;
    }

    /// Follows the `died` stream; reopens it with `since=` after a break and says so.
    async fn stream(self, shutdown: CancellationToken) {
        let filters = escape(&serde_json::json!({"type": ["container"], "event": ["died"]}).to_string());
        let mut since: Option<i64> = None;
        let mut broken = false;
        loop {
            let mut path = format!("/events?stream=true&filters={filters}");
            if let Some(ns) = since {
                // libpod takes a Unix time with nanoseconds as `seconds.nanos`.
                path.push_str(&format!("&since={}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000));
            }
            let opened = tokio::select! {
                r = self.client.send(Method::GET, &path, None, &[]) => r,
                () = shutdown.cancelled() => return,
            };
            match opened {
                Ok(resp) if resp.status().is_success() => {
                    // Live now: exits before this moment are the engine's to look up (as
                    // after containerd's subscription).
                    if broken {
                        info!("Podman event stream reopened; replaying exits since the break");
                    }
                    let _ = self.tx.send(Event::Reconnected).await;
                    broken = false;
                    let mut body = resp.into_body();
                    let mut buf: Vec<u8> = Vec::new();
                    loop {
                        let frame = tokio::select! {
                            f = http_body_util::BodyExt::frame(&mut body) => f,
                            () = shutdown.cancelled() => return,
                        };
                        let Some(Ok(frame)) = frame else { break };
                        let Ok(data) = frame.into_data() else { continue };
                        buf.extend_from_slice(&data);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            self.event(&line, &mut since).await;
                        }
                        if buf.len() > EVENT_LINE_MAX {
                            buf.clear();
                        }
                    }
                }
                Ok(resp) => debug!(status = %resp.status(), "Podman refused the event stream"),
                Err(e) => debug!(error = %e, "Podman event stream unavailable"),
            }
            if !broken {
                warn!("Podman event stream broke; reconnecting");
            }
            broken = true;
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Handles one line of the event stream, moving `since` past it.
    async fn event(&self, line: &[u8], since: &mut Option<i64>) {
        let Ok(event) = serde_json::from_slice::<LibpodEvent>(line) else { return };
        if event.time_nano > 0 {
            *since = Some(since.map_or(event.time_nano, |s| s.max(event.time_nano)));
        }
        if event.action != "died" {
            return;
        }
        let Some(actor) = event.actor else { return };
        let Some(name) = actor.attributes.get("name") else { return };
        let code = actor.attributes.get("containerExitCode").and_then(|c| c.parse().ok()).unwrap_or(-1);
        self.exit(name, code, event.time_nano as f64 / 1e9).await;
    }

    /// Checks the containers started here for exits the stream did not bring.
    async fn poll(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(EXIT_POLL) => {}
                () = shutdown.cancelled() => return,
            }
            let ids: Vec<String> = lock(&self.shared.pids).keys().cloned().collect();
            for id in ids {
                let a = at("inspect container", "container", &id);
                let path = format!("/containers/{}/json", escape(&id));
                let Ok(Some(answer)) = self.client.call_opt(Method::GET, &path, None, a).await else {
                    continue;
                };
                let Ok(inspect) = answer.json::<ContainerInspect>(a) else { continue };
                let s = inspect.state;
                if let ProcessStatus::Exited { code, at } =
                    status_of(&s.status, s.pid, s.exit_code, epoch_of(&s.finished_at))
                {
                    // Give the stream its chance first: report only a while after the exit.
                    if crate::runtime::podman::now() - at > EXIT_POLL.as_secs_f64() {
                        self.exit(&id, code, at).await;
                    }
                }
            }
        }
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_comes_from_the_limits_file() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             32768                32768                processes \n\
                    Max open files            20000                20000                files     \n";
        assert_eq!(parse_nproc(text), Some(RlimitPair { soft: 32768, hard: 32768 }));
        let unlimited = "Max processes             unlimited            unlimited            processes \n";
        assert_eq!(parse_nproc(unlimited), Some(RlimitPair { soft: u64::MAX, hard: u64::MAX }));
        assert_eq!(parse_nproc("Max open files 1 2 files\n"), None);
    }

    #[test]
    fn rfc3339_with_offsets_and_zero_time() {
        assert_eq!(parse_rfc3339("2026-12-06T04:10:10.5Z"), Some(1_796_530_210.5));
        assert_eq!(parse_rfc3339("2026-12-06T05:10:10+01:00"), Some(1_796_530_210.0));
        assert_eq!(epoch_of("0001-01-01T00:00:00Z"), 0.0);
        assert_eq!(epoch_of("garbage"), 0.0);
    }

    #[test]
    fn registry_credentials_become_libpods_x_registry_auth() {
        use base64::Engine as _;
        let decode = |h: String| -> serde_json::Value {
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE.decode(h).unwrap()).unwrap()
        };
        // A password whose base64 differs between the standard and the URL alphabet.
        let basic = registry_auth_header(&Credentials::basic("AWS", "a?b>c~")).unwrap();
        assert!(!basic.contains('+') && !basic.contains('/'), "{basic}");
        assert_eq!(decode(basic), serde_json::json!({"username": "AWS", "password": "a?b>c~"}));
        let token = registry_auth_header(&Credentials::IdentityToken("rt".into())).unwrap();
        assert_eq!(decode(token), serde_json::json!({"identitytoken": "rt"}));
        assert_eq!(registry_auth_header(&Credentials::Bearer("t".into())), None);
    }

    #[test]
    fn registry_digest_wins_over_the_local_one() {
        let inspect: ImageInspect = serde_json::from_value(serde_json::json!({
            "Id": "9d1329ed96db902e72078aa4bb32179052af0b4e10da14eb798fa1131a010e7e",
            "Digest": "sha256:b778",
            "RepoDigests": ["docker.io/library/other@sha256:aaaa", "docker.io/library/busybox@sha256:67ba"],
            "Config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "StopSignal": "SIGUSR1"},
            "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": "/s/3/diff", "LowerDir": "/s/2/diff:/s/1/diff"}}
        }))
        .unwrap();
        let image = image_of("docker.io/library/busybox:latest", &inspect);
        assert_eq!(image.digest, "sha256:67ba");
        assert_eq!(
            image.config_digest,
            "sha256:9d1329ed96db902e72078aa4bb32179052af0b4e10da14eb798fa1131a010e7e"
        );
        assert_eq!(image.config.stop_signal.as_deref(), Some("SIGUSR1"));
        assert_eq!(image.config.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(
            layers_of(&inspect),
            vec![PathBuf::from("/s/3/diff"), PathBuf::from("/s/2/diff"), PathBuf::from("/s/1/diff")]
        );
        // A registry:port reference: the port is not a tag.
        let image = image_of("127.0.0.1:5000/app", &ImageInspect { repo_digests: vec![], ..inspect });
        assert_eq!(image.digest, "sha256:b778");
    }

    #[test]
    fn libpod_states_map_to_process_states() {
        assert_eq!(status_of("created", 0, 0, 0.0), ProcessStatus::Created);
        assert_eq!(status_of("running", 42, 0, 0.0), ProcessStatus::Running { pid: 42 });
        assert_eq!(status_of("exited", 0, 3, 5.0), ProcessStatus::Exited { code: 3, at: 5.0 });
        assert_eq!(status_of("removing", 0, 0, 0.0), ProcessStatus::Missing);
    }
}
