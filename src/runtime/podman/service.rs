//! The Podman service ecsd starts and supervises: `podman system service --time=0` on a socket
//! under the data dir, with a private store and a containers.conf ecsd writes.
//!
//! Layout, under `DATA_DIR/podman/` (as root, all of it) and `RUN_DIR/podman/` (a rootless
//! ecsd's `$XDG_RUNTIME_DIR/ecsd/podman`: what lives only while the machine is up):
//!
//! | path | what |
//! |---|---|
//! | `containers.conf` | written on every start (see [`Layout::containers_conf`]) |
//! | `root/` | containers/storage's graph root |
//! | `net/` | netavark's config dir for Podman's own networks (ecsd's tasks use none of them) |
//! | `home/` | the service's HOME: `.config/containers/registries.d/ecsd.yaml` (see [`Layout::registries_d`]) |
//! | `sigstore/` | where that puts the signature lookaside, instead of `/var/lib/containers/sigstore` |
//! | `podman.log` | the service's stdout and stderr, appended |
//! | run: `runroot/` | containers/storage's run root (libpod refuses one over 50 bytes) |
//! | run: `tmp/` | libpod's tmpdir: exit files, lock files, the `events/events.log` that `since=` replays |
//! | run: `podman.sock` | the REST socket |
//! | run: `podman.pid` | pid of the running instance |
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
/// libpod refuses a longer `--runroot` ("the specified runroot is longer than 50 characters").
const RUNROOT_MAX: usize = 50;
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
    #[error(
        "Podman's run root {path} is longer than libpod's limit of {RUNROOT_MAX} bytes; use a shorter data dir (rootless: a shorter XDG_RUNTIME_DIR)"
    )]
    RunRootTooLong { path: PathBuf },
    #[error(
        "ROOTLESSKIT_PARENT_EUID and ROOTLESSKIT_PARENT_EGID are not set: a rootless ecsd's Podman service runs only inside the user namespace that ecsd serve --rootless makes"
    )]
    NotUnderRootlesskit,
    #[error("no podman binary on PATH; install podman or use --runtime containerd")]
    NotInstalled,
    #[error("cannot start {program}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("the Podman service exited while starting ({status}); see {log}")]
    Exited { status: String, log: PathBuf },
    #[error("the Podman service did not answer at {address} within {waited:?}; see {log}")]
    NotReady { address: PathBuf, waited: Duration, log: PathBuf },
}

/// The unprivileged user a rootless ecsd runs as, whose user namespace (rootlesskit's, where
/// ecsd is uid 0) its Podman service shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootlessUser {
    pub uid: u32,
    pub gid: u32,
}

impl RootlessUser {
    /// What makes the service rootless Podman that is already in its user namespace, as
    /// Podman's own pause process sets for the Podman it re-executes: libpod then keeps its
    /// rootless behaviour (no cgroup path for runc where cgroup v1 gives the user none, the
    /// user's uid in its checks) instead of making a user namespace of its own, whose network
    /// namespaces ecsd's task namespaces could not be joined from.
    fn env(&self) -> [(&'static str, String); 3] {
        [
            ("_CONTAINERS_USERNS_CONFIGURED", "done".to_owned()),
            ("_CONTAINERS_ROOTLESS_UID", self.uid.to_string()),
            ("_CONTAINERS_ROOTLESS_GID", self.gid.to_string()),
        ]
    }
}

/// Paths of the supervised service under the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    /// Where the run root, tmpdir, socket and pid file are: `dir` unless rootless.
    pub run: PathBuf,
    pub conf: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// Set for a rootless ecsd's service (see [`RootlessUser::env`]).
    pub rootless: Option<RootlessUser>,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Self::with_run(data_dir, data_dir)
    }

    /// A rootless ecsd's: what lives only while the machine is up under `run_dir/podman`, and
    /// the service rootless Podman in ecsd's user namespace.
    pub fn rootless(data_dir: &Path, run_dir: &Path, user: RootlessUser) -> Self {
        Layout { rootless: Some(user), ..Self::with_run(data_dir, run_dir) }
    }

    /// The paths, with what lives only while the machine is up under `run_dir/podman`.
    pub fn with_run(data_dir: &Path, run_dir: &Path) -> Self {
        let (dir, run) = (data_dir.join("podman"), run_dir.join("podman"));
        Layout {
            conf: dir.join("containers.conf"),
            socket: run.join("podman.sock"),
            log: dir.join("podman.log"),
            pid_file: run.join("podman.pid"),
            dir,
            run,
            rootless: None,
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// The registries.d file in the service's HOME, which containers/image reads before
    /// `/etc/containers/registries.d`: signatures looked aside in ecsd's own directory. Without
    /// it a pull reads `/var/lib/containers/sigstore`, which is not ecsd's, and which a rootless
    /// ecsd's service (uid 0 only in its user namespace) cannot read once root's Podman made
    /// `/var/lib/containers` (mode 0700): every pull then failed with "permission denied".
    pub fn registries_d(&self) -> (PathBuf, String) {
        let url = format!("file://{}", self.dir.join("sigstore").display());
        let text = format!(
            "# Written by ecsd at every start of its Podman service; edits are lost.\n\
             default-docker:\n  sigstore: {}\n",
            yaml_string(&url)
        );
        (self.home().join(".config/containers/registries.d/ecsd.yaml"), text)
    }

    fn runroot(&self) -> PathBuf {
        self.run.join("runroot")
    }

    /// The service's containers.conf: runc (crun fails on hybrid cgroups), cgroupfs (no
    /// systemd needed), exits and events in files that survive a service restart, exec
    /// sessions cleaned up 5 s after they end (not 5 min), no pids limit or ulimits of
    /// Podman's own (the spec says what a container gets), and Docker's capabilities as the
    /// defaults (see [`DEFAULT_CAPABILITIES`]). Locks are files under the tmpdir, not libpod's
    /// shared-memory segment in `/dev/shm`, which outlives the service and which a rootless
    /// ecsd's service (uid 0 only in its user namespace) could not open if root's exists.
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
             lock_type = \"file\"\n\
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
        flag("--runroot", self.runroot());
        flag("--tmpdir", self.run.join("tmp"));
        args.extend(["--storage-driver".into(), "overlay".into(), "system".into(), "service".into()]);
        args.push("--time=0".into());
        let mut uri = std::ffi::OsString::from("unix://");
        uri.push(&self.socket);
        args.push(uri);
        args
    }
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's).
fn yaml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
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
    start_in(Layout::new(data_dir)).await
}

