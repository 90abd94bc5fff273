//! Outbound connectivity for the uplink namespace: slirp4netns attached to it, as Podman 4
//! attaches it to its rootless network namespace. slirp4netns makes a tap device in the
//! uplink (`tap0`, the `.100` of its subnet, default route via the `.2`) and carries what
//! leaves through it out of ecsd's own namespace as ordinary sockets of ecsd's user, so
//! netavark's masquerade in the uplink takes task traffic out through it. It needs
//! `/dev/net/tun` openable by that user (root can; an unprivileged user needs mode 0666).
//!
//! Supervised: one slirp4netns per uplink, killed and reaped at shutdown and when the handle
//! is dropped; it also exits by itself when ecsd dies, since its `--exit-fd` is a pipe whose
//! only writer is ecsd. Attaching never fails a task: without it tasks run with no way out,
//! ecsd says so once with the fix, and tries again (at most every [`RETRY_AFTER`]) at the next
//! task setup, so fixing `/dev/net/tun` or installing slirp4netns needs no restart.
//!
//! This module must not touch the uplink's own set-up (netavark's business); it only adds
//! the tap and its route, which go with the slirp4netns process.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use super::NetworkDef;

/// The tap device slirp4netns makes in the uplink.
pub(crate) const TAP: &str = "tap0";
/// slirp4netns's largest useful MTU (Podman's default): fewer, larger writes through it.
const MTU: &str = "65520";
/// How long slirp4netns may take to set the tap up before it is killed.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a failed attach the next task setup tries again (a busy RunTask loop
/// must not spawn slirp4netns for every task).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The subnets slirp4netns may use, in order: its default first (Podman's, and what the
/// tools' users know), then others, for when a task network overlaps it.
const SUBNETS: [&str; 4] = ["10.0.2.0/24", "10.255.254.0/24", "172.31.254.0/24", "192.168.254.0/24"];
/// How much of what slirp4netns says on stderr is kept for an error.
const STDERR_KEPT: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{} cannot be opened for reading and writing by this user", path.display())]
    TunUnusable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not installed", program.display())]
    NotInstalled { program: PathBuf },
    #[error("cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the pipes for slirp4netns")]
    Pipe(#[source] io::Error),
    #[error("{} exited ({status}) before the uplink's tap was up: {said}", program.display())]
    Exited { program: PathBuf, status: String, said: String },
    #[error("{} did not set the uplink's tap up within {after:?} and was killed", program.display())]
    NotReady { program: PathBuf, after: Duration },
}

impl OutboundError {
    /// What the operator can do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            OutboundError::TunUnusable { .. } => "as root, `chmod 0666 /dev/net/tun` (the usual udev mode)",
            OutboundError::NotInstalled { .. } => "install slirp4netns (`apt-get install slirp4netns`)",
            _ => "see slirp4netns's message",
        }
    }
}

/// What [`Outbound::ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// slirp4netns was attached already and still runs.
    Running,
    /// slirp4netns was attached now.
    Attached,
    /// The last attempt failed less than [`RETRY_AFTER`] ago: not tried.
    Deferred,
    /// The attempt failed (said in the log).
    Failed,
}

/// Where slirp4netns and `/dev/net/tun` are, and how it is attached.
#[derive(Debug, Clone)]
pub(crate) struct SlirpConfig {
    pub program: PathBuf,
    pub tun: PathBuf,
    /// `--cidr`: see [`subnet_for`].
    pub cidr: String,
    pub ready_timeout: Duration,
    pub retry_after: Duration,
}

/// The slirp4netns of an uplink namespace, attached on demand.
#[derive(Debug)]
pub(crate) struct Outbound {
    config: SlirpConfig,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    slirp: Option<Slirp>,
    /// When the last attempt failed.
    failed_at: Option<Instant>,
    /// The failure last warned about: the same one again is only a debug line.
    warned: Option<String>,
}

impl Outbound {
    pub(crate) fn new(config: SlirpConfig) -> Outbound {
        Outbound { config, state: tokio::sync::Mutex::default() }
    }

