//! The container runtime boundary: a narrow trait the engine drives, the plain types that
//! cross it, and its implementations: containerd (the only code that imports containerd-client
//! or tonic) and Podman (over libpod's REST API).
//!
//! The engine never sees gRPC types: images, containers, processes and exits cross this
//! boundary as the plain types below, and failures as [`RuntimeError`] classified by kind.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub mod containerd;
mod error;
mod exec;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod from_podman;
pub mod podman;
pub mod reference;
pub mod registry;

pub use containerd::pull::{LABEL_LAST_USED, LABEL_PULLED_AT, PullOptions};
pub use containerd::{ContainerdOptions, ContainerdRuntime, embedded, import, logs};
pub use embedded::EmbeddedContainerd;
pub use error::{Backend, ImageDefect, RuntimeError};
pub use exec::{
    ConsoleSize, EXEC_OUTPUT_MAX, ExecControl, ExecOutput, ExecProcess, ExecResult, ExecSpec, ExecStdin,
    run_to_completion,
};
pub use logs::{LogDriverArgs, read_logs, run_log_driver};
pub use podman::{PodmanOptions, PodmanRuntime, PodmanService};
pub use reference::normalize;

/// An image present in the runtime, resolved for this host's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// The manifest digest (`imageDigest` in DescribeTasks).
    pub digest: String,
    /// The config digest (the image id, `ImageID` in task metadata).
    pub config_digest: String,
    pub config: ImageConfig,
}

/// The parts of an OCI image config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// An image of the runtime's namespace, as `ecsd image ls` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub name: String,
    /// The target's digest (what the tag resolved to).
    pub digest: String,
    pub media_type: String,
    /// Bytes stored for this host's platform (compressed layers, config, manifests).
    pub size: u64,
    /// When the image record was created (epoch seconds).
    pub created_at: f64,
    /// When ecsd last pulled it; `None` for images it never pulled (imported ones).
    pub pulled_at: Option<f64>,
    /// When a task last started a container from it.
    pub last_used_at: Option<f64>,
}

/// How a pull is going, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The reference resolved to `digest`; these layers (digest, size) are to be fetched.
    Resolved {
        reference: String,
        digest: String,
        layers: Vec<(String, u64)>,
    },
    /// A blob's download starts, at `offset` when an earlier download is resumed.
    Started {
        digest: String,
        total: u64,
        offset: u64,
    },
    Progress {
        digest: String,
        done: u64,
        total: u64,
    },
    /// A blob is in the content store; `cached`: nothing had to be downloaded.
    Done {
        digest: String,
        downloaded: u64,
        cached: bool,
    },
    /// Every blob is there; the layers are being unpacked.
    Unpacking,
}

/// A container's root filesystem, prepared from its image and not yet in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The image's layer directories, topmost first, for reading files of the image (such as
    /// /etc/passwd) without mounting it.
    pub layers: Vec<PathBuf>,
}

/// Where a container's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stdio {
    /// Directory that receives the container's log files (created by the runtime).
    pub log_dir: PathBuf,
    /// Whether the process has a terminal (stdout and stderr are then one stream).
    pub terminal: bool,
}

/// What the runtime knows about one of its containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub status: ProcessStatus,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProcessStatus {
    /// The container exists but its process was never started.
    Created,
    Running {
        pid: u32,
    },
    /// The process exited with `code` at `at` (epoch seconds).
    Exited {
        code: i32,
        at: f64,
    },
    /// The container exists without a task (e.g. after a host reboot).
    Missing,
}

/// The runtime tells the engine about exits as they happen.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A container's main process exited. `pid` tells which process it was: a container id
    /// can be created again after a removal, and the exit of the earlier process may still
    /// be on its way.
    Exit { id: String, pid: u32, code: i32, at: f64 },
    /// The runtime connection came back after a loss: events may have been missed, so the
    /// engine should compare its picture with [`Runtime::list`].
    Reconnected,
}

/// The container runtime, as the engine uses it. Every method is safe to retry: creating
/// what exists fails with `AlreadyExists`, removing what is gone succeeds.
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// Resolves a normalised image reference to an image present in the runtime, unpacking
    /// it for the snapshotter if needed.
    async fn image(&self, reference: &str) -> Result<Image, RuntimeError>;

    /// Pulls `reference` (normalised) from its registry into the runtime and unpacks it for
    /// this host. Concurrent pulls of one reference share one download.
    async fn pull(&self, reference: &str, options: PullOptions) -> Result<Image, RuntimeError>;

    /// The images of the runtime's namespace.
    async fn images(&self) -> Result<Vec<ImageSummary>, RuntimeError>;

    /// Removes image `reference` with the content and snapshots only it used; refused
    /// (`ImageInUse`) while a container uses it.
    async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError>;

    /// Records that a task started a container from image `reference` now (for the
    /// least-recently-used order of image cleanup).
    async fn image_used(&self, reference: &str, at: f64) -> Result<(), RuntimeError>;

    /// Prepares the root filesystem of container `id` from `image`.
    async fn prepare(&self, id: &str, image: &Image) -> Result<Rootfs, RuntimeError>;

    /// Creates container `id` (its snapshot must be prepared) and its task, not started.
    /// `spec` is the OCI runtime spec; `labels` let the runtime alone rebuild the picture.
    async fn create(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        labels: &BTreeMap<String, String>,
        stdio: &Stdio,
    ) -> Result<(), RuntimeError>;

    /// Starts the created task and returns its pid.
    async fn start(&self, id: &str) -> Result<u32, RuntimeError>;

    /// Sends `signal` to the container's main process.
    async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;

    /// Starts `spec` inside the running container `container_id` and hands over its streams.
    /// The process is cleaned up in the runtime once it has ended and its output was read, or
    /// when the returned handle is dropped (see [`ExecProcess`]). For a process run to its
    /// end with a timeout, see [`run_to_completion`].
    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecProcess, RuntimeError>;

    /// Kills and removes the exec'd processes still running in `container_id` that nobody
    /// holds a handle of (an earlier daemon's, left when it died); returns their ids. A
    /// runtime whose processes cannot outlive the daemon has none.
    async fn reap_execs(&self, container_id: &str) -> Result<Vec<String>, RuntimeError> {
        let _ = container_id;
        Ok(vec![])
    }

    /// Removes the container's task, the container, its snapshot and lease. Returns the exit
    /// status if the task had exited. Removing what does not exist is not an error; removing
    /// a container whose process runs is `StillRunning`.
    async fn remove(&self, id: &str) -> Result<Option<(i32, f64)>, RuntimeError>;

    /// Every container of the runtime's namespace with its labels and process status.
    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError>;

    /// Whether the runtime answers now, as cheaply as it can tell (containerd: its version,
    /// not a listing, which asks every shim for its state).
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.list().await.map(|_| ())
    }

    /// The stream of exits. Called once; the runtime keeps it alive across reconnections.
    fn events(&self) -> mpsc::Receiver<Event>;
}
