//! [`Runtime`] on containerd's gRPC API (containerd 1.6 and later).
//!
//! One lazily connected tonic channel per runtime: it is created without containerd being up,
//! and reconnects by itself when containerd comes back, so a lost containerd turns calls into
//! [`RuntimeError::Unavailable`] and nothing else. Every namespaced call carries the
//! `containerd-namespace` header; calls that create GC-collectable objects carry a
//! `containerd-lease` header so containerd's GC cannot remove them before something references
//! them.
//!
//! Per container `ID` the runtime owns: the snapshot `ID` (overlayfs, parent = the image's chain
//! id), the lease `ecsd-ID` (held from prepare until the container references the snapshot,
//! and deleted by remove), the container `ID` (runtime `io.containerd.runc.v2`) and its task.
//! Container output goes to a `binary://` logger (see [`super::logs`]) that containerd's shim
//! runs, so logs survive an ecsd restart.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::v1::{Process as TaskProcess, Status as TaskStatus};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

use super::image;
use super::logs;
use super::{ContainerState, Event, ExecResult, Image, ProcessStatus, Rootfs, Runtime, RuntimeError, Stdio};

/// The snapshotter every container and unpacked image uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The containerd runtime (shim) of every container.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
const GC_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
const EXIT_TOPIC: &str = "/tasks/exit";
/// Published by the runtime itself to learn when its event subscription is live (see
/// [`watch_events`]).
const PING_TOPIC: &str = "/ecsd/ping";

/// How long a prepared snapshot stays protected from GC without a container referencing it.
const CONTAINER_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper bound of an ordinary unary call; containerd answers in milliseconds when healthy.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an exec that timed out may take to die after SIGKILL.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(5);
const EXEC_OUTPUT_MAX: usize = 1024;
const EVENTS_BUFFER: usize = 1024;
const SIGKILL: u32 = 9;

/// How to reach containerd and where the runtime keeps its own files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdOptions {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// The containerd namespace of every object the runtime creates.
    pub namespace: String,
    /// The program containerd's shim starts (as `PROGRAM log-driver DIR`) to capture a
    /// container's output: normally the ecsd binary itself.
    pub log_driver: PathBuf,
    /// Scratch directory for the output files of exec'd processes (health checks).
    pub exec_dir: PathBuf,
}

impl ContainerdOptions {
    /// Options with the running executable as log driver and exec output under `run_dir/exec`.
    pub fn new(address: &Path, namespace: &str, run_dir: &Path) -> Result<Self, RuntimeError> {
        let exe = std::env::current_exe().map_err(|e| RuntimeError::Failed {
            operation: "find the ecsd executable",
            message: format!("{e}; the log driver needs it"),
        })?;
        // After an upgrade in place the running binary's path reads "<path> (deleted)"; the
        // shim must start the binary now at that path.
        let log_driver = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(path) => PathBuf::from(path),
            None => exe,
        };
        Ok(ContainerdOptions {
            address: address.to_owned(),
            namespace: namespace.to_owned(),
            log_driver,
            exec_dir: run_dir.join("exec"),
        })
    }
}

/// What a gRPC call was doing, for classifying its failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    pub operation: &'static str,
    pub what: &'static str,
    pub id: &'a str,
}

pub(crate) fn at<'a>(operation: &'static str, what: &'static str, id: &'a str) -> At<'a> {
    At { operation, what, id }
}

/// How a failed call is reported, decided by the gRPC code alone (never by message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusKind {
    Unavailable,
    NotFound,
    AlreadyExists,
    DeadlineExceeded,
    Failed,
}

pub(crate) fn classify(status: &Status) -> StatusKind {
    match status.code() {
        Code::Unavailable => StatusKind::Unavailable,
        // A status with a source was made by the client's transport (the connection broke
        // mid-call), not sent by containerd.
        Code::Unknown | Code::Cancelled if std::error::Error::source(status).is_some() => {
            StatusKind::Unavailable
        }
        Code::NotFound => StatusKind::NotFound,
        Code::AlreadyExists => StatusKind::AlreadyExists,
        Code::DeadlineExceeded => StatusKind::DeadlineExceeded,
        _ => StatusKind::Failed,
    }
}

/// A namespaced connection to containerd, shared by the runtime, the importer and the unpacker.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    channel: Channel,
    namespace: String,
    namespace_header: MetadataValue<Ascii>,
    address: String,
}