    /// Makes sure slirp4netns is attached to the uplink namespace at `netns`: starts it if it
    /// is not running (never started, exited, or failed more than [`RETRY_AFTER`] ago).
    /// Failures are logged (a warning once per distinct failure, naming the fix), not returned:
    /// tasks run without outbound connectivity meanwhile.
    pub(crate) async fn ensure(&self, netns: &Path) -> Outcome {
        let mut state = self.state.lock().await;
        if let Some(slirp) = &mut state.slirp {
            match slirp.exited() {
                None => return Outcome::Running,
                Some(status) => {
                    warn!(%status, said = %slirp.said(), "slirp4netns exited: tasks lost outbound connectivity; attaching it again");
                    state.slirp = None;
                }
            }
        }
        if let Some(at) = state.failed_at
            && at.elapsed() < self.config.retry_after
        {
            return Outcome::Deferred;
        }
        match Slirp::start(&self.config, netns).await {
            Ok(slirp) => {
                info!(netns = %netns.display(), pid = slirp.pid(), cidr = %self.config.cidr,
                      "slirp4netns attached: bridge and awsvpc tasks reach the outside through it");
                *state = State { slirp: Some(slirp), failed_at: None, warned: None };
                Outcome::Attached
            }
            Err(e) => {
                let said = crate::error_chain(&e);
                if state.warned.as_deref() != Some(said.as_str()) {
                    warn!(
                        "bridge and awsvpc tasks have no outbound connectivity: {said}; fix: {}. Tasks \
                         still start; the next task setup after the fix attaches slirp4netns, with no \
                         restart (tried at most every {:?})",
                        e.fix(),
                        self.config.retry_after
                    );
                    state.warned = Some(said);
                } else {
                    debug!(error = %said, "slirp4netns still cannot be attached");
                }
                state.failed_at = Some(Instant::now());
                Outcome::Failed
            }
        }
    }

    /// Stops slirp4netns (its tap and route go with it) and waits for it; the next
    /// [`Outbound::ensure`] starts a new one without waiting for [`RETRY_AFTER`].
    pub(crate) async fn stop(&self) {
        let mut state = self.state.lock().await;
        let slirp = state.slirp.take();
        state.failed_at = None;
        drop(state);
        if let Some(slirp) = slirp {
            slirp.stop().await;
        }
    }

    /// The pid of the running slirp4netns, if one was started.
    #[cfg(test)]
    pub(crate) async fn pid(&self) -> Option<u32> {
        self.state.lock().await.slirp.as_ref().and_then(Slirp::pid)
    }
}

/// A running slirp4netns. Dropping it closes the exit pipe and kills the process (tokio
/// reaps it); [`Slirp::stop`] also waits for it.
#[derive(Debug)]
struct Slirp {
    child: tokio::process::Child,
    /// The write end of `--exit-fd`: slirp4netns exits when it closes.
    exit: Option<OwnedFd>,
    /// The tail of what it said on stderr.
    said: Arc<Mutex<String>>,
}

