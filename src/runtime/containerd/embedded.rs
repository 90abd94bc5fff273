//! The embedded containerd: where no containerd answers and a `containerd` binary is
//! installed, ecsd runs and supervises its own.
//!
//! Layout, all under `DATA_DIR/containerd/`:
//!
//! | path | what |
//! |---|---|
//! | `config.toml` | written on every start |
//! | `root/` | content, snapshots, metadata (containerd's `root`) |
//! | `state/` | runtime state, bundles (containerd's `state`) |
//! | `opt/` | containerd's `opt` plugin directory |
//! | `containerd.sock` | gRPC socket (`containerd.sock.ttrpc` next to it) |
//! | `containerd.log` | containerd's stdout and stderr, appended |
//! | `containerd.pid` | pid of the running instance |
//!
//! The CRI plugin is disabled. containerd 1.6 still creates shim sockets under
//! `/run/containerd/s/` (hashed names, shared safely with other instances). Stopping the
//! embedded containerd does not stop containers: their shims outlive it and are re-adopted by
//! the next start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use containerd_client::services::v1 as api;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::connection::{Backoff, Conn, at};
use crate::runtime::RuntimeError;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A run this long resets the restart backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// `sun_path` holds 108 bytes including the terminating NUL.
const SOCKET_PATH_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot prepare {path} for the embedded containerd")]
    Setup { path: PathBuf, source: std::io::Error },
    #[error("socket path {path} is longer than {SOCKET_PATH_MAX} bytes; use a shorter data dir")]
    SocketPathTooLong { path: PathBuf },
    #[error("cannot start {program}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("the embedded containerd exited while starting ({status}); see {log}")]
    Exited { status: String, log: PathBuf },
    #[error("the embedded containerd did not answer at {address} within {waited:?}; see {log}")]
    NotReady { address: PathBuf, waited: Duration, log: PathBuf },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Paths of the embedded containerd under the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    /// containerd's `state` (bundles, shim sockets): `dir/state`, or a rootless ecsd's
    /// runtime dir.
    pub state: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("containerd");
        Layout {
            config: dir.join("config.toml"),
            socket: dir.join("containerd.sock"),
            log: dir.join("containerd.log"),
            pid_file: dir.join("containerd.pid"),
            state: dir.join("state"),
            dir,
        }
    }

    /// [`Layout::new`] with containerd's state in `state` (a rootless ecsd keeps it in
    /// `$XDG_RUNTIME_DIR/ecsd`, with the rest of what lives only while it runs).
    pub fn with_state(data_dir: &Path, state: &Path) -> Self {
        Layout { state: state.to_owned(), ..Layout::new(data_dir) }
    }

    /// containerd's configuration for this layout.
    pub fn config_toml(&self) -> String {
        let p = |path: PathBuf| toml_string(&path.to_string_lossy());
        format!(
            "version = 2\nroot = {}\nstate = {}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = {}\n\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            p(self.dir.join("root")),
            p(self.state.clone()),
            p(self.socket.clone()),
            p(self.dir.join("opt")),
        )
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A containerd started and supervised by ecsd. Dropping it stops containerd (SIGTERM, then
/// SIGKILL after 10 s); [`EmbeddedContainerd::shutdown`] does the same and waits.
#[derive(Debug)]
pub struct EmbeddedContainerd {
    address: PathBuf,
    pid: Arc<AtomicU32>,
    shutdown: CancellationToken,
    supervisor: Option<JoinHandle<()>>,
}

impl EmbeddedContainerd {
    /// The socket to give the runtime.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The current containerd pid (0 between a crash and its restart).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stops containerd and waits until it has exited.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedContainerd {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // The supervisor escalates to SIGKILL if the async runtime lives on; if it is going
        // away with us, at least containerd hears SIGTERM.
        if self.supervisor.as_ref().is_some_and(|t| !t.is_finished()) {
            signal(self.pid.load(Ordering::SeqCst), rustix::process::Signal::TERM);
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Uses the containerd at `address` if it answers; else, if `containerd` is on PATH, starts
/// one under `data_dir` (see the module docs) and returns it: use its
/// [`address`](EmbeddedContainerd::address). `Ok(None)` when nothing could be started: the
/// runtime then reports containerd as unavailable.
pub async fn ensure(
    address: &Path,
    data_dir: &Path,
    namespace: &str,
) -> Result<Option<EmbeddedContainerd>, EmbeddedError> {
    ensure_in(address, Layout::new(data_dir), namespace).await
}

/// [`ensure`] with the embedded containerd's files where `layout` says.
pub async fn ensure_in(
    address: &Path,
    layout: Layout,
    namespace: &str,
) -> Result<Option<EmbeddedContainerd>, EmbeddedError> {
    if answers(address, namespace).await {
        info!(address = %address.display(), "using the running containerd");
        return Ok(None);
    }
    let Some(program) = find_program("containerd") else {
        warn!(address = %address.display(), "no containerd answers and none is installed; tasks cannot run");
        return Ok(None);
    };
    if layout.socket.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(EmbeddedError::SocketPathTooLong { path: layout.socket });
    }
    let setup = |path: &Path| {
        let path = path.to_owned();
        move |source| EmbeddedError::Setup { path, source }
    };
    tokio::fs::create_dir_all(&layout.dir).await.map_err(setup(&layout.dir))?;
    stop_stale(&layout).await;
    tokio::fs::write(&layout.config, layout.config_toml()).await.map_err(setup(&layout.config))?;

    let mut child = spawn(&program, &layout).await?;
    let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
    wait_ready(&mut child, &layout, namespace).await?;
    create_namespace(&layout.socket, namespace).await;
    info!(pid = pid.load(Ordering::SeqCst), address = %layout.socket.display(), "embedded containerd started");

    let shutdown = CancellationToken::new();
    let supervisor =
        tokio::spawn(supervise(program, layout.clone(), child, Arc::clone(&pid), shutdown.clone()));
    Ok(Some(EmbeddedContainerd { address: layout.socket, pid, shutdown, supervisor: Some(supervisor) }))
}

/// Whether a containerd answers Version at `address`.
pub async fn answers(address: &Path, namespace: &str) -> bool {
    let Ok(conn) = Conn::new(address, namespace) else { return false };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, conn.server_version()).await, Ok(Ok(_)))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    })
}

