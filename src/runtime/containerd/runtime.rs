//! [`Runtime`] on containerd's gRPC API (containerd 1.6 and later).
//!
//! Per container `ID` the runtime owns: the snapshot `ID` (overlayfs, parent = the image's chain
//! id), the lease `ecsd-ID` (held from prepare until the container references the snapshot,
//! and deleted by remove), the container `ID` (runtime `io.containerd.runc.v2`) and its task.
//! Container output goes to a `binary://` logger (see [`super::logs`]) that containerd's shim
//! runs, so logs survive an ecsd restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::v1::{Process as TaskProcess, Status as TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use super::connection::{CALL_TIMEOUT, Conn, StatusKind, at, classify, epoch_seconds};
use super::{RUNC_RUNTIME, SNAPSHOTTER, events, exec, images, logs, pull};
use crate::runtime::registry::manifest::Platform;
use crate::runtime::registry::{Registries, RegistryError, RegistrySettings};
use crate::runtime::{
    ContainerState, Event, ExecProcess, ExecSpec, Image, ImageSummary, ProcessStatus, PullOptions, Rootfs,
    Runtime, RuntimeError, Stdio,
};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long a prepared snapshot stays protected from GC without a container referencing it.
const CONTAINER_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
const EVENTS_BUFFER: usize = 1024;

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
    /// Scratch directory for the FIFOs of exec'd processes (one directory per process, gone
    /// with it).
    pub exec_dir: PathBuf,
}

impl ContainerdOptions {
    /// Options with the running executable as log driver and exec FIFOs under `run_dir/exec`.
    pub fn new(address: &Path, namespace: &str, run_dir: &Path) -> Result<Self, RuntimeError> {
        let exe = std::env::current_exe().map_err(|e| {
            RuntimeError::io("find the ecsd executable (the log driver) at", "/proc/self/exe", e)
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

/// The lease that protects container `id`'s snapshot until the container references it.
fn lease_id(id: &str) -> String {
    format!("ecsd-{id}")
}

/// Where the callers of a pull in flight wait for its result.
type PullWaiter = watch::Receiver<Option<Result<Image, RuntimeError>>>;

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
    /// The HTTP side of pulls.
    registries: Arc<Registries>,
    /// Pulls in flight by reference and platform: later callers wait for the first one's
    /// result instead of downloading again.
    inflight: Arc<Mutex<HashMap<String, PullWaiter>>>,
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
            registries: Arc::new(Registries::new(RegistrySettings::default())),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            shutdown: CancellationToken::new(),
        })
    }

    /// The same runtime pulling with `settings` (insecure registries, mirrors, timeouts).
    pub fn with_registry(mut self, settings: RegistrySettings) -> Self {
        self.registries = Arc::new(Registries::new(settings));
        self
    }

    /// The registry client pulls use (for reading image configs from registries).
    pub fn registries(&self) -> &Arc<Registries> {
        &self.registries
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
        let diff_ids = images::diff_ids(&self.conn, &image.name, &image.config_digest).await?;
        let chain = images::chain_ids(&diff_ids).pop().unwrap_or_default();
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
                let resolved = images::resolve(&self.conn, &image.name).await?;
                images::ensure_unpacked(&self.conn, &resolved).await?;
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
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    async fn pull(&self, reference: &str, options: PullOptions) -> Result<Image, RuntimeError> {
        let platform = options.platform.clone().unwrap_or_else(Platform::host);
        let key = format!("{reference}\0{platform}");
        let mut rx = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(rx) => {
                    info!(image = reference, "waiting for a pull of the same image in progress");
                    rx.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let conn = self.conn.clone();
                    let registries = Arc::clone(&self.registries);
                    let map = Arc::clone(&self.inflight);
                    let name = reference.to_owned();
                    // The pull runs on its own: a caller that stops waiting (a task stopped
                    // meanwhile) does not cancel it for the others.
                    tokio::spawn(async move {
                        let limit = registries.settings().pull_timeout;
                        let result = match tokio::time::timeout(
                            limit,
                            pull::pull(&conn, &registries, &name, &options),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(RuntimeError::Pull {
                                reference: name.clone(),
                                error: Box::new(RegistryError::PullTimeout { after: limit }),
                            }),
                        };
                        lock(&map).remove(&key);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let result = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RuntimeError::Cancelled { operation: "pull image" })?
            .clone();
        let image = result.unwrap_or(Err(RuntimeError::Cancelled { operation: "pull image" }))?;
        if let Ok(resolved) = images::resolve(&self.conn, &image.name).await
            && let Some(top) = resolved.chain_ids.last()
        {
            lock(&self.chain_ids).insert(resolved.image.config_digest.clone(), top.clone());
        }
        Ok(image)
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, RuntimeError> {
        images::list_images(&self.conn).await
    }

    async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError> {
        images::remove_image(&self.conn, reference).await
    }

    async fn image_used(&self, reference: &str, at: f64) -> Result<(), RuntimeError> {
        images::label_image(&self.conn, reference, pull::LABEL_LAST_USED, &format!("{}", at.floor() as i64))
            .await
    }

    async fn image(&self, reference: &str) -> Result<Image, RuntimeError> {
        let resolved = images::resolve(&self.conn, reference).await?;
        images::ensure_unpacked(&self.conn, &resolved).await?;
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
                    StatusKind::AlreadyExists => {
                        RuntimeError::AlreadyExists { what: "snapshot", id: id.to_owned() }
                    }
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
        let spec = serde_json::to_vec(&spec).map_err(|e| RuntimeError::Encode {
            what: "runtime spec",
            id: id.to_owned(),
            source: e.into(),
        })?;
        tokio::fs::create_dir_all(&stdio.log_dir)
            .await
            .map_err(|e| RuntimeError::io("create the log directory", &stdio.log_dir, e))?;

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
        let signal = u32::try_from(signal).map_err(|_| RuntimeError::InvalidSignal { signal })?;
        let req =
            api::KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal, all: false };
        self.conn.call(at("signal task", "task", id), self.conn.tasks().kill(self.conn.request(req))).await?;
        Ok(())
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecProcess, RuntimeError> {
        exec::start(&self.conn, &self.exec_dir, container_id, spec).await
    }

    async fn remove(&self, id: &str) -> Result<Option<(i32, f64)>, RuntimeError> {
        let tasks = self.conn.tasks();
        let task_at = at("remove task", "task", id);
        let mut exit = None;
        let req = api::GetRequest { container_id: id.to_owned(), exec_id: String::new() };
        if let Some(resp) = self.conn.call_opt(task_at, tasks.clone().get(self.conn.request(req))).await? {
            let status = resp.process.as_ref().map(|p| p.status()).unwrap_or(TaskStatus::Unknown);
            if matches!(status, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) {
                return Err(RuntimeError::StillRunning { id: id.to_owned() });
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
        match errors.len() {
            0 => Ok(exit),
            1 => Err(errors.remove(0)),
            _ => Err(RuntimeError::Several { operation: "remove container", id: id.to_owned(), errors }),
        }
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

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.conn.server_version().await.map(|_| ())
    }

    fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(EVENTS_BUFFER);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(events::watch_events(self.conn.clone(), tx, self.shutdown.clone()));
            }
            Err(e) => warn!(error = %e, "no async runtime: the exit stream stays empty"),
        }
        rx
    }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
}