impl Conn {
    /// A lazily connected channel: nothing is dialled until the first call. Must be called
    /// inside a tokio runtime.
    pub(crate) fn new(address: &Path, namespace: &str) -> Result<Conn, RuntimeError> {
        let display = address.display().to_string();
        let invalid = |message: String| RuntimeError::Failed { operation: "connect to containerd", message };
        let namespace_header = MetadataValue::try_from(namespace)
            .map_err(|_| invalid(format!("namespace {namespace:?} is not a valid containerd namespace")))?;
        let Some(path) = address.to_str() else {
            return Err(invalid(format!("socket path {display} is not UTF-8")));
        };
        let endpoint = Endpoint::from_shared(format!("unix://{path}"))
            .map_err(|e| invalid(format!("socket path {display}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(Conn {
            channel: endpoint.connect_lazy(),
            namespace: namespace.to_owned(),
            namespace_header,
            address: display,
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `msg` as a request in the runtime's namespace.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(NAMESPACE_HEADER, self.namespace_header.clone());
        req
    }

    /// `msg` as a request in the runtime's namespace under lease `lease`.
    pub(crate) fn leased<T>(&self, msg: T, lease: &str) -> Result<Request<T>, RuntimeError> {
        let value = MetadataValue::try_from(lease).map_err(|_| RuntimeError::Failed {
            operation: "use a lease",
            message: format!("lease id {lease:?} is not a valid header value"),
        })?;
        let mut req = self.request(msg);
        req.metadata_mut().insert(LEASE_HEADER, value);
        Ok(req)
    }

    pub(crate) fn error(&self, status: Status, at: At<'_>) -> RuntimeError {
        match classify(&status) {
            StatusKind::Unavailable => RuntimeError::Unavailable {
                address: self.address.clone(),
                message: status.message().to_owned(),
            },
            StatusKind::NotFound => RuntimeError::NotFound { what: at.what, id: at.id.to_owned() },
            StatusKind::DeadlineExceeded => {
                RuntimeError::Timeout { operation: at.operation, after: CALL_TIMEOUT }
            }
            StatusKind::AlreadyExists | StatusKind::Failed => RuntimeError::Failed {
                operation: at.operation,
                message: format!("{} {}: {}", at.what, at.id, status.message()),
            },
        }
    }

    /// Awaits a unary call with a deadline; the raw status on failure, for callers that treat
    /// some codes (NotFound, AlreadyExists) as success.
    pub(crate) async fn raw<T>(
        &self,
        at: At<'_>,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, RuntimeError> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(resp)) => Ok(Ok(resp.into_inner())),
            Ok(Err(status)) => Ok(Err(status)),
            Err(_) => Err(RuntimeError::Timeout { operation: at.operation, after: timeout }),
        }
    }

    /// Awaits a unary call with the default deadline and classifies its failure.
    pub(crate) async fn call<T>(
        &self,
        at: At<'_>,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, RuntimeError> {
        self.raw(at, CALL_TIMEOUT, call).await?.map_err(|s| self.error(s, at))
    }

    /// Like [`Conn::call`], with NotFound as `None`.
    pub(crate) async fn call_opt<T>(
        &self,
        at: At<'_>,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Option<T>, RuntimeError> {
        match self.raw(at, CALL_TIMEOUT, call).await? {
            Ok(v) => Ok(Some(v)),
            Err(s) if classify(&s) == StatusKind::NotFound => Ok(None),
            Err(s) => Err(self.error(s, at)),
        }
    }

    pub(crate) fn containers(&self) -> api::containers_client::ContainersClient<Channel> {
        api::containers_client::ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> api::tasks_client::TasksClient<Channel> {
        api::tasks_client::TasksClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> api::leases_client::LeasesClient<Channel> {
        api::leases_client::LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> api::images_client::ImagesClient<Channel> {
        api::images_client::ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn diff(&self) -> api::diff_client::DiffClient<Channel> {
        api::diff_client::DiffClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> api::events_client::EventsClient<Channel> {
        api::events_client::EventsClient::new(self.channel.clone())
    }
    pub(crate) fn version(&self) -> api::version_client::VersionClient<Channel> {
        api::version_client::VersionClient::new(self.channel.clone())
    }
    pub(crate) fn namespaces(&self) -> api::namespaces_client::NamespacesClient<Channel> {
        api::namespaces_client::NamespacesClient::new(self.channel.clone())
    }

    /// containerd's version string; the cheapest way to ask whether it answers.
    pub(crate) async fn server_version(&self) -> Result<String, RuntimeError> {
        let at = at("ask containerd its version", "containerd", &self.address);
        let resp = self.call(at, self.version().version(Request::new(()))).await?;
        Ok(resp.version)
    }

    /// Creates lease `id` that expires after `ttl`; an existing lease is reused.
    pub(crate) async fn create_lease(&self, id: &str, ttl: Duration) -> Result<(), RuntimeError> {
        let expire = logs::format_rfc3339(SystemTime::now() + ttl, false);
        let req = api::CreateRequest {
            id: id.to_owned(),
            labels: HashMap::from([(GC_EXPIRE_LABEL.into(), expire)]),
        };
        let at = at("create lease", "lease", id);
        match self.raw(at, CALL_TIMEOUT, self.leases().create(self.request(req))).await? {
            Ok(_) => Ok(()),
            Err(s) if classify(&s) == StatusKind::AlreadyExists => Ok(()),
            Err(s) => Err(self.error(s, at)),
        }
    }

    /// Deletes lease `id`; a missing lease is not an error.
    pub(crate) async fn delete_lease(&self, id: &str) -> Result<(), RuntimeError> {
        let req = api::DeleteRequest { id: id.to_owned(), sync: false };
        self.call_opt(at("delete lease", "lease", id), self.leases().delete(self.request(req)))
            .await
            .map(|_| ())
    }
}

/// The lease that protects container `id`'s snapshot until the container references it.
fn lease_id(id: &str) -> String {
    format!("ecsd-{id}")
}

/// The runtime on containerd.
#[derive(Debug)]
pub struct ContainerdRuntime {
    conn: Conn,
    log_driver: PathBuf,
    exec_dir: PathBuf,
    /// Image config digest → chain id of its top layer (derived data, recomputed when absent).
    chain_ids: Mutex<HashMap<String, String>>,
    /// Container id → image name, from prepare to create (only shown by `ctr containers ls`).
    image_names: Mutex<HashMap<String, String>>,
    shutdown: CancellationToken,
}

impl Drop for ContainerdRuntime {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl ContainerdRuntime {
    /// A runtime for `options`. Nothing is dialled yet, so this succeeds while containerd is
    /// down; must be called inside a tokio runtime.
    pub fn new(options: ContainerdOptions) -> Result<Self, RuntimeError> {
        Ok(ContainerdRuntime {
            conn: Conn::new(&options.address, &options.namespace)?,
            log_driver: options.log_driver,
            exec_dir: options.exec_dir,
            chain_ids: Mutex::new(HashMap::new()),
            image_names: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    /// containerd's version; fails with `Unavailable` while it does not answer.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        self.conn.server_version().await
    }

    pub fn namespace(&self) -> &str {
        self.conn.namespace()
    }

    async fn chain_id(&self, image: &Image) -> Result<String, RuntimeError> {
        if let Some(c) = lock(&self.chain_ids).get(&image.config_digest) {
            return Ok(c.clone());
        }
        let diff_ids = image::diff_ids(&self.conn, &image.name, &image.config_digest).await?;
        let chain = image::chain_ids(&diff_ids).pop().unwrap_or_default();
        lock(&self.chain_ids).insert(image.config_digest.clone(), chain.clone());
        Ok(chain)
    }

    /// Prepares snapshot `id` on `parent`; the raw status on failure (see [`Conn::raw`]).
    async fn prepare_snapshot(
        &self,
        id: &str,
        parent: &str,
        lease: &str,
    ) -> Result<Result<Vec<PathBuf>, Status>, RuntimeError> {
        let req = snap::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_owned(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        };
        let req = self.conn.leased(req, lease)?;
        let prepare_at = at("prepare the root filesystem", "snapshot", id);
        let resp = self.conn.raw(prepare_at, CALL_TIMEOUT, self.conn.snapshots().prepare(req)).await?;
        Ok(resp.map(|r| layers_from_mounts(&r.mounts)))
    }

    /// Prepares the snapshot, unpacking the image again if its layers went away (removed,
    /// or collected) since it was resolved.
    async fn prepare_with_layers(
        &self,
        id: &str,
        image: &Image,
        chain: &str,
        lease: &str,
    ) -> Result<Result<Vec<PathBuf>, Status>, RuntimeError> {
        let result = self.prepare_snapshot(id, chain, lease).await?;
        match &result {
            Err(s) if classify(s) == StatusKind::NotFound => {
                info!(container = id, image = %image.name, "image layers missing; unpacking again");
                let resolved = image::resolve(&self.conn, &image.name).await?;
                image::ensure_unpacked(&self.conn, &resolved).await?;
                self.prepare_snapshot(id, chain, lease).await
            }
            _ => Ok(result),
        }
    }

    /// Deletes the container after a failed task create, so that create can be retried.
    async fn roll_back_container(&self, id: &str) {
        let req = self.conn.request(api::DeleteContainerRequest { id: id.to_owned() });
        if let Err(e) = self
            .conn
            .call_opt(at("delete container", "container", id), self.conn.containers().delete(req))
            .await
        {
            warn!(container = id, error = %e, "cannot roll back the container after a failed task create");
        }
    }

    async fn exec_inner(
        &self,
        id: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        output: &Path,
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let mut process = process.clone();
        process.set_terminal(Some(false));
        let spec = serde_json::to_vec(&process).map_err(|e| RuntimeError::Failed {
            operation: "exec",
            message: format!("process of container {id} cannot be encoded: {e}"),
        })?;
        // Both streams append to one file, but under two spellings of its path: when stdout
        // and stderr are the same string, containerd 1.6's shim shares one writer between
        // them and closes it when the first stream ends, losing the other's output.
        let stdout = output.to_string_lossy().into_owned();
        let stderr = match (output.parent(), output.file_name()) {
            (Some(dir), Some(name)) => format!("{}/./{}", dir.display(), name.to_string_lossy()),
            _ => stdout.clone(),
        };
        let req = api::ExecProcessRequest {
            container_id: id.to_owned(),
            stdin: String::new(),
            stdout,
            stderr,
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: spec }),
            exec_id: exec_id.to_owned(),
        };
        let task_at = at("exec", "task", id);
        self.conn.call(task_at, self.conn.tasks().exec(self.conn.request(req))).await?;

        let result = self.run_exec(id, exec_id, timeout).await;
        let req = api::DeleteProcessRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        if let Err(e) =
            self.conn.call_opt(task_at, self.conn.tasks().delete_process(self.conn.request(req))).await
        {
            warn!(container = id, exec_id, error = %e, "cannot delete the exec'd process");
        }
        let exit_code = result?;
        // The shim has finished copying the output once the process is deleted.
        let data = tokio::fs::read(output).await.unwrap_or_default();
        Ok(ExecResult { exit_code, output: output_tail(&data) })
    }

    /// Starts exec `exec_id` and waits for its exit code, killing it at `timeout`.
    async fn run_exec(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<i32, RuntimeError> {
        let task_at = at("exec", "task", id);
        // Wait is issued before Start (as ctr does), so a fast exit cannot be missed.
        let mut waiter = self.conn.tasks();
        let wait_req =
            self.conn.request(api::WaitRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() });
        let mut wait = tokio::spawn(async move { waiter.wait(wait_req).await });
        let req = api::StartRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        if let Err(e) = self.conn.call(task_at, self.conn.tasks().start(self.conn.request(req))).await {
            wait.abort();
            return Err(e);
        }
        let waited = match tokio::time::timeout(timeout, &mut wait).await {
            Ok(joined) => joined,
            Err(_) => {
                let req = api::KillRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    signal: SIGKILL,
                    all: false,
                };
                if let Err(e) =
                    self.conn.call_opt(task_at, self.conn.tasks().kill(self.conn.request(req))).await
                {
                    warn!(container = id, exec_id, error = %e, "cannot kill the timed-out exec");
                }
                if tokio::time::timeout(EXEC_KILL_GRACE, &mut wait).await.is_err() {
                    wait.abort();
                }
                return Err(RuntimeError::Timeout { operation: "exec", after: timeout });
            }
        };
        let resp = waited
            .map_err(|e| RuntimeError::Failed {
                operation: "exec",
                message: format!("waiting for the exec: {e}"),
            })?
            .map_err(|s| self.conn.error(s, task_at))?;
        Ok(resp.into_inner().exit_status as i32)
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    async fn image(&self, reference: &str) -> Result<Image, RuntimeError> {
        let resolved = image::resolve(&self.conn, reference).await?;
        image::ensure_unpacked(&self.conn, &resolved).await?;
        if let Some(top) = resolved.chain_ids.last() {
            lock(&self.chain_ids).insert(resolved.image.config_digest.clone(), top.clone());
        }
        Ok(resolved.image)
    }

    async fn prepare(&self, id: &str, image: &Image) -> Result<Rootfs, RuntimeError> {
        let chain = self.chain_id(image).await?;
        let lease = lease_id(id);
        self.conn.create_lease(&lease, CONTAINER_LEASE_TTL).await?;
        let snapshot_at = at("prepare the root filesystem", "snapshot", id);
        let result = match self.prepare_with_layers(id, image, &chain, &lease).await {
            Ok(r) => r,
            Err(e) => {
                if let Err(e) = self.conn.delete_lease(&lease).await {
                    warn!(container = id, error = %e, "cannot delete the lease after a failed prepare");
                }
                return Err(e);
            }
        };
        match result {
            Ok(layers) => {
                lock(&self.image_names).insert(id.to_owned(), image.name.clone());
                Ok(Rootfs { layers })
            }
            Err(s) => {
                let already = classify(&s) == StatusKind::AlreadyExists;
                if !already && let Err(e) = self.conn.delete_lease(&lease).await {
                    warn!(container = id, error = %e, "cannot delete the lease after a failed prepare");
                }
                Err(match classify(&s) {
                    StatusKind::AlreadyExists => RuntimeError::Failed {
                        operation: snapshot_at.operation,
                        message: format!("snapshot {id} already exists; remove the container first"),
                    },
                    StatusKind::NotFound => {
                        RuntimeError::NotFound { what: "image layer snapshot", id: chain }
                    }
                    _ => self.conn.error(s, snapshot_at),
                })
            }
        }
    }

    async fn create(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        labels: &BTreeMap<String, String>,
        stdio: &Stdio,
    ) -> Result<(), RuntimeError> {
        let create_at = at("create container", "container", id);
        // The task's rootfs mounts are mounted at <bundle>/rootfs by the shim.
        let mut spec = spec.clone();
        let readonly = spec.root().as_ref().and_then(|r| r.readonly());
        let mut root = oci_spec::runtime::Root::default();
        root.set_path(PathBuf::from("rootfs"));
        root.set_readonly(readonly);
        spec.set_root(Some(root));
        let spec = serde_json::to_vec(&spec).map_err(|e| RuntimeError::Failed {
            operation: create_at.operation,
            message: format!("spec of container {id} cannot be encoded: {e}"),
        })?;
        tokio::fs::create_dir_all(&stdio.log_dir).await.map_err(|e| RuntimeError::Failed {
            operation: create_at.operation,
            message: format!("cannot create log directory {}: {e}", stdio.log_dir.display()),
        })?;

        let lease = lease_id(id);
        let image_name = lock(&self.image_names).get(id).cloned().unwrap_or_default();
        let container = api::Container {
            id: id.to_owned(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            image: image_name,
            runtime: Some(api::container::Runtime { name: RUNC_RUNTIME.into(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: spec }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_owned(),
            ..Default::default()
        };
        let req = self.conn.leased(api::CreateContainerRequest { container: Some(container) }, &lease)?;
        match self.conn.raw(create_at, CALL_TIMEOUT, self.conn.containers().create(req)).await? {
            Ok(_) => {}
            Err(s) if classify(&s) == StatusKind::AlreadyExists => {
                return Err(RuntimeError::Failed {
                    operation: create_at.operation,
                    message: format!("container {id} already exists; remove it first"),
                });
            }
            Err(s) => return Err(self.conn.error(s, create_at)),
        }

        let task_at = at("create task", "container", id);
        let mounts_req = snap::MountsRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_owned() };
        let mounts = match self
            .conn
            .call(
                at("create task", "snapshot", id),
                self.conn.snapshots().mounts(self.conn.request(mounts_req)),
            )
            .await
        {
            Ok(m) => m.mounts,
            Err(e) => {
                self.roll_back_container(id).await;
                return Err(e);
            }
        };
        let uri = logs::binary_log_uri(&self.log_driver, &stdio.log_dir);
        let req = api::CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdin: String::new(),
            stdout: uri.clone(),
            // With a terminal there is one stream, and it is stdout.
            stderr: if stdio.terminal { String::new() } else { uri },
            terminal: stdio.terminal,
            ..Default::default()
        };
        if let Err(e) = self.conn.call(task_at, self.conn.tasks().create(self.conn.request(req))).await {
            self.roll_back_container(id).await;
            return Err(e);
        }
        // The container now references the snapshot, which keeps it from GC.
        if let Err(e) = self.conn.delete_lease(&lease).await {
            warn!(container = id, error = %e, "cannot delete the prepare lease; it expires by itself");
        }
        lock(&self.image_names).remove(id);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let req = api::StartRequest { container_id: id.to_owned(), exec_id: String::new() };
        let resp = self
            .conn
            .call(at("start task", "task", id), self.conn.tasks().start(self.conn.request(req)))
            .await?;
        Ok(resp.pid)
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let signal = u32::try_from(signal).map_err(|_| RuntimeError::Failed {
            operation: "signal task",
            message: format!("{signal} is not a signal number"),
        })?;
        let req =
            api::KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal, all: false };
        self.conn.call(at("signal task", "task", id), self.conn.tasks().kill(self.conn.request(req))).await?;
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let io_error = |e: std::io::Error| RuntimeError::Failed {
            operation: "exec",
            message: format!("cannot create the output file in {}: {e}", self.exec_dir.display()),
        };
        tokio::fs::create_dir_all(&self.exec_dir).await.map_err(io_error)?;
        let output = self.exec_dir.join(format!("{id}-{exec_id}.out"));
        tokio::fs::File::create(&output).await.map_err(io_error)?;
        let result = self.exec_inner(id, &exec_id, process, &output, timeout).await;
        if let Err(e) = tokio::fs::remove_file(&output).await {
            debug!(path = %output.display(), error = %e, "cannot remove exec output");
        }
        result
    }

    async fn remove(&self, id: &str) -> Result<Option<(i32, f64)>, RuntimeError> {
        let tasks = self.conn.tasks();
        let task_at = at("remove task", "task", id);
        let mut exit = None;
        let req = api::GetRequest { container_id: id.to_owned(), exec_id: String::new() };
        if let Some(resp) = self.conn.call_opt(task_at, tasks.clone().get(self.conn.request(req))).await? {
            let status = resp.process.as_ref().map(|p| p.status()).unwrap_or(TaskStatus::Unknown);
            if matches!(status, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) {
                return Err(RuntimeError::Failed {
                    operation: "remove container",
                    message: format!("container {id} is still running; stop it first"),
                });
            }
            let req = api::DeleteTaskRequest { container_id: id.to_owned() };
            if let Some(deleted) =
                self.conn.call_opt(task_at, tasks.clone().delete(self.conn.request(req))).await?
                && status == TaskStatus::Stopped
            {
                exit = Some((deleted.exit_status as i32, epoch_seconds(deleted.exited_at.as_ref())));
            }
        }

        // The rest is independent: keep going past failures and report them all.
        let mut errors = Vec::new();
        let req = self.conn.request(api::DeleteContainerRequest { id: id.to_owned() });
        if let Err(e) = self
            .conn
            .call_opt(at("remove container", "container", id), self.conn.containers().delete(req))
            .await
        {
            errors.push(e);
        }
        let req = snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_owned() };
        if let Err(e) = self
            .conn
            .call_opt(
                at("remove snapshot", "snapshot", id),
                self.conn.snapshots().remove(self.conn.request(req)),
            )
            .await
        {
            errors.push(e);
        }
        if let Err(e) = self.conn.delete_lease(&lease_id(id)).await {
            errors.push(e);
        }
        lock(&self.image_names).remove(id);
        combine_errors("remove container", errors).map(|()| exit)
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let ns = self.conn.namespace().to_owned();
        let list_at = at("list containers", "namespace", &ns);
        let containers = self
            .conn
            .call(
                list_at,
                self.conn.containers().list(self.conn.request(api::ListContainersRequest::default())),
            )
            .await?
            .containers;
        let tasks = self
            .conn
            .call(list_at, self.conn.tasks().list(self.conn.request(api::ListTasksRequest::default())))
            .await?
            .tasks;
        let by_id: HashMap<&str, &TaskProcess> = tasks
            .iter()
            .map(|t| (if t.container_id.is_empty() { t.id.as_str() } else { t.container_id.as_str() }, t))
            .collect();
        Ok(containers
            .into_iter()
            .map(|c| {
                let status = process_status(by_id.get(c.id.as_str()).copied());
                ContainerState { labels: c.labels.into_iter().collect(), id: c.id, status }
            })
            .collect())
    }

    fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(EVENTS_BUFFER);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(watch_events(self.conn.clone(), tx, self.shutdown.clone()));
            }
            Err(e) => warn!(error = %e, "no async runtime: the exit stream stays empty"),
        }
        rx
    }
}

/// Keeps one subscription to the namespace's exit events alive for as long as the receiver
/// and the runtime live, resubscribing with backoff when it breaks.
///
/// containerd (grpc-go) sends a stream's response headers only with its first message, so a
/// subscription is invisible until an event arrives. The watcher therefore publishes a ping on
/// [`PING_TOPIC`] (which it also subscribes to) until the first message arrives: from then on
/// no exit can be missed, which it announces with [`Event::Reconnected`], on the first
/// subscription as on every later one.
async fn watch_events(conn: Conn, tx: mpsc::Sender<Event>, shutdown: CancellationToken) {
    let ns = conn.namespace().to_owned();
    let filters = vec![
        format!("namespace=={},topic=={}", quote_filter(&ns), quote_filter(EXIT_TOPIC)),
        format!("namespace=={},topic=={}", quote_filter(&ns), quote_filter(PING_TOPIC)),
    ];
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let subscribed = tokio::select! {
            r = subscribe_live(&conn, &filters) => r,
            () = shutdown.cancelled() => return,
        };
        match subscribed {
            Ok(mut stream) => {
                backoff.reset();
                info!(namespace = %ns, "containerd event subscription is live");
                if tx.send(Event::Reconnected).await.is_err() {
                    return;
                }
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        () = shutdown.cancelled() => return,
                        () = tx.closed() => return,
                    };
                    match next {
                        Ok(Some(envelope)) => {
                            if let Some(event) = exit_event(&envelope)
                                && tx.send(event).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => {
                            warn!(namespace = %ns, "containerd ended the event stream; resubscribing");
                            break;
                        }
                        Err(status) => {
                            warn!(namespace = %ns, code = ?status.code(), error = %status.message(),
                                  "containerd event stream broke; resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(e) => debug!(namespace = %ns, error = %e, "cannot subscribe to containerd events yet"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
        }
    }
}

/// Subscribes and returns the stream once it is known to be registered (see [`watch_events`]).
async fn subscribe_live(
    conn: &Conn,
    filters: &[String],
) -> Result<tonic::Streaming<containerd_client::types::Envelope>, RuntimeError> {
    const PING_EVERY: Duration = Duration::from_millis(250);
    const GIVE_UP: Duration = Duration::from_secs(10);
    let ns = conn.namespace().to_owned();
    let sub_at = at("subscribe to events", "namespace", &ns);
    let mut client = conn.events();
    let req = conn.request(api::SubscribeRequest { filters: filters.to_vec() });
    let subscribe = client.subscribe(req);
    tokio::pin!(subscribe);
    let mut ping = tokio::time::interval(PING_EVERY);
    let deadline = tokio::time::sleep(GIVE_UP);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut subscribe => return r.map(|resp| resp.into_inner()).map_err(|s| conn.error(s, sub_at)),
            _ = ping.tick() => {
                let event = prost_types::Any { type_url: "google.protobuf.Empty".into(), value: Vec::new() };
                let req = conn.request(api::PublishRequest { topic: PING_TOPIC.into(), event: Some(event) });
                if let Err(s) = conn.events().publish(req).await
                    && classify(&s) == StatusKind::Unavailable
                {
                    return Err(conn.error(s, sub_at));
                }
            }
            () = &mut deadline => {
                return Err(RuntimeError::Timeout { operation: "subscribe to events", after: GIVE_UP });
            }
        }
    }
}

/// The exit of a container's main process in `envelope`, if that is what it carries.
fn exit_event(envelope: &containerd_client::types::Envelope) -> Option<Event> {
    if envelope.topic != EXIT_TOPIC {
        return None;
    }
    let any = envelope.event.as_ref()?;
    let exit = match containerd_client::events::TaskExit::decode(any.value.as_slice()) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "undecodable task exit event");
            return None;
        }
    };
    // Exec'd processes (health checks) exit with their own ids.
    if exit.id != exit.container_id {
        return None;
    }
    Some(Event::Exit {
        id: exit.container_id,
        code: exit.exit_status as i32,
        at: epoch_seconds(exit.exited_at.as_ref()),
    })
}

/// A containerd filter string literal.
fn quote_filter(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The status of a container from its task (or its lack of one).
pub(crate) fn process_status(task: Option<&TaskProcess>) -> ProcessStatus {
    let Some(task) = task else { return ProcessStatus::Missing };
    match task.status() {
        TaskStatus::Created => ProcessStatus::Created,
        TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
            ProcessStatus::Running { pid: task.pid }
        }
        TaskStatus::Stopped => ProcessStatus::Exited {
            code: task.exit_status as i32,
            at: epoch_seconds(task.exited_at.as_ref()),
        },
        // containerd cannot reach the task's shim: the task is as good as gone.
        TaskStatus::Unknown => ProcessStatus::Missing,
    }
}

/// The image's layer directories, topmost first, from the mounts of an active snapshot:
/// overlay `lowerdir=` (already topmost first), or the source of a bind mount.
pub(crate) fn layers_from_mounts(mounts: &[containerd_client::types::Mount]) -> Vec<PathBuf> {
    let mut layers = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "overlay" => {
                for opt in &m.options {
                    if let Some(dirs) = opt.strip_prefix("lowerdir=") {
                        layers.extend(dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
                    }
                }
            }
            "bind" | "rbind" => layers.push(PathBuf::from(&m.source)),
            _ => {}
        }
    }
    layers
}

/// Seconds since the epoch of a protobuf timestamp (0 when absent).
pub(crate) fn epoch_seconds(ts: Option<&prost_types::Timestamp>) -> f64 {
    ts.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9).unwrap_or(0.0)
}

