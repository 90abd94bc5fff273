//! Processes started inside running containers (Tasks.Exec), streamed through FIFOs as
//! `ctr task exec` does.
//!
//! The steps: make the FIFO set and open our ends; Exec (the shim records the process);
//! Wait, issued before Start so that no exit can slip by; Start (the shim opens its ends, runc
//! runs the process); then the FIFO paths are removed, every end being open. A reaper task per
//! process owns the rest: it collects the exit code, and once the process has ended and its
//! output was read to the end (or the handle was dropped) it deletes the process in
//! containerd and removes the FIFO directory. A handle dropped while the process runs kills
//! it first. Closing stdin needs two steps: our end is closed, and CloseIO makes the shim
//! close the writer it holds itself, so the process reads end-of-file.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1 as api;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::connection::{Backoff, Conn, StatusKind, at, classify};
use super::fifo::{self, FifoSet};
use crate::runtime::{ConsoleSize, ExecControl, ExecProcess, ExecSpec, RuntimeError};

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGKILL: u32 = 9;
/// How long a killed process may take to be reported gone before the reaper deletes it anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often a Wait or a delete is tried again while containerd is unreachable.
const UNAVAILABLE_RETRIES: u32 = 20;

type Outcome = Option<Result<i32, RuntimeError>>;

/// Starts `spec` in container `container_id`; see the module docs.
pub(crate) async fn start(
    conn: &Conn,
    exec_dir: &Path,
    container_id: &str,
    spec: ExecSpec,
) -> Result<ExecProcess, RuntimeError> {
    // The setup runs as a task of its own: a caller that gives up half-way (a timeout) drops
    // only this wait, and the process is then cleaned up through its dropped handle.
    let setup = tokio::spawn(setup(conn.clone(), exec_dir.to_owned(), container_id.to_owned(), spec));
    match setup.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(RuntimeError::Cancelled { operation: "exec" }),
    }
}

/// One exec'd process in containerd.
#[derive(Debug)]
struct Target {
    conn: Conn,
    container_id: String,
    exec_id: String,
}

impl Target {
    async fn kill(&self, signal: u32) -> Result<(), RuntimeError> {
        let req = api::KillRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            signal,
            all: false,
        };
        let at = at("signal exec'd process", "exec'd process", &self.exec_id);
        self.conn.call(at, self.conn.tasks().kill(self.conn.request(req))).await.map(|_| ())
    }

    async fn resize(&self, size: ConsoleSize) -> Result<(), RuntimeError> {
        let req = api::ResizePtyRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            width: u32::from(size.cols),
            height: u32::from(size.rows),
        };
        let at = at("resize the terminal of", "exec'd process", &self.exec_id);
        self.conn.call(at, self.conn.tasks().resize_pty(self.conn.request(req))).await.map(|_| ())
    }

    /// Makes the shim close its own writer of the process's stdin (see the module docs).
    async fn close_stdin(&self) {
        let req = api::CloseIoRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            stdin: true,
        };
        let at = at("close stdin of", "exec'd process", &self.exec_id);
        match self.conn.call_opt(at, self.conn.tasks().close_io(self.conn.request(req))).await {
            Ok(_) => {}
            Err(e) => warn!(exec = %self.exec_id, error = %e, "cannot close the exec'd process's stdin"),
        }
    }

    /// The exit code, waiting for as long as the process runs.
    async fn wait(&self) -> Result<i32, RuntimeError> {
        let at = at("wait for", "exec'd process", &self.exec_id);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut tries = 0;
        loop {
            let req =
                api::WaitRequest { container_id: self.container_id.clone(), exec_id: self.exec_id.clone() };
            match self.conn.tasks().wait(self.conn.request(req)).await {
                Ok(resp) => return Ok(resp.into_inner().exit_status as i32),
                Err(s) if classify(&s) == StatusKind::Unavailable && tries < UNAVAILABLE_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(s) => return Err(self.conn.error(s, at)),
            }
        }
    }

    /// Deletes the process in containerd; gone already is fine.
    async fn delete(&self) {
        let at = at("delete exec'd process", "exec'd process", &self.exec_id);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..UNAVAILABLE_RETRIES {
            let req = api::DeleteProcessRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            };
            match self.conn.call_opt(at, self.conn.tasks().delete_process(self.conn.request(req))).await {
                Ok(_) => return,
                Err(e) if e.is_unavailable() => tokio::time::sleep(backoff.next_delay()).await,
                Err(e) => {
                    warn!(exec = %self.exec_id, container = %self.container_id, error = %e,
                          "cannot delete the exec'd process");
                    return;
                }
            }
        }
        warn!(exec = %self.exec_id, container = %self.container_id,
              "containerd stayed unreachable; the exec'd process goes with its container");
    }
}

