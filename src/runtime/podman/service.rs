//! The Podman service ecsd starts and supervises: `podman system service --time=0` on a socket
//! under the data dir, with a private store and a containers.conf ecsd writes.
//!
//! Layout, all under `DATA_DIR/podman/`:
//!
//! | path | what |
//! |---|---|
//! | `containers.conf` | written on every start (see [`Layout::containers_conf`]) |
//! | `root/`, `runroot/` | containers/storage's graph root and run root |
//! | `tmp/` | libpod's tmpdir: exit files, the `events/events.log` that `since=` replays |
//! | `net/` | netavark's config dir for Podman's own networks (ecsd's tasks use none of them) |
//! | `podman.sock` | the REST socket |
//! | `podman.log` | the service's stdout and stderr, appended |
//! | `podman.pid` | pid of the running instance |
//!
//! Stopping the service does not stop containers: conmon outlives it, and exits that happen
//! meanwhile are in the events file for the next instance to replay.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::client::{CALL_TIMEOUT, Client, at};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const SOCKET_PATH_MAX: usize = 107;
/// Docker's default capabilities, which the spec builder starts from; Podman's own default
/// set lacks AUDIT_WRITE, MKNOD and NET_RAW.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot prepare {path} for the Podman service")]
    Setup { path: PathBuf, source: std::io::Error },
    #[error("socket path {path} is longer than {SOCKET_PATH_MAX} bytes; use a shorter data dir")]
    SocketPathTooLong { path: PathBuf },
    #[error("no podman binary on PATH; install podman or use --runtime containerd")]
    NotInstalled,
    #[error("cannot start {program}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("the Podman service exited while starting ({status}); see {log}")]
    Exited { status: String, log: PathBuf },
    #[error("the Podman service did not answer at {address} within {waited:?}; see {log}")]
    NotReady { address: PathBuf, waited: Duration, log: PathBuf },
}

/// Paths of the supervised service under the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("podman");
        Layout {
            conf: dir.join("containers.conf"),
            socket: dir.join("podman.sock"),
            log: dir.join("podman.log"),
            pid_file: dir.join("podman.pid"),
            dir,
        }
    }

    /// The service's containers.conf: runc (crun fails on hybrid cgroups), cgroupfs (no
    /// systemd needed), exits and events in files that survive a service restart, exec
    /// sessions cleaned up 5 s after they end (not 5 min), no pids limit or ulimits of
    /// Podman's own (the spec says what a container gets), and Docker's capabilities as the
    /// defaults (see [`DEFAULT_CAPABILITIES`]).
    pub fn containers_conf(&self) -> String {
        let caps = DEFAULT_CAPABILITIES.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
        format!(
            "# Written by ecsd at every start of its Podman service; edits are lost.\n\
             [containers]\n\
             default_capabilities = [{caps}]\n\
             default_ulimits = []\n\
             pids_limit = 0\n\
             log_driver = \"k8s-file\"\n\
             \n[engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             exit_command_delay = 5\n\
             \n[network]\n\
             network_backend = \"netavark\"\n\
             network_config_dir = {}\n",
            toml_string(&self.dir.join("net").to_string_lossy())
        )
    }

    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut flag = |name: &str, value: PathBuf| {
            args.push(name.into());
            args.push(value.into_os_string());
        };
        flag("--root", self.dir.join("root"));
        flag("--runroot", self.dir.join("runroot"));
        flag("--tmpdir", self.dir.join("tmp"));
        args.extend(["--storage-driver".into(), "overlay".into(), "system".into(), "service".into()]);
        args.push("--time=0".into());
        let mut uri = std::ffi::OsString::from("unix://");
        uri.push(&self.socket);
        args.push(uri);
        args
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

/// A Podman service started and supervised by ecsd. Dropping it stops the service (SIGTERM);
/// [`PodmanService::shutdown`] also waits for it.
#[derive(Debug)]
pub struct PodmanService {
    socket: PathBuf,
    pid: Arc<AtomicU32>,
    shutdown: CancellationToken,
    supervisor: Option<JoinHandle<()>>,
}

impl PodmanService {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The service's pid (0 between a crash and its restart).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stops the service and waits until it has exited.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        self.shutdown.cancel();
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

/// Whether a libpod service answers `_ping` at `socket`.
pub async fn answers(socket: &Path) -> bool {
    let client = Client::new(socket);
    let ping = client.call_with(hyper::Method::GET, "/_ping", None, at("ping", "service", ""), CALL_TIMEOUT);
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(a)) if a.status.is_success())
}

pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    })
}

/// Starts the service for `data_dir` (see the module docs) and waits until it answers.
pub async fn start(data_dir: &Path) -> Result<PodmanService, ServiceError> {
    let program = find_program("podman").ok_or(ServiceError::NotInstalled)?;
    let layout = Layout::new(data_dir);
    if layout.socket.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(ServiceError::SocketPathTooLong { path: layout.socket });
    }
    let setup = |path: &Path| {
        let path = path.to_owned();
        move |source| ServiceError::Setup { path, source }
    };
    for dir in [layout.dir.clone(), layout.dir.join("net")] {
        tokio::fs::create_dir_all(&dir).await.map_err(setup(&dir))?;
    }
    stop_stale(&layout).await;
    tokio::fs::write(&layout.conf, layout.containers_conf()).await.map_err(setup(&layout.conf))?;

    let mut child = spawn(&program, &layout).await?;
    let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
    wait_ready(&mut child, &layout).await?;
    info!(pid = pid.load(Ordering::SeqCst), socket = %layout.socket.display(), "Podman service started");
    let shutdown = CancellationToken::new();
    let supervisor =
        tokio::spawn(supervise(program, layout.clone(), child, Arc::clone(&pid), shutdown.clone()));
    Ok(PodmanService { socket: layout.socket, pid, shutdown, supervisor: Some(supervisor) })
}