/// The last [`EXEC_OUTPUT_MAX`] bytes of `data` as text, starting at a character boundary.
fn output_tail(data: &[u8]) -> String {
    let mut start = data.len().saturating_sub(EXEC_OUTPUT_MAX);
    // Skip UTF-8 continuation bytes cut off from their lead byte.
    while start < data.len() && start > 0 && (data[start] & 0xC0) == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// One error from several independent teardown steps: the first Unavailable if any (the
/// actionable one), else all messages together.
fn combine_errors(operation: &'static str, mut errors: Vec<RuntimeError>) -> Result<(), RuntimeError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            if let Some(i) = errors.iter().position(|e| matches!(e, RuntimeError::Unavailable { .. })) {
                return Err(errors.swap_remove(i));
            }
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            Err(RuntimeError::Failed { operation, message })
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, next: min }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::Mount;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_lowerdirs_are_the_layers_topmost_first() {
        let m = mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/var/lib/c/snapshots/9/work",
                "upperdir=/var/lib/c/snapshots/9/fs",
                "lowerdir=/var/lib/c/snapshots/3/fs:/var/lib/c/snapshots/2/fs:/var/lib/c/snapshots/1/fs",
            ],
        );
        assert_eq!(
            layers_from_mounts(&[m]),
            vec![
                PathBuf::from("/var/lib/c/snapshots/3/fs"),
                PathBuf::from("/var/lib/c/snapshots/2/fs"),
                PathBuf::from("/var/lib/c/snapshots/1/fs"),
            ]
        );
    }

    #[test]
    fn single_lowerdir_and_bind_mounts() {
        let overlay = mount(
            "overlay",
            "overlay",
            &["workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs", "index=off"],
        );
        assert_eq!(layers_from_mounts(&[overlay]), vec![PathBuf::from("/s/1/fs")]);
        let bind = mount("bind", "/s/1/fs", &["ro", "rbind"]);
        assert_eq!(layers_from_mounts(&[bind]), vec![PathBuf::from("/s/1/fs")]);
        assert!(layers_from_mounts(&[mount("tmpfs", "tmpfs", &[])]).is_empty());
        assert!(layers_from_mounts(&[]).is_empty());
    }

    #[test]
    fn status_codes_are_classified_without_reading_messages() {
        assert_eq!(classify(&Status::unavailable("x")), StatusKind::Unavailable);
        assert_eq!(classify(&Status::not_found("x")), StatusKind::NotFound);
        assert_eq!(classify(&Status::already_exists("x")), StatusKind::AlreadyExists);
        assert_eq!(classify(&Status::deadline_exceeded("x")), StatusKind::DeadlineExceeded);
        assert_eq!(classify(&Status::failed_precondition("namespace is required")), StatusKind::Failed);
        assert_eq!(classify(&Status::invalid_argument("x")), StatusKind::Failed);
        // containerd's own Unknown errors are failures; only a transport-made one means "gone".
        assert_eq!(classify(&Status::unknown("transport error")), StatusKind::Failed);
        let transport = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert_eq!(transport.code(), Code::Unknown);
        assert_eq!(classify(&transport), StatusKind::Unavailable);
    }

    #[test]
    fn errors_name_the_object() {
        let conn = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { Conn::new(Path::new("/nonexistent/containerd.sock"), "ecs").unwrap() });
        let e = conn.error(Status::not_found("no such"), at("start task", "task", "abc"));
        assert_eq!(e, RuntimeError::NotFound { what: "task", id: "abc".into() });
        let e = conn.error(Status::unavailable("refused"), at("start task", "task", "abc"));
        assert_eq!(e.to_string(), "containerd is unreachable at /nonexistent/containerd.sock: refused");
        let e = conn.error(Status::failed_precondition("bad spec"), at("create task", "container", "abc"));
        assert_eq!(e.to_string(), "create task failed: container abc: bad spec");
    }

    fn task(status: TaskStatus, pid: u32, exit: u32, at: i64) -> TaskProcess {
        TaskProcess {
            container_id: "c".into(),
            id: "c".into(),
            pid,
            status: status as i32,
            exit_status: exit,
            exited_at: Some(prost_types::Timestamp { seconds: at, nanos: 500_000_000 }),
            ..Default::default()
        }
    }

    #[test]
    fn task_status_maps_to_process_status() {
        assert_eq!(process_status(None), ProcessStatus::Missing);
        assert_eq!(process_status(Some(&task(TaskStatus::Created, 7, 0, 0))), ProcessStatus::Created);
        assert_eq!(
            process_status(Some(&task(TaskStatus::Running, 7, 0, 0))),
            ProcessStatus::Running { pid: 7 }
        );
        assert_eq!(
            process_status(Some(&task(TaskStatus::Paused, 7, 0, 0))),
            ProcessStatus::Running { pid: 7 }
        );
        assert_eq!(
            process_status(Some(&task(TaskStatus::Stopped, 7, 137, 1_700_000_000))),
            ProcessStatus::Exited { code: 137, at: 1_700_000_000.5 }
        );
        assert_eq!(process_status(Some(&task(TaskStatus::Unknown, 7, 0, 0))), ProcessStatus::Missing);
    }

    #[test]
    fn only_main_process_exits_become_events() {
        let envelope = |id: &str| containerd_client::types::Envelope {
            timestamp: None,
            namespace: "ecs".into(),
            topic: EXIT_TOPIC.into(),
            event: Some(prost_types::Any {
                type_url: "containerd.events.TaskExit".into(),
                value: containerd_client::events::TaskExit {
                    container_id: "c1".into(),
                    id: id.into(),
                    pid: 42,
                    exit_status: 3,
                    exited_at: Some(prost_types::Timestamp { seconds: 10, nanos: 0 }),
                }
                .encode_to_vec(),
            }),
        };
        assert_eq!(exit_event(&envelope("c1")), Some(Event::Exit { id: "c1".into(), code: 3, at: 10.0 }));
        assert_eq!(exit_event(&envelope("exec-1")), None);
        let mut ping = envelope("c1");
        ping.topic = PING_TOPIC.into();
        assert_eq!(exit_event(&ping), None);
    }

    #[test]
    fn exec_output_keeps_the_last_kilobyte_on_a_char_boundary() {
        assert_eq!(output_tail(b"ok\n"), "ok\n");
        let long = format!("{}{}", "a".repeat(2000), "end");
        let tail = output_tail(long.as_bytes());
        assert_eq!(tail.len(), 1024);
        assert!(tail.ends_with("end"));
        // 'é' is two bytes; cutting through one must not yield a replacement character.
        let s = format!("{}{}", "é".repeat(600), "z");
        let tail = output_tail(s.as_bytes());
        assert!(!tail.contains('\u{FFFD}'));
        assert!(tail.ends_with('z'));
    }

    #[test]
    fn filters_quote_values() {
        assert_eq!(quote_filter("ecs"), "\"ecs\"");
        assert_eq!(quote_filter("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