/// Stops an embedded containerd left running by a previous ecsd (it would hold the socket).
async fn stop_stale(layout: &Layout) {
    let Ok(text) = tokio::fs::read_to_string(&layout.pid_file).await else { return };
    let Ok(pid) = text.trim().parse::<u32>() else { return };
    // Only a containerd: the pid may have been reused by anything since.
    let exe = tokio::fs::read_link(format!("/proc/{pid}/exe")).await;
    if !exe.as_ref().is_ok_and(|p| p.file_name().is_some_and(|n| n == "containerd")) {
        return;
    }
    warn!(pid, "stopping the embedded containerd a previous ecsd left running");
    signal(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && tokio::fs::metadata(format!("/proc/{pid}/exe")).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, rustix::process::Signal::KILL);
}

async fn spawn(program: &Path, layout: &Layout) -> Result<Child, EmbeddedError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&layout.log)
        .map_err(|source| EmbeddedError::Setup { path: layout.log.clone(), source })?;
    let log2 = log.try_clone().map_err(|source| EmbeddedError::Setup { path: layout.log.clone(), source })?;
    // A stale socket file makes containerd fail to listen.
    let _ = tokio::fs::remove_file(&layout.socket).await;
    let child = Command::new(program)
        .arg("--config")
        .arg(&layout.config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        // Its own process group: a Ctrl-C meant for ecsd must not reach containerd first.
        .process_group(0)
        .spawn()
        .map_err(|source| EmbeddedError::Spawn { program: program.to_owned(), source })?;
    if let Some(pid) = child.id()
        && let Err(e) = tokio::fs::write(&layout.pid_file, format!("{pid}\n")).await
    {
        warn!(path = %layout.pid_file.display(), error = %e, "cannot write the containerd pid file");
    }
    Ok(child)
}