impl Slirp {
    async fn start(config: &SlirpConfig, netns: &Path) -> Result<Slirp, OutboundError> {
        let program = &config.program;
        // Probe first: slirp4netns without tun fails only after forking into the namespace.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&config.tun)
            .map_err(|source| OutboundError::TunUnusable { path: config.tun.clone(), source })?;
        // Both pipes close-on-exec on ecsd's side; only slirp4netns's ends are inherited (and
        // closed here right after the spawn), so the exit pipe's only writer is ecsd.
        let (exit_read, exit_write) = std::io::pipe().map_err(OutboundError::Pipe)?;
        let (ready_read, ready_write) = std::io::pipe().map_err(OutboundError::Pipe)?;
        let (exit_read, ready_write): (OwnedFd, OwnedFd) = (exit_read.into(), ready_write.into());
        for fd in [&exit_read, &ready_write] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
                .map_err(|e| OutboundError::Pipe(io::Error::from_raw_os_error(e.raw_os_error())))?;
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("--configure")
            .arg(format!("--mtu={MTU}"))
            .arg("--disable-host-loopback")
            .arg(format!("--cidr={}", config.cidr))
            .arg(format!("--ready-fd={}", ready_write.as_raw_fd()))
            .arg(format!("--exit-fd={}", exit_read.as_raw_fd()))
            .arg("--netns-type=path")
            .arg(netns)
            .arg(TAP)
            .stdin(Stdio::null())
            // It reports its settings on stdout; errors go to stderr.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        drop((exit_read, ready_write));
        let mut child = spawned.map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => OutboundError::NotInstalled { program: program.clone() },
            _ => OutboundError::Spawn { program: program.clone(), source },
        })?;
        let said = Arc::new(Mutex::new(String::new()));
        if let Some(mut stderr) = child.stderr.take() {
            let said = said.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    debug!(said = %text.trim_end(), "slirp4netns");
                    let mut kept = said.lock().unwrap_or_else(|e| e.into_inner());
                    kept.push_str(&text);
                    if kept.len() > STDERR_KEPT {
                        let cut = kept.len() - STDERR_KEPT;
                        let cut = (cut..kept.len()).find(|i| kept.is_char_boundary(*i)).unwrap_or(0);
                        kept.drain(..cut);
                    }
                }
            });
        }
        let mut slirp = Slirp { child, exit: Some(exit_write.into()), said };
        let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(ready_read))
            .map_err(OutboundError::Pipe);
        let outcome = match ready {
            Err(e) => Err(Some(e)),
            Ok(mut ready) => {
                let mut byte = [0u8; 1];
                tokio::select! {
                    read = tokio::time::timeout(config.ready_timeout, ready.read(&mut byte)) => match read {
                        Ok(Ok(1)) => Ok(()),
                        // Closed without a word (it died, or never got that far): its status says why.
                        Ok(_) => Err(None),
                        Err(_) => Err(Some(OutboundError::NotReady { program: program.clone(), after: config.ready_timeout })),
                    },
                    _ = slirp.child.wait() => Err(None),
                }
            }
        };
        match outcome {
            Ok(()) => Ok(slirp),
            Err(e) => {
                let e = match e {
                    Some(e) => e,
                    None => {
                        let status =
                            match tokio::time::timeout(Duration::from_secs(5), slirp.child.wait()).await {
                                Ok(Ok(s)) => s.to_string(),
                                _ => "no exit status".into(),
                            };
                        // Let the reader catch its last words.
                        tokio::task::yield_now().await;
                        OutboundError::Exited { program: program.clone(), status, said: slirp.said() }
                    }
                };
                slirp.stop().await;
                Err(e)
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn said(&self) -> String {
        self.said.lock().unwrap_or_else(|e| e.into_inner()).trim().to_owned()
    }

    /// Closes its exit pipe (it exits by itself), kills it if it has not within a moment,
    /// and reaps it.
    async fn stop(mut self) {
        drop(self.exit.take());
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        debug!("slirp4netns stopped");
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        drop(self.exit.take());
        // kill_on_drop sends SIGKILL as well; tokio reaps it in the background.
        let _ = self.child.start_kill();
    }
}

/// The first of slirp4netns's candidate subnets that overlaps no task network, so a task's
/// address is never also one of slirp's (its `.2` gateway, `.3` DNS, `.100` tap).
pub(crate) fn subnet_for(networks: &[NetworkDef]) -> Option<&'static str> {
    SUBNETS.into_iter().find(|cidr| {
        let slirp = NetworkDef::new("slirp", cidr, Some("ecsd-slirp"), false).expect("valid candidates");
        !networks.iter().any(|n| n.contains(slirp.subnet) || slirp.contains(n.subnet))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stand-in for slirp4netns: records its command line in `<script>.calls`, fails with
    /// the text of `<script>.fail` when that exists, else says it is ready on `--ready-fd` and
    /// lives until `--exit-fd` closes, as slirp4netns does.
    const FAKE: &str = r#"#!/bin/bash
for a; do
  case $a in
  --exit-fd=*) e=${a#--exit-fd=} ;;
  --ready-fd=*) r=${a#--ready-fd=} ;;
  esac
done
echo "$*" >>"$0.calls"
if [[ -e $0.fail ]]; then cat "$0.fail" >&2; exit 3; fi
eval "printf 1 >&$r; exec $r>&-"
eval "exec cat <&$e >/dev/null"
"#;

    struct Fake {
        dir: tempfile::TempDir,
        program: PathBuf,
        tun: PathBuf,
    }

    fn fake() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let (program, tun) = write_fake(dir.path());
        Fake { dir, program, tun }
    }

    /// Writes the stand-in slirp4netns (its calls go to `<dir>/slirp4netns.calls`) and a
    /// usable stand-in for /dev/net/tun (a file this user can open) into `dir`.
    pub(crate) fn write_fake(dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("slirp4netns");
        std::fs::write(&program, FAKE).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tun = dir.join("tun");
        std::fs::write(&tun, b"").unwrap();
        (program, tun)
    }

    impl Fake {
        fn config(&self, retry_after: Duration) -> SlirpConfig {
            SlirpConfig {
                program: self.program.clone(),
                tun: self.tun.clone(),
                cidr: "10.0.2.0/24".into(),
                ready_timeout: Duration::from_secs(10),
                retry_after,
            }
        }

        fn calls(&self) -> Vec<String> {
            let calls =
                std::fs::read_to_string(self.dir.path().join("slirp4netns.calls")).unwrap_or_default();
            calls.lines().map(str::to_owned).collect()
        }

        fn netns(&self) -> PathBuf {
            self.dir.path().join("ecsd-uplink")
        }
    }

    /// Whether process `pid` is gone (not even a zombie: reaped).
    pub(crate) fn gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Whether process `pid` has exited (a zombie not reaped yet, or gone).
    fn exited(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The warnings logged while it lives (this thread's; the tests' runtime has one).
    struct Warnings(Arc<Mutex<Vec<u8>>>, #[allow(dead_code)] tracing::subscriber::DefaultGuard);

    impl Warnings {
        fn capture() -> Warnings {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let sink = buf.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(move || Sink(sink.clone()))
                .finish();
            Warnings(buf, tracing::subscriber::set_default(subscriber))
        }

        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(str::to_owned).collect()
        }
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn slirps_subnet_is_its_default_unless_a_task_network_overlaps_it() {
        let net = |cidr| NetworkDef::new("n", cidr, Some("ecsd-n"), true).unwrap();
        assert_eq!(subnet_for(&[net("10.217.0.0/16")]), Some("10.0.2.0/24"));
        assert_eq!(subnet_for(&[net("10.0.2.128/25")]), Some("10.255.254.0/24"));
        assert_eq!(subnet_for(&[net("10.0.0.0/8")]), Some("172.31.254.0/24"));
        assert_eq!(subnet_for(&[net("10.0.0.0/8"), net("172.16.0.0/12")]), Some("192.168.254.0/24"));
        assert_eq!(subnet_for(&[net("10.0.0.0/8"), net("172.16.0.0/12"), net("192.168.0.0/16")]), None);
    }

    #[tokio::test]
    async fn slirp_is_attached_once_with_its_command_line_and_stopped_and_reaped() {
        let f = fake();
        let out = Outbound::new(f.config(RETRY_AFTER));
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Attached);
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Running);
        let calls = f.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let netns = f.netns().display().to_string();
        let words: Vec<&str> = calls[0].split(' ').collect();
        let fd = |flag: &str| words.iter().find_map(|w| w.strip_prefix(flag)?.parse::<u32>().ok());
        let (ready, exit) = (fd("--ready-fd=").unwrap(), fd("--exit-fd=").unwrap());
        assert_eq!(
            words,
            [
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--cidr=10.0.2.0/24",
                &format!("--ready-fd={ready}"),
                &format!("--exit-fd={exit}"),
                "--netns-type=path",
                &netns,
                "tap0"
            ]
        );
        let pid = out.pid().await.unwrap();
        out.stop().await;
        assert!(gone(pid), "stopped and reaped");
        assert_eq!(out.pid().await, None);
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Attached, "started again after a stop");
        let pid = out.pid().await.unwrap();
        drop(out);
        wait_until("the dropped slirp4netns to be killed and reaped", || gone(pid)).await;
    }

    #[tokio::test]
    async fn slirp_exits_by_itself_when_its_exit_pipe_closes() {
        let f = fake();
        let mut slirp = Slirp::start(&f.config(RETRY_AFTER), &f.netns()).await.unwrap();
        assert_eq!(slirp.exited(), None);
        // What ecsd's death does: the only writer of the pipe goes, nothing is killed.
        drop(slirp.exit.take());
        let status =
            tokio::time::timeout(Duration::from_secs(10), slirp.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "it ended by itself: {status}");
    }

    #[tokio::test]
    async fn a_slirp_that_died_is_attached_again_at_the_next_setup() {
        let f = fake();
        let warnings = Warnings::capture();
        let out = Outbound::new(f.config(Duration::from_secs(3600)));
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Attached);
        let pid = out.pid().await.unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        wait_until("the killed slirp4netns to exit", || exited(pid)).await;
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Attached);
        assert_eq!(f.calls().len(), 2);
        let said = warnings.lines();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("slirp4netns exited"), "{said:?}");
    }

    #[tokio::test]
    async fn without_tun_one_warning_names_the_fix_retries_wait_and_the_fix_needs_no_restart() {
        let f = fake();
        std::fs::remove_file(&f.tun).unwrap();
        let warnings = Warnings::capture();
        // A busy RunTask loop: one attempt, then none until RETRY_AFTER has passed.
        let out = Outbound::new(f.config(Duration::from_secs(3600)));
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Failed);
        for _ in 0..5 {
            assert_eq!(out.ensure(&f.netns()).await, Outcome::Deferred);
        }
        assert_eq!(f.calls().len(), 0, "slirp4netns is not even started without tun");
        let said = warnings.lines();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("tasks have no outbound connectivity"), "{said:?}");
        assert!(said[0].contains("chmod 0666 /dev/net/tun"), "{said:?}");

        // Retried at every setup (no wait): still one warning, and the fix takes at once.
        let out = Outbound::new(f.config(Duration::ZERO));
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Failed);
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Failed);
        assert_eq!(warnings.lines().len(), 2, "one more for the second Outbound: {:?}", warnings.lines());
        std::fs::write(&f.tun, b"").unwrap();
        assert_eq!(out.ensure(&f.netns()).await, Outcome::Attached);
        assert_eq!(f.calls().len(), 1);
        out.stop().await;
    }

    #[tokio::test]
    async fn a_slirp_that_fails_says_why_and_a_missing_one_names_the_package() {
        let f = fake();
        std::fs::write(f.dir.path().join("slirp4netns.fail"), "open(\"/dev/net/tun\"): Permission denied\n")
            .unwrap();
        let e = Slirp::start(&f.config(RETRY_AFTER), &f.netns()).await.unwrap_err();
        assert!(matches!(e, OutboundError::Exited { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(
            text.ends_with("before the uplink's tap was up: open(\"/dev/net/tun\"): Permission denied"),
            "{text}"
        );

        let missing =
            SlirpConfig { program: f.dir.path().join("nowhere/slirp4netns"), ..f.config(RETRY_AFTER) };
        let e = Slirp::start(&missing, &f.netns()).await.unwrap_err();
        assert!(matches!(e, OutboundError::NotInstalled { .. }), "{e:?}");
        assert_eq!(e.fix(), "install slirp4netns (`apt-get install slirp4netns`)");
    }
}
