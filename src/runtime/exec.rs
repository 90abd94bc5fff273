//! Processes started inside a running container: the streaming handle every runtime returns
//! from [`Runtime::exec`](super::Runtime::exec), and the run-to-completion helper health
//! checks use.
//!
//! The handle is shaped for ECS Exec: stdin, stdout and stderr are byte streams (pipes, never
//! buffers of the whole output), a terminal can be resized, signals can be sent, and the exit
//! code can be awaited. What a runtime must clean up (the process record, its FIFOs) is
//! released once the process has ended and its output was read, or when the handle is dropped
//! (a process still running then is killed first).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::{Runtime, RuntimeError};

/// At most this much of a completed process's output is kept (as Docker keeps for health
/// checks).
pub const EXEC_OUTPUT_MAX: usize = 1024;
/// How long a process killed at its timeout may take to be reported gone.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output is still read after the process ended: what it wrote is in the pipes
/// already, and only a child that outlives it keeps them open longer; it is not waited for.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);
const SIGKILL: i32 = 9;

/// The size of a terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSize {
    pub cols: u16,
    pub rows: u16,
}

/// What to run inside a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    /// Arguments, environment, working directory, user, and whether it gets a terminal
    /// (`terminal`). Its `consoleSize` is ignored: see `console_size`.
    pub process: oci_spec::runtime::Process,
    /// Whether the caller writes to the process's stdin. Without it the process's stdin is
    /// empty.
    pub stdin: bool,
    /// The terminal's size from the start (with a terminal only).
    pub console_size: Option<ConsoleSize>,
}

impl ExecSpec {
    /// `process` without stdin or terminal.
    pub fn new(mut process: oci_spec::runtime::Process) -> Self {
        process.set_terminal(Some(false)).set_console_size(None);
        ExecSpec { process, stdin: false, console_size: None }
    }

    pub fn terminal(&self) -> bool {
        self.process.terminal().unwrap_or(false)
    }
}

/// Bytes for the process's stdin.
pub type ExecStdin = Box<dyn AsyncWrite + Send + Sync + Unpin>;
/// Bytes from the process's stdout or stderr.
pub type ExecOutput = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// The runtime's side of a started process, behind [`ExecProcess`]. Dropping it means the
/// caller is done: a process still running is killed, and everything the runtime holds for it
/// is released.
#[async_trait]
pub trait ExecControl: Send + Sync + fmt::Debug {
    /// The runtime's id of the process.
    fn id(&self) -> &str;
    async fn resize(&self, size: ConsoleSize) -> Result<(), RuntimeError>;
    async fn kill(&self, signal: i32) -> Result<(), RuntimeError>;
    /// The exit code (128 + signal for a killed process); may be awaited more than once.
    async fn wait(&self) -> Result<i32, RuntimeError>;
}

/// A process running inside a container, with its streams.
///
/// Take the streams out of the public fields (as with `tokio::process::Child`). Shutting down
/// or dropping `stdin` closes the process's stdin (it reads end-of-file). With a terminal,
/// stdout carries everything the terminal shows and `stderr` is `None`. Output is a pipe: a
/// process whose output nobody reads blocks once the pipe is full.
pub struct ExecProcess {
    pub stdin: Option<ExecStdin>,
    pub stdout: Option<ExecOutput>,
    pub stderr: Option<ExecOutput>,
    control: Box<dyn ExecControl>,
}

impl fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecProcess")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("control", &self.control)
            .finish()
    }
}

impl ExecProcess {
    /// Assembles a handle; for runtimes.
    pub fn new(
        stdin: Option<ExecStdin>,
        stdout: Option<ExecOutput>,
        stderr: Option<ExecOutput>,
        control: Box<dyn ExecControl>,
    ) -> Self {
        ExecProcess { stdin, stdout, stderr, control }
    }

    /// The runtime's id of the process (for logs).
    pub fn id(&self) -> &str {
        self.control.id()
    }

    /// Resizes the process's terminal (nothing happens without one).
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        self.control.resize(ConsoleSize { cols, rows }).await
    }

    /// Sends `signal` to the process.
    pub async fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        self.control.kill(signal).await
    }

    /// Waits for the process to end and returns its exit code.
    pub async fn wait(&self) -> Result<i32, RuntimeError> {
        self.control.wait().await
    }
}