async fn wait_ready(child: &mut Child, layout: &Layout, namespace: &str) -> Result<(), EmbeddedError> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EmbeddedError::Exited { status: status.to_string(), log: layout.log.clone() });
        }
        if answers(&layout.socket, namespace).await {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            stop_child(child).await;
            return Err(EmbeddedError::NotReady {
                address: layout.socket.clone(),
                waited: READY_TIMEOUT,
                log: layout.log.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the namespace so that `ctr -n NS` shows it before the first task.
async fn create_namespace(address: &Path, namespace: &str) {
    let Ok(conn) = Conn::new(address, namespace) else { return };
    let req = api::CreateNamespaceRequest {
        namespace: Some(api::Namespace { name: namespace.to_owned(), labels: Default::default() }),
    };
    match conn
        // With the namespace header too: containerd publishes the creation as an event of it.
        .raw(
            at("create namespace", "namespace", namespace),
            PROBE_TIMEOUT,
            conn.namespaces().create(conn.request(req)),
        )
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => {}
        Ok(Err(s)) => warn!(namespace, error = %s.message(), "cannot create the containerd namespace"),
        Err(e) => warn!(namespace, error = %e, "cannot create the containerd namespace"),
    }
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        signal(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        warn!(pid, "containerd ignored SIGTERM for {STOP_GRACE:?}; killing it");
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Restarts containerd with backoff whenever it dies, until `shutdown`.
async fn supervise(
    program: PathBuf,
    layout: Layout,
    child: Child,
    pid: Arc<AtomicU32>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut child = Some(child);
    let mut started = Instant::now();
    loop {
        if let Some(running) = child.as_mut() {
            tokio::select! {
                status = running.wait() => {
                    pid.store(0, Ordering::SeqCst);
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    error!(%status, log = %layout.log.display(), "embedded containerd exited; restarting it");
                    child = None;
                    if started.elapsed() > HEALTHY_RUN {
                        backoff.reset();
                    }
                }
                () = shutdown.cancelled() => {
                    stop_child(running).await;
                    pid.store(0, Ordering::SeqCst);
                    let _ = tokio::fs::remove_file(&layout.pid_file).await;
                    info!("embedded containerd stopped");
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return,
        }
        match spawn(&program, &layout).await {
            Ok(c) => {
                pid.store(c.id().unwrap_or(0), Ordering::SeqCst);
                info!(pid = c.id().unwrap_or(0), "embedded containerd restarted");
                started = Instant::now();
                child = Some(c);
            }
            Err(e) => error!(error = %crate::error_chain(&e), "cannot restart the embedded containerd"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_config_live_under_the_data_dir() {
        let l = Layout::new(Path::new("/var/lib/ecsd"));
        assert_eq!(l.socket, Path::new("/var/lib/ecsd/containerd/containerd.sock"));
        assert_eq!(l.pid_file, Path::new("/var/lib/ecsd/containerd/containerd.pid"));
        let toml = l.config_toml();
        assert!(toml.contains("root = \"/var/lib/ecsd/containerd/root\"\n"), "{toml}");
        assert!(toml.contains("state = \"/var/lib/ecsd/containerd/state\"\n"));
        assert!(toml.contains("address = \"/var/lib/ecsd/containerd/containerd.sock\"\n"));
        assert!(toml.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
    }

    #[test]
    fn a_rootless_layout_keeps_the_state_in_the_runtime_dir() {
        let l = Layout::with_state(
            Path::new("/home/u/.local/share/ecsd"),
            Path::new("/run/user/7/ecsd/containerd"),
        );
        let toml = l.config_toml();
        assert!(toml.contains("state = \"/run/user/7/ecsd/containerd\"\n"), "{toml}");
        assert!(toml.contains("root = \"/home/u/.local/share/ecsd/containerd/root\"\n"), "{toml}");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"/a "b" \c"#), r#""/a \"b\" \\c""#);
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }

    #[tokio::test]
    async fn nothing_answers_at_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!answers(&dir.path().join("none.sock"), "ecs").await);
    }
}
