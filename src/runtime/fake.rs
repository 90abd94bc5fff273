//! An in-memory runtime for testing the engine and the API without root or containerd;
//! compiled only for tests (`cfg(test)` or the `test-support` feature), never shipped.
//!
//! Processes do not run: a test decides when they exit, and signals behave like a
//! well-behaved process (SIGTERM/SIGKILL end it with 128+signal) unless told otherwise.
//! Execs either follow a script (what they print, how they exit; by default they print
//! `exit 0` and exit 0), or are handed to the test as a [`FakeExec`] to drive: the test reads
//! what the caller writes to stdin, writes the output, sees resizes and signals, and ends the
//! process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Backend, ConsoleSize, ContainerState, Event, ExecControl, ExecOutput, ExecProcess, ExecSpec, ExecStdin,
    Image, ImageConfig, ProcessStatus, Rootfs, Runtime, RuntimeError, Stdio,
};

/// Pipes between a caller and a driven exec hold this much, as a kernel pipe does.
const PIPE_CAPACITY: usize = 64 << 10;

#[derive(Debug, Default)]
struct State {
    images: HashMap<String, ImageConfig>,
    /// What the fake registry serves, by normalised reference.
    remote: HashMap<String, ImageConfig>,
    /// Pulls asked for, in order.
    pulls: Vec<String>,
    /// Pulls that fail with this error.
    pull_errors: HashMap<String, super::registry::RegistryError>,
    /// Image → last-used time, as `image_used` recorded it.
    used: HashMap<String, f64>,
    containers: BTreeMap<String, (BTreeMap<String, String>, ProcessStatus)>,
    ignore_signals: HashSet<i32>,
    ignoring: HashSet<String>,
    execs: HashMap<String, ExecMode>,
    exec_log: Vec<(String, ExecSpec)>,
    next_exec: u64,
    signals: Vec<(String, i32)>,
    unavailable: bool,
    /// Calls refused while unavailable.
    refused: usize,
    next_pid: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    /// The subscriber of the newest `events()` call (a restarted engine subscribes again).
    events_tx: Mutex<Option<mpsc::Sender<Event>>>,
    /// While true, `start` waits (the container stays created), as when the caller dies
    /// between creating a container and starting it.
    starts_held: watch::Sender<bool>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            state: Mutex::new(State { next_pid: 100, ..State::default() }),
            events_tx: Mutex::new(None),
            starts_held: watch::Sender::new(false),
        }
    }
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes an image available under its normalised name, present and in the fake registry.
    pub fn add_image(&self, name: &str, config: ImageConfig) {
        let mut s = self.lock();
        s.images.insert(name.to_owned(), config.clone());
        s.remote.insert(name.to_owned(), config);
    }

    /// Makes an image available from the fake registry (not present until pulled).
    pub fn add_remote_image(&self, name: &str, config: ImageConfig) {
        self.lock().remote.insert(name.to_owned(), config);
    }

    /// Pulls of `name` fail with `error` from now on.
    pub fn fail_pull(&self, name: &str, error: super::registry::RegistryError) {
        self.lock().pull_errors.insert(name.to_owned(), error);
    }

    /// The references pulled so far, in order.
    pub fn pulls(&self) -> Vec<String> {
        self.lock().pulls.clone()
    }

    /// Whether the image is present (imported or pulled).
    pub fn has_image(&self, name: &str) -> bool {
        self.lock().images.contains_key(name)
    }

    /// Containers whose label `key` is `value`, by runtime id.
    pub fn find(&self, key: &str, value: &str) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, (labels, _))| labels.get(key).map(String::as_str) == Some(value))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn status(&self, id: &str) -> Option<ProcessStatus> {
        self.lock().containers.get(id).map(|(_, s)| *s)
    }

    /// Ends a running container's process with `code`.
    pub async fn exit(&self, id: &str, code: i32) {
        let at = now();
        let pid = {
            let mut s = self.lock();
            let Some((_, st)) = s.containers.get_mut(id) else { return };
            let ProcessStatus::Running { pid } = *st else { return };
            *st = ProcessStatus::Exited { code, at };
            pid
        };
        self.report_exit(id, pid, code, at).await;
    }

    /// Reports an exit of process `pid` of container `id` without changing the container,
    /// as containerd does when the exit of a removed earlier incarnation arrives late.
    pub async fn report_exit(&self, id: &str, pid: u32, code: i32, at: f64) {
        let tx = self.events_tx.lock().ok().and_then(|t| t.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Event::Exit { id: id.to_owned(), pid, code, at }).await;
        }
    }

    /// The container disappears without an exit being reported (as after a host reboot).
    pub fn forget(&self, id: &str) {
        self.lock().containers.remove(id);
    }

    /// The container ignores these signals (SIGKILL cannot be ignored).
    pub fn ignore_signal(&self, id: &str, signal: i32) {
        let mut s = self.lock();
        s.ignore_signals.insert(signal);
        s.ignoring.insert(id.to_owned());
    }

    /// Health checks (every exec) of this container print `exit CODE` and exit with `code`
    /// from now on.
    pub fn set_health(&self, id: &str, code: i32) {
        self.script_exec(
            id,
            ExecScript {
                stdout: format!("exit {code}").into_bytes(),
                exit_code: code,
                ..ExecScript::default()
            },
        );
    }

    /// Every exec in container `id` follows `script` from now on.
    pub fn script_exec(&self, id: &str, script: ExecScript) {
        self.lock().execs.insert(id.to_owned(), ExecMode::Script(script));
    }

    /// Every exec in container `id` is handed to the test from now on, as a [`FakeExec`] on
    /// the returned channel, to be driven by it.
    pub fn drive_execs(&self, id: &str) -> mpsc::UnboundedReceiver<FakeExec> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().execs.insert(id.to_owned(), ExecMode::Drive(tx));
        rx
    }

    /// The execs started so far: container id and spec, in order.
    pub fn execs(&self) -> Vec<(String, ExecSpec)> {
        self.lock().exec_log.clone()
    }

    /// The signals sent so far, in order.
    pub fn signals(&self) -> Vec<(String, i32)> {
        self.lock().signals.clone()
    }

    /// Makes `start` wait until released (see [`FakeRuntime::starts_held`]).
    pub fn hold_starts(&self, held: bool) {
        self.starts_held.send_replace(held);
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// How many calls were refused because the runtime was set unavailable.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    fn check(&self) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        if s.unavailable {
            s.refused += 1;
            Err(RuntimeError::Unavailable {
                runtime: Backend::Fake,
                address: "fake".into(),
                message: "set unavailable by the test".into(),
            })
        } else {
            Ok(())
        }
    }
}