async fn setup(
    conn: Conn,
    exec_dir: PathBuf,
    container_id: String,
    spec: ExecSpec,
) -> Result<ExecProcess, RuntimeError> {
    let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let terminal = spec.terminal();
    let mut process = spec.process;
    // The builder has a default for every field, so it cannot fail.
    let console = spec.console_size.filter(|_| terminal).and_then(|size| {
        oci_spec::runtime::BoxBuilder::default()
            .width(u64::from(size.cols))
            .height(u64::from(size.rows))
            .build()
            .ok()
    });
    // runc sizes the terminal before the process starts, so it never sees another size.
    process.set_terminal(Some(terminal)).set_console_size(console);
    let encoded = serde_json::to_vec(&process).map_err(|e| RuntimeError::Encode {
        what: "process spec",
        id: exec_id.clone(),
        source: e.into(),
    })?;

    let fifos = FifoSet::create(&exec_dir, &exec_id, spec.stdin, !terminal)?;
    let ends = match fifos.open() {
        Ok(ends) => ends,
        Err(e) => {
            fifos.remove();
            return Err(e);
        }
    };
    let req = api::ExecProcessRequest {
        container_id: container_id.clone(),
        stdin: FifoSet::uri(fifos.stdin.as_ref()),
        stdout: FifoSet::uri(Some(&fifos.stdout)),
        stderr: FifoSet::uri(fifos.stderr.as_ref()),
        terminal,
        spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: encoded }),
        exec_id: exec_id.clone(),
    };
    if let Err(e) = conn.call(at("exec", "task", &container_id), conn.tasks().exec(conn.request(req))).await {
        fifos.remove();
        return Err(e);
    }

    let target =
        Arc::new(Target { conn: conn.clone(), container_id: container_id.clone(), exec_id: exec_id.clone() });
    let waiter = Arc::clone(&target);
    let wait = tokio::spawn(async move { waiter.wait().await });
    let (started_tx, started_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = watch::channel(None);
    let (streams_tx, streams_rx) = mpsc::channel::<()>(1);
    let dropped = CancellationToken::new();
    tokio::spawn(reap(
        Arc::clone(&target),
        wait,
        started_rx,
        dropped.clone(),
        streams_rx,
        exit_tx,
        fifos.dir.clone(),
    ));

    let req = api::StartRequest { container_id: container_id.clone(), exec_id: exec_id.clone() };
    let started =
        conn.call(at("start exec", "task", &container_id), conn.tasks().start(conn.request(req))).await;
    // Every end is open now (or never will be): the paths have served.
    fifos.remove();
    if let Err(e) = started {
        let _ = started_tx.send(false);
        return Err(e);
    }
    let _ = started_tx.send(true);
    debug!(container = %container_id, exec = %exec_id, terminal, "started exec'd process");

    let stdin = ends.stdin.map(|pipe| {
        Box::new(Stdin { pipe: Some(pipe), target: Some(Arc::clone(&target)) }) as crate::runtime::ExecStdin
    });
    let output = |pipe: pipe::Receiver| {
        Box::new(Output { pipe, done: Some(streams_tx.clone()) }) as crate::runtime::ExecOutput
    };
    let stdout = Some(output(ends.stdout));
    let stderr = ends.stderr.map(output);
    let control = Control { target, exit: exit_rx, _dropped: dropped.drop_guard() };
    Ok(ExecProcess::new(stdin, stdout, stderr, Box::new(control)))
}

/// Owns the end of one process; see the module docs.
async fn reap(
    target: Arc<Target>,
    mut wait: JoinHandle<Result<i32, RuntimeError>>,
    started: oneshot::Receiver<bool>,
    dropped: CancellationToken,
    mut streams: mpsc::Receiver<()>,
    exit: watch::Sender<Outcome>,
    dir: PathBuf,
) {
    let started = started.await.unwrap_or(false);
    let ended = if started {
        tokio::select! {
            joined = &mut wait => Some(joined),
            () = dropped.cancelled() => None,
        }
    } else {
        None
    };
    let outcome = match ended {
        Some(joined) => flatten(joined),
        None => {
            // Nobody wants the process any more (or its start failed half-way): end it.
            if let Err(e) = target.kill(SIGKILL).await
                && !matches!(e, RuntimeError::NotFound { .. })
            {
                debug!(exec = %target.exec_id, error = %e, "cannot kill the exec'd process");
            }
            match tokio::time::timeout(KILL_WAIT, &mut wait).await {
                Ok(joined) => flatten(joined),
                Err(_) => {
                    wait.abort();
                    Err(RuntimeError::Timeout {
                        operation: "wait for the killed exec'd process",
                        after: KILL_WAIT,
                    })
                }
            }
        }
    };
    exit.send_replace(Some(outcome));
    if started {
        // The shim keeps copying output until the process is deleted; let the reader finish.
        tokio::select! {
            () = async { while streams.recv().await.is_some() {} } => {}
            () = dropped.cancelled() => {}
        }
    }
    target.delete().await;
    fifo::remove_dir(&dir);
    debug!(exec = %target.exec_id, "exec'd process cleaned up");
}