/// Stops a service a previous ecsd left running (it would hold the socket).
async fn stop_stale(layout: &Layout) {
    let Ok(text) = tokio::fs::read_to_string(&layout.pid_file).await else { return };
    let Ok(pid) = text.trim().parse::<u32>() else { return };
    let exe = tokio::fs::read_link(format!("/proc/{pid}/exe")).await;
    if !exe.as_ref().is_ok_and(|p| p.file_name().is_some_and(|n| n == "podman")) {
        return;
    }
    warn!(pid, "stopping the Podman service a previous ecsd left running");
    signal(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && tokio::fs::metadata(format!("/proc/{pid}/exe")).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, rustix::process::Signal::KILL);
}

async fn spawn(program: &Path, layout: &Layout) -> Result<Child, ServiceError> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&layout.log)
            .map_err(|source| ServiceError::Setup { path: layout.log.clone(), source })
    };
    let (log, log2) = (open()?, open()?);
    let _ = tokio::fs::remove_file(&layout.socket).await;
    let child = Command::new(program)
        .args(layout.args())
        .env("CONTAINERS_CONF", &layout.conf)
        // conmon inherits the service's working directory and writes files there (an empty
        // `oom` appeared in the directory ecsd was started from): keep them in the service's.
        .current_dir(&layout.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        // Its own process group: a Ctrl-C meant for ecsd must not reach the service first.
        .process_group(0)
        .spawn()
        .map_err(|source| ServiceError::Spawn { program: program.to_owned(), source })?;
    if let Some(pid) = child.id()
        && let Err(e) = tokio::fs::write(&layout.pid_file, format!("{pid}\n")).await
    {
        warn!(path = %layout.pid_file.display(), error = %e, "cannot write the Podman service pid file");
    }
    Ok(child)
}

async fn wait_ready(child: &mut Child, layout: &Layout) -> Result<(), ServiceError> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ServiceError::Exited { status: status.to_string(), log: layout.log.clone() });
        }
        if answers(&layout.socket).await {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            stop_child(child).await;
            return Err(ServiceError::NotReady {
                address: layout.socket.clone(),
                waited: READY_TIMEOUT,
                log: layout.log.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        signal(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        warn!(pid, "the Podman service ignored SIGTERM for {STOP_GRACE:?}; killing it");
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Restarts the service with backoff whenever it dies, until `shutdown`.
async fn supervise(
    program: PathBuf,
    layout: Layout,
    child: Child,
    pid: Arc<AtomicU32>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_secs(1);
    let mut child = Some(child);
    let mut started = Instant::now();
    loop {
        if let Some(running) = child.as_mut() {
            tokio::select! {
                status = running.wait() => {
                    pid.store(0, Ordering::SeqCst);
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    error!(%status, log = %layout.log.display(), "the Podman service exited; restarting it");
                    child = None;
                    if started.elapsed() > HEALTHY_RUN {
                        delay = Duration::from_secs(1);
                    }
                }
                () = shutdown.cancelled() => {
                    stop_child(running).await;
                    pid.store(0, Ordering::SeqCst);
                    let _ = tokio::fs::remove_file(&layout.pid_file).await;
                    info!("Podman service stopped");
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
        match spawn(&program, &layout).await {
            Ok(c) => {
                pid.store(c.id().unwrap_or(0), Ordering::SeqCst);
                info!(pid = c.id().unwrap_or(0), "Podman service restarted");
                started = Instant::now();
                child = Some(c);
            }
            Err(e) => error!(error = %crate::error_chain(&e), "cannot restart the Podman service"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_conf_live_under_the_data_dir() {
        let l = Layout::new(Path::new("/var/lib/ecsd"));
        assert_eq!(l.socket, Path::new("/var/lib/ecsd/podman/podman.sock"));
        let conf = l.containers_conf();
        for line in [
            "runtime = \"runc\"\n",
            "events_logger = \"file\"\n",
            "exit_command_delay = 5\n",
            "pids_limit = 0\n",
            "default_ulimits = []\n",
            "network_config_dir = \"/var/lib/ecsd/podman/net\"\n",
        ] {
            assert!(conf.contains(line), "{line:?} missing from:\n{conf}");
        }
        let args: Vec<String> = l.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            "--root /var/lib/ecsd/podman/root --runroot /var/lib/ecsd/podman/runroot --tmpdir \
             /var/lib/ecsd/podman/tmp --storage-driver overlay system service --time=0 \
             unix:///var/lib/ecsd/podman/podman.sock"
        );
    }

    #[tokio::test]
    async fn nothing_answers_at_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!answers(&dir.path().join("none.sock")).await);
    }
}