fn now() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_millis() as f64 / 1000.0
}

fn fake_image(reference: &str, config: ImageConfig) -> Image {
    Image {
        name: reference.to_owned(),
        digest: format!("sha256:{:064x}", reference.len()),
        config_digest: format!("sha256:{:064x}", reference.len() + 1),
        config,
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn pull(&self, reference: &str, _options: super::PullOptions) -> Result<Image, RuntimeError> {
        self.check()?;
        let mut s = self.lock();
        s.pulls.push(reference.to_owned());
        if let Some(error) = s.pull_errors.get(reference).cloned() {
            return Err(RuntimeError::pull(reference, error));
        }
        let Some(config) = s.remote.get(reference).cloned() else {
            return Err(RuntimeError::pull(
                reference,
                super::registry::RegistryError::NotFound {
                    reference: reference.to_owned(),
                    code: Some("MANIFEST_UNKNOWN".into()),
                    message: Some("manifest unknown".into()),
                },
            ));
        };
        s.images.insert(reference.to_owned(), config.clone());
        Ok(fake_image(reference, config))
    }

    async fn images(&self) -> Result<Vec<super::ImageSummary>, RuntimeError> {
        self.check()?;
        let s = self.lock();
        let mut out: Vec<super::ImageSummary> = s
            .images
            .keys()
            .map(|name| super::ImageSummary {
                name: name.clone(),
                digest: fake_image(name, ImageConfig::default()).digest,
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 0,
                created_at: 0.0,
                pulled_at: s.pulls.contains(name).then_some(0.0),
                last_used_at: s.used.get(name).copied(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError> {
        self.check()?;
        match self.lock().images.remove(reference) {
            Some(_) => Ok(()),
            None => Err(RuntimeError::ImageNotFound {
                reference: reference.to_owned(),
                runtime: Backend::Fake,
                store: "fake".into(),
            }),
        }
    }

    async fn image_used(&self, reference: &str, at: f64) -> Result<(), RuntimeError> {
        self.lock().used.insert(reference.to_owned(), at);
        Ok(())
    }

    async fn image(&self, reference: &str) -> Result<Image, RuntimeError> {
        self.check()?;
        let config =
            self.lock().images.get(reference).cloned().ok_or_else(|| RuntimeError::ImageNotFound {
                reference: reference.to_owned(),
                runtime: Backend::Fake,
                store: "fake".into(),
            })?;
        Ok(fake_image(reference, config))
    }

    async fn prepare(&self, _id: &str, _image: &Image) -> Result<Rootfs, RuntimeError> {
        self.check()?;
        Ok(Rootfs { layers: vec![] })
    }

    async fn create(
        &self,
        id: &str,
        _spec: &oci_spec::runtime::Spec,
        labels: &BTreeMap<String, String>,
        _stdio: &Stdio,
    ) -> Result<(), RuntimeError> {
        self.check()?;
        let mut s = self.lock();
        if s.containers.contains_key(id) {
            return Err(RuntimeError::AlreadyExists { what: "container", id: id.to_owned() });
        }
        s.containers.insert(id.to_owned(), (labels.clone(), ProcessStatus::Created));
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let _ = self.starts_held.subscribe().wait_for(|held| !held).await;
        self.check()?;
        let mut s = self.lock();
        s.next_pid += 1;
        let pid = s.next_pid;
        match s.containers.get_mut(id) {
            Some((_, st @ ProcessStatus::Created)) => {
                *st = ProcessStatus::Running { pid };
                Ok(pid)
            }
            _ => Err(RuntimeError::NotFound { what: "task", id: id.to_owned() }),
        }
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.check()?;
        let ends = {
            let mut s = self.lock();
            s.signals.push((id.to_owned(), signal));
            let ignored = signal != 9 && s.ignoring.contains(id) && s.ignore_signals.contains(&signal);
            matches!(s.containers.get(id), Some((_, ProcessStatus::Running { .. })))
                && !ignored
                && matches!(signal, 2 | 9 | 15 | 10)
        };
        if ends {
            self.exit(id, 128 + signal).await;
        }
        Ok(())
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecProcess, RuntimeError> {
        self.check()?;
        let (mode, exec_id) = {
            let mut s = self.lock();
            match s.containers.get(container_id) {
                Some((_, ProcessStatus::Running { .. })) => {}
                Some(_) => {
                    return Err(RuntimeError::WrongState {
                        operation: "exec",
                        what: "task",
                        id: container_id.to_owned(),
                        message: "the container's process is not running".into(),
                    });
                }
                None => return Err(RuntimeError::NotFound { what: "task", id: container_id.to_owned() }),
            }
            s.exec_log.push((container_id.to_owned(), spec.clone()));
            s.next_exec += 1;
            let mode = s.execs.get(container_id).cloned().unwrap_or_else(|| {
                ExecMode::Script(ExecScript { stdout: b"exit 0".to_vec(), ..ExecScript::default() })
            });
            (mode, format!("fake-exec-{}", s.next_exec))
        };
        match mode {
            ExecMode::Script(script) => Ok(scripted(exec_id, &spec, script)),
            ExecMode::Drive(tx) => {
                let (process, driven) = driven(exec_id, container_id, spec);
                // A test that stopped listening gets a process that never ends by itself.
                let _ = tx.send(driven);
                Ok(process)
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<Option<(i32, f64)>, RuntimeError> {
        self.check()?;
        let mut s = self.lock();
        match s.containers.get(id).map(|(_, st)| *st) {
            Some(ProcessStatus::Running { .. }) => Err(RuntimeError::StillRunning { id: id.to_owned() }),
            Some(ProcessStatus::Exited { code, at }) => {
                s.containers.remove(id);
                Ok(Some((code, at)))
            }
            Some(_) => {
                s.containers.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        self.check()?;
        Ok(self
            .lock()
            .containers
            .iter()
            .map(|(id, (labels, status))| ContainerState {
                id: id.clone(),
                labels: labels.clone(),
                status: *status,
            })
            .collect())
    }

    fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(1024);
        if let Ok(mut t) = self.events_tx.lock() {
            *t = Some(tx);
        }
        rx
    }
}

/// What a scripted exec prints and how it ends. With a terminal, stderr goes to stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecScript {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

#[derive(Debug, Clone)]
enum ExecMode {
    Script(ExecScript),
    Drive(mpsc::UnboundedSender<FakeExec>),
}

fn scripted(exec_id: String, spec: &ExecSpec, script: ExecScript) -> ExecProcess {
    let (stdout, stderr) = if spec.terminal() {
        ([script.stdout, script.stderr].concat(), None)
    } else {
        (script.stdout, Some(script.stderr))
    };
    let stdin = spec.stdin.then(|| Box::new(tokio::io::sink()) as ExecStdin);
    let stdout = Some(Box::new(std::io::Cursor::new(stdout)) as ExecOutput);
    let stderr = stderr.map(|e| Box::new(std::io::Cursor::new(e)) as ExecOutput);
    let (exit, exited) = watch::channel(Some(script.exit_code));
    let control = FakeControl {
        id: exec_id,
        signals: None,
        resizes: None,
        exit: exited,
        _exit: Some(exit),
        _dropped: CancellationToken::new().drop_guard(),
    };
    ExecProcess::new(stdin, stdout, stderr, Box::new(control))
}

fn driven(exec_id: String, container_id: &str, spec: ExecSpec) -> (ExecProcess, FakeExec) {
    let (stdin, peer_stdin) = if spec.stdin {
        let (caller, peer) = tokio::io::duplex(PIPE_CAPACITY);
        (Some(Box::new(caller) as ExecStdin), Some(peer))
    } else {
        (None, None)
    };
    let (peer_stdout, stdout) = tokio::io::duplex(PIPE_CAPACITY);
    let (stderr, peer_stderr) = if spec.terminal() {
        (None, None)
    } else {
        let (peer, caller) = tokio::io::duplex(PIPE_CAPACITY);
        (Some(Box::new(caller) as ExecOutput), Some(peer))
    };
    let (signal_tx, signals) = mpsc::unbounded_channel();
    let (resize_tx, resizes) = mpsc::unbounded_channel();
    let (exit, exited) = watch::channel(None);
    let dropped = CancellationToken::new();
    let control = FakeControl {
        id: exec_id.clone(),
        signals: Some(signal_tx),
        resizes: Some(resize_tx),
        exit: exited,
        _exit: None,
        _dropped: dropped.clone().drop_guard(),
    };
    let process = ExecProcess::new(stdin, Some(Box::new(stdout)), stderr, Box::new(control));
    let driven = FakeExec {
        id: exec_id,
        container_id: container_id.to_owned(),
        spec,
        stdin: peer_stdin,
        stdout: Some(peer_stdout),
        stderr: peer_stderr,
        signals,
        resizes,
        exit,
        dropped,
    };
    (process, driven)
}

/// An exec driven by the test (see [`FakeRuntime::drive_execs`]).
#[derive(Debug)]
pub struct FakeExec {
    pub id: String,
    pub container_id: String,
    pub spec: ExecSpec,
    /// What the caller writes; end-of-file once it closes stdin.
    pub stdin: Option<DuplexStream>,
    /// What is written here reaches the caller's stdout (with a terminal: everything).
    pub stdout: Option<DuplexStream>,
    /// What is written here reaches the caller's stderr (`None` with a terminal).
    pub stderr: Option<DuplexStream>,
    signals: mpsc::UnboundedReceiver<i32>,
    resizes: mpsc::UnboundedReceiver<ConsoleSize>,
    exit: watch::Sender<Option<i32>>,
    dropped: CancellationToken,
}

impl FakeExec {
    /// The next signal the caller sends (`None` once the caller's handle is gone).
    pub async fn next_signal(&mut self) -> Option<i32> {
        self.signals.recv().await
    }

    /// The next terminal size the caller sets (`None` once the caller's handle is gone).
    pub async fn next_resize(&mut self) -> Option<ConsoleSize> {
        self.resizes.recv().await
    }

    /// Ends the process with `code`: its output closes and the caller's `wait` returns `code`.
    pub fn exit(&mut self, code: i32) {
        self.stdout = None;
        self.stderr = None;
        self.exit.send_replace(Some(code));
    }

    /// Resolves once the caller has dropped its handle (the runtime would kill the process).
    pub async fn dropped(&self) {
        self.dropped.cancelled().await
    }
}

#[derive(Debug)]
struct FakeControl {
    id: String,
    signals: Option<mpsc::UnboundedSender<i32>>,
    resizes: Option<mpsc::UnboundedSender<ConsoleSize>>,
    exit: watch::Receiver<Option<i32>>,
    /// A scripted process has ended already; its sender lives with the handle.
    _exit: Option<watch::Sender<Option<i32>>>,
    _dropped: DropGuard,
}

impl FakeControl {
    fn gone(&self) -> RuntimeError {
        RuntimeError::NotFound { what: "exec'd process", id: self.id.clone() }
    }
}

#[async_trait]
impl ExecControl for FakeControl {
    fn id(&self) -> &str {
        &self.id
    }

    async fn resize(&self, size: ConsoleSize) -> Result<(), RuntimeError> {
        match &self.resizes {
            Some(tx) if self.exit.borrow().is_none() => tx.send(size).map_err(|_| self.gone()),
            _ => Err(self.gone()),
        }
    }

    async fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        match &self.signals {
            Some(tx) if self.exit.borrow().is_none() => tx.send(signal).map_err(|_| self.gone()),
            _ => Err(self.gone()),
        }
    }

    async fn wait(&self) -> Result<i32, RuntimeError> {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(code) => (*code).ok_or_else(|| self.gone()),
            // The test dropped its FakeExec without ending it: the process vanished.
            Err(_) => Err(self.gone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::runtime::run_to_completion;

    async fn running(id: &str) -> FakeRuntime {
        let fake = FakeRuntime::default();
        let labels = BTreeMap::new();
        let stdio = Stdio { log_dir: "/nonexistent".into(), terminal: false };
        fake.create(id, &oci_spec::runtime::Spec::default(), &labels, &stdio).await.unwrap();
        fake.start(id).await.unwrap();
        fake
    }

    fn process(args: &[&str]) -> oci_spec::runtime::Process {
        let mut p = oci_spec::runtime::Process::default();
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        p
    }

    #[tokio::test]
    async fn scripted_execs_print_and_exit_as_told() {
        let fake = running("c1").await;
        let r = run_to_completion(&fake, "c1", process(&["true"]), Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.exit_code, r.output.as_str()), (0, "exit 0"));
        fake.script_exec(
            "c1",
            ExecScript { stdout: b"out\n".to_vec(), stderr: b"err\n".to_vec(), exit_code: 3 },
        );
        let r = run_to_completion(&fake, "c1", process(&["check"]), Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.exit_code, 3);
        assert!(r.output.contains("out\n") && r.output.contains("err\n"), "{r:?}");
        let logged: Vec<_> = fake.execs().into_iter().map(|(c, s)| (c, s.process.args().clone())).collect();
        assert_eq!(
            logged,
            vec![
                ("c1".to_owned(), Some(vec!["true".to_owned()])),
                ("c1".to_owned(), Some(vec!["check".to_owned()]))
            ]
        );
        // No container, no exec; a stopped one neither.
        assert!(matches!(
            fake.exec("nope", ExecSpec::new(process(&["x"]))).await,
            Err(RuntimeError::NotFound { what: "task", .. })
        ));
        fake.exit("c1", 0).await;
        assert!(matches!(
            fake.exec("c1", ExecSpec::new(process(&["x"]))).await,
            Err(RuntimeError::WrongState { .. })
        ));
    }

    #[tokio::test]
    async fn driven_execs_stream_both_ways() {
        let fake = running("c1").await;
        let mut execs = fake.drive_execs("c1");
        let mut spec = ExecSpec::new(process(&["sh"]));
        spec.stdin = true;
        spec.process.set_terminal(Some(true));
        spec.console_size = Some(ConsoleSize { cols: 80, rows: 24 });
        let mut caller = fake.exec("c1", spec).await.unwrap();
        assert!(caller.stderr.is_none(), "a terminal has one output stream");
        let mut driven = execs.recv().await.unwrap();
        assert_eq!(driven.spec.console_size, Some(ConsoleSize { cols: 80, rows: 24 }));

        let mut stdin = caller.stdin.take().unwrap();
        stdin.write_all(b"echo hi\n").await.unwrap();
        stdin.shutdown().await.unwrap();
        let mut typed = String::new();
        driven.stdin.take().unwrap().read_to_string(&mut typed).await.unwrap();
        assert_eq!(typed, "echo hi\n");

        driven.stdout.as_mut().unwrap().write_all(b"hi\r\n").await.unwrap();
        caller.resize(120, 40).await.unwrap();
        assert_eq!(driven.next_resize().await, Some(ConsoleSize { cols: 120, rows: 40 }));
        caller.kill(15).await.unwrap();
        assert_eq!(driven.next_signal().await, Some(15));
        driven.exit(143);
        let mut out = String::new();
        caller.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hi\r\n");
        assert_eq!(caller.wait().await.unwrap(), 143);
        // An ended process takes no more signals.
        assert!(matches!(caller.kill(9).await, Err(RuntimeError::NotFound { .. })));
    }

    #[tokio::test]
    async fn a_run_ends_with_its_process_though_a_child_keeps_the_output_open() {
        let fake = running("c1").await;
        let mut execs = fake.drive_execs("c1");
        let run = tokio::spawn(async move {
            run_to_completion(
                &fake,
                "c1",
                process(&["sh", "-c", "echo started; sleep 60 &"]),
                Duration::from_secs(30),
            )
            .await
        });
        let mut driven = execs.recv().await.unwrap();
        let mut inherited = driven.stdout.take().unwrap();
        inherited.write_all(b"started\n").await.unwrap();
        driven.exit(0);
        let started = std::time::Instant::now();
        let r = run.await.unwrap().unwrap();
        assert_eq!((r.exit_code, r.output.as_str()), (0, "started\n"));
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        drop(inherited);
    }

    #[tokio::test]
    async fn a_timed_out_run_is_killed_and_its_handle_dropped() {
        let fake = running("c1").await;
        let mut execs = fake.drive_execs("c1");
        let run = tokio::spawn(async move {
            run_to_completion(&fake, "c1", process(&["sleep", "9"]), Duration::from_millis(200)).await
        });
        let mut driven = execs.recv().await.unwrap();
        assert_eq!(driven.next_signal().await, Some(9));
        driven.exit(137);
        driven.dropped().await;
        match run.await.unwrap() {
            Err(RuntimeError::Timeout { operation: "exec", after }) => {
                assert_eq!(after, Duration::from_millis(200))
            }
            other => panic!("want Timeout, got {other:?}"),
        }
    }
}