/// The result of a process run to its end inside a container (a health check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i32,
    /// Combined stdout and stderr, at most the last [`EXEC_OUTPUT_MAX`] bytes.
    pub output: String,
}

/// Runs `process` inside container `container_id` without stdin or terminal and waits for
/// its end, up to `timeout` (then it is killed and the result is `Timeout`). Returns the exit
/// code and the tail of stdout and stderr together, in the order they were read. A child left
/// running in the background does not hold the result back.
pub async fn run_to_completion(
    runtime: &dyn Runtime,
    container_id: &str,
    process: oci_spec::runtime::Process,
    timeout: Duration,
) -> Result<ExecResult, RuntimeError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || RuntimeError::Timeout { operation: "exec", after: timeout };
    let mut exec = tokio::time::timeout_at(deadline, runtime.exec(container_id, ExecSpec::new(process)))
        .await
        .map_err(|_| timed_out())??;
    let streams = [exec.stdout.take(), exec.stderr.take()];
    let mut tail = Tail::default();
    let finished = tokio::time::timeout_at(deadline, async {
        let collecting = collect(streams, &mut tail);
        tokio::pin!(collecting);
        tokio::select! {
            () = &mut collecting => exec.wait().await,
            code = exec.wait() => {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut collecting).await;
                code
            }
        }
    })
    .await;
    match finished {
        Ok(code) => Ok(ExecResult { exit_code: code?, output: tail.text() }),
        Err(_) => {
            if let Err(e) = exec.kill(SIGKILL).await {
                tracing::debug!(container = container_id, exec = exec.id(), error = %e,
                                "cannot kill the timed-out exec");
            }
            let _ = tokio::time::timeout(KILL_GRACE, exec.wait()).await;
            Err(timed_out())
        }
    }
}

/// Reads both streams to their ends, keeping the last bytes of what arrives.
async fn collect(streams: [Option<ExecOutput>; 2], tail: &mut Tail) {
    let [mut a, mut b] = streams;
    let (mut buf_a, mut buf_b) = ([0u8; 4096], [0u8; 4096]);
    loop {
        let (first, read) = tokio::select! {
            r = read_some(&mut a, &mut buf_a), if a.is_some() => (true, r),
            r = read_some(&mut b, &mut buf_b), if b.is_some() => (false, r),
            else => return,
        };
        let (stream, buf) = if first { (&mut a, &buf_a) } else { (&mut b, &buf_b) };
        match read {
            Ok(0) => *stream = None,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) => {
                tracing::debug!(error = %e, "exec output broke off");
                *stream = None;
            }
        }
    }
}

async fn read_some(stream: &mut Option<ExecOutput>, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => Ok(0),
    }
}

/// The last [`EXEC_OUTPUT_MAX`] bytes pushed.
#[derive(Debug, Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        let excess = self.0.len().saturating_sub(EXEC_OUTPUT_MAX);
        self.0.drain(..excess);
    }

    fn text(&self) -> String {
        output_tail(&self.0)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_tail_is_bounded_whatever_is_pushed() {
        let mut tail = Tail::default();
        for i in 0..5000u32 {
            tail.push(format!("{i}\n").as_bytes());
            assert!(tail.0.len() <= EXEC_OUTPUT_MAX);
        }
        assert!(tail.text().ends_with("4998\n4999\n"));
        assert_eq!(tail.text().len(), EXEC_OUTPUT_MAX);
    }

    #[tokio::test]
    async fn both_streams_are_read_to_their_ends() {
        let (mut out_w, out_r) = tokio::io::duplex(64);
        let (mut err_w, err_r) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for i in 0..300 {
                out_w.write_all(format!("o{i}\n").as_bytes()).await.unwrap();
                if i % 3 == 0 {
                    err_w.write_all(format!("e{i}\n").as_bytes()).await.unwrap();
                }
            }
        });
        let mut tail = Tail::default();
        collect([Some(Box::new(out_r)), Some(Box::new(err_r))], &mut tail).await;
        writer.await.unwrap();
        let text = tail.text();
        assert!(text.contains("o299\n") && text.contains("e297\n"), "{text}");
        assert!(text.len() <= EXEC_OUTPUT_MAX);
    }
}