/// What the runc shim says of a process of a container that it exec'd
/// (`containerd.runc.v1.ProcessDetails`, which containerd-client does not compile).
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
}

const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

/// Kills and deletes every exec'd process still running in container `container_id`:
/// what an earlier ecsd left when it died without cleaning up. Returns their ids.
pub(crate) async fn reap_leftovers(conn: &Conn, container_id: &str) -> Result<Vec<String>, RuntimeError> {
    use prost::Message;
    let req = api::ListPidsRequest { container_id: container_id.to_owned() };
    let at = at("list the processes of", "task", container_id);
    let Some(listed) = conn.call_opt(at, conn.tasks().list_pids(conn.request(req))).await? else {
        return Ok(vec![]);
    };
    let mut reaped = vec![];
    for info in listed.processes.into_iter().filter_map(|p| p.info) {
        if !info.type_url.ends_with(PROCESS_DETAILS_TYPE_URL) {
            continue;
        }
        let Ok(details) = ProcessDetails::decode(info.value.as_slice()) else { continue };
        if details.exec_id.is_empty() {
            continue;
        }
        let target =
            Target { conn: conn.clone(), container_id: container_id.to_owned(), exec_id: details.exec_id };
        match target.kill(SIGKILL).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => warn!(exec = %target.exec_id, error = %e, "cannot kill a left-over exec'd process"),
        }
        // Deleting a process that runs fails; give the kill a moment to land.
        let _ = tokio::time::timeout(KILL_WAIT, target.wait()).await;
        target.delete().await;
        reaped.push(target.exec_id);
    }
    Ok(reaped)
}

fn flatten(joined: Result<Result<i32, RuntimeError>, tokio::task::JoinError>) -> Result<i32, RuntimeError> {
    joined.unwrap_or(Err(RuntimeError::Cancelled { operation: "wait for exec'd process" }))
}

/// The handle's side of one process.
#[derive(Debug)]
struct Control {
    target: Arc<Target>,
    exit: watch::Receiver<Outcome>,
    /// Tells the reaper the handle is gone.
    _dropped: DropGuard,
}

#[async_trait]
impl ExecControl for Control {
    fn id(&self) -> &str {
        &self.target.exec_id
    }

    async fn resize(&self, size: ConsoleSize) -> Result<(), RuntimeError> {
        self.target.resize(size).await
    }

    async fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        let signal = u32::try_from(signal).map_err(|_| RuntimeError::InvalidSignal { signal })?;
        self.target.kill(signal).await
    }

    async fn wait(&self) -> Result<i32, RuntimeError> {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(outcome) => outcome
                .clone()
                .unwrap_or(Err(RuntimeError::Cancelled { operation: "wait for exec'd process" })),
            // The reaper is gone without a word: the async runtime is shutting down.
            Err(_) => Err(RuntimeError::Cancelled { operation: "wait for exec'd process" }),
        }
    }
}

/// Our end of the process's stdin; shutting it down or dropping it closes the process's stdin.
#[derive(Debug)]
struct Stdin {
    pipe: Option<pipe::Sender>,
    target: Option<Arc<Target>>,
}

impl Stdin {
    fn close(&mut self) {
        self.pipe = None;
        if let Some(target) = self.target.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move { target.close_stdin().await });
                }
                Err(_) => {
                    warn!(exec = %target.exec_id, "no async runtime: the exec'd process's stdin stays open")
                }
            }
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin of the exec'd process is closed")
}

impl AsyncWrite for Stdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.pipe.as_mut() {
            Some(pipe) => Pin::new(pipe).poll_write(cx, buf),
            None => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.pipe.as_mut() {
            Some(pipe) => Pin::new(pipe).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A pipe has nothing buffered on our side: closing it is the whole shutdown.
        self.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        self.close();
    }
}

/// Our end of the process's stdout or stderr; tells the reaper when it is done (read to its
/// end, or dropped).
#[derive(Debug)]
struct Output {
    pipe: pipe::Receiver,
    done: Option<mpsc::Sender<()>>,
}

impl AsyncRead for Output {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.pipe).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.done = None;
        }
        polled
    }
}