/// Starts the service laid out as `layout` and waits until it answers.
pub async fn start_in(layout: Layout) -> Result<PodmanService, ServiceError> {
    if layout.socket.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(ServiceError::SocketPathTooLong { path: layout.socket });
    }
    if layout.runroot().as_os_str().len() > RUNROOT_MAX {
        return Err(ServiceError::RunRootTooLong { path: layout.runroot() });
    }
    let program = find_program("podman").ok_or(ServiceError::NotInstalled)?;
    let setup = |path: &Path| {
        let path = path.to_owned();
        move |source| ServiceError::Setup { path, source }
    };
    for dir in [layout.dir.clone(), layout.dir.join("net"), layout.run.clone()] {
        tokio::fs::create_dir_all(&dir).await.map_err(setup(&dir))?;
    }
    stop_stale(&layout).await;
    tokio::fs::write(&layout.conf, layout.containers_conf()).await.map_err(setup(&layout.conf))?;
    let (registries_d, text) = layout.registries_d();
    if let Some(dir) = registries_d.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(setup(dir))?;
    }
    tokio::fs::write(&registries_d, text).await.map_err(setup(&registries_d))?;

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
        .env("HOME", layout.home())
        .envs(layout.rootless.iter().flat_map(|u| u.env()))
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
            "lock_type = \"file\"\n",
            "pids_limit = 0\n",
            "default_ulimits = []\n",
            "network_config_dir = \"/var/lib/ecsd/podman/net\"\n",
        ] {
            assert!(conf.contains(line), "{line:?} missing from:\n{conf}");
        }
        let (path, text) = l.registries_d();
        assert_eq!(path, Path::new("/var/lib/ecsd/podman/home/.config/containers/registries.d/ecsd.yaml"));
        assert!(
            text.ends_with("default-docker:\n  sigstore: \"file:///var/lib/ecsd/podman/sigstore\"\n"),
            "{text}"
        );
        let args: Vec<String> = l.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            "--root /var/lib/ecsd/podman/root --runroot /var/lib/ecsd/podman/runroot --tmpdir \
             /var/lib/ecsd/podman/tmp --storage-driver overlay system service --time=0 \
             unix:///var/lib/ecsd/podman/podman.sock"
        );
    }

    #[test]
    fn rootless_keeps_what_lives_while_the_machine_is_up_in_the_run_dir() {
        let user = RootlessUser { uid: 1001, gid: 1002 };
        let l = Layout::rootless(Path::new("/home/u/.local/share/ecsd"), Path::new("/run/user/7/ecsd"), user);
        assert_eq!(
            user.env().map(|(k, v)| format!("{k}={v}")).join(" "),
            "_CONTAINERS_USERNS_CONFIGURED=done _CONTAINERS_ROOTLESS_UID=1001 _CONTAINERS_ROOTLESS_GID=1002"
        );
        assert_eq!((l.conf.parent(), l.log.parent()), (Some(l.dir.as_path()), Some(l.dir.as_path())));
        assert_eq!(l.socket, Path::new("/run/user/7/ecsd/podman/podman.sock"));
        assert_eq!(l.pid_file, Path::new("/run/user/7/ecsd/podman/podman.pid"));
        let args: Vec<String> = l.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args[..6].join(" "),
            "--root /home/u/.local/share/ecsd/podman/root --runroot /run/user/7/ecsd/podman/runroot \
             --tmpdir /run/user/7/ecsd/podman/tmp"
        );
    }

    #[tokio::test]
    async fn a_run_root_libpod_would_refuse_is_named_before_it_starts() {
        let long = Path::new("/tmp/a-data-dir-whose-path-is-long-enough-for-libpod");
        let e = start_in(Layout::new(long)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "Podman's run root /tmp/a-data-dir-whose-path-is-long-enough-for-libpod/podman/runroot is longer \
             than libpod's limit of 50 bytes; use a shorter data dir (rootless: a shorter XDG_RUNTIME_DIR)"
        );
        assert!(!long.exists(), "nothing was made");
    }

    #[tokio::test]
    async fn nothing_answers_at_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!answers(&dir.path().join("none.sock")).await);
    }
}
