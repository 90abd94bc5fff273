//! Processes started in a running container through libpod's exec API.
//!
//! `POST /containers/{id}/exec` creates the session; `POST /exec/{id}/start`, sent with
//! `Upgrade: tcp`, turns the connection into the process's streams (raw with a terminal,
//! otherwise Docker's multiplexed frames: an 8-byte header with the stream number and length).
//! The exit code is read from `GET /exec/{id}/json` once the session stops running. libpod has
//! no call to signal an exec'd process, so [`ExecControl::kill`] signals the pid the session
//! reports (the service runs on this host).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper::Method;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, OnceCell};
use tracing::debug;

use super::client::{self, Client, at, escape};
use crate::runtime::{ConsoleSize, ExecControl, ExecProcess, ExecSpec, RuntimeError};

/// The pipes between the demultiplexer and the caller.
const PIPE: usize = 64 << 10;
const SIGKILL: i32 = 9;
/// How long [`reap_leftovers`] waits for a killed process to be seen as ended.
const REAP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct Created {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Debug, Deserialize)]
struct Session {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "ExitCode", default)]
    exit_code: i32,
    #[serde(rename = "Pid", default)]
    pid: i64,
}

/// Starts `spec` in `container_id` and returns its streams.
pub async fn start(client: &Client, container_id: &str, spec: ExecSpec) -> Result<ExecProcess, RuntimeError> {
    let tty = spec.terminal();
    let process = &spec.process;
    let user = process.user();
    let body = serde_json::json!({
        "Cmd": process.args().clone().unwrap_or_default(),
        "Env": process.env().clone().unwrap_or_default(),
        "WorkingDir": process.cwd(),
        "User": format!("{}:{}", user.uid(), user.gid()),
        "Tty": tty,
        "AttachStdin": spec.stdin,
        "AttachStdout": true,
        "AttachStderr": true,
    });
    let a = at("exec", "task", container_id);
    let created: Created = client
        .call(Method::POST, &format!("/containers/{}/exec", escape(container_id)), Some(&body), a)
        .await?
        .json(a)?;
    let id = created.id;
    let mut start = serde_json::json!({"Detach": false, "Tty": tty});
    if let (true, Some(size)) = (tty, spec.console_size) {
        start["h"] = size.rows.into();
        start["w"] = size.cols.into();
    }
    let a = at("start exec", "exec session", &id);
    let resp = client
        .send(
            Method::POST,
            &format!("/exec/{id}/start"),
            Some(&start),
            &[("connection", "Upgrade"), ("upgrade", "tcp")],
        )
        .await?;
    let status = resp.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let body = http_body_util::Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(client::classify(status, &body, a));
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| RuntimeError::Internal {
        operation: "start exec",
        what: "exec session",
        id: id.clone(),
        message: format!("the connection was not handed over: {e}"),
    })?;
    // The connection is the unix stream this client opened: taken back whole, its halves
    // are the process's streams (with whatever libpod sent along with its answer first).
    let parts = upgraded.downcast::<TokioIo<UnixStream>>().map_err(|_| RuntimeError::Internal {
        operation: "start exec",
        what: "exec session",
        id: id.clone(),
        message: "the connection was handed over in an unexpected form".into(),
    })?;
    let (read, write) = parts.io.into_inner().into_split();
    let read = std::io::Cursor::new(parts.read_buf).chain(read);
    let ended = Arc::new(Notify::new());
    let (stdout, stderr): (crate::runtime::ExecOutput, Option<crate::runtime::ExecOutput>) = if tty {
        (Box::new(read), None)
    } else {
        let (out_w, out_r) = tokio::io::duplex(PIPE);
        let (err_w, err_r) = tokio::io::duplex(PIPE);
        let ended = Arc::clone(&ended);
        let exec_id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = demux(read, out_w, err_w).await {
                debug!(exec = %exec_id, error = %e, "exec output broke off");
            }
            ended.notify_waiters();
        });
        (Box::new(out_r), Some(Box::new(err_r)))
    };
    // Without stdin the write half is kept (dropping it would shut the connection's write
    // side down) until the caller is done.
    let (stdin, kept): (Option<crate::runtime::ExecStdin>, _) =
        if spec.stdin { (Some(Box::new(write)), None) } else { (None, Some(write)) };
    let control = Control { client: client.clone(), id, tty, exit: OnceCell::new(), ended, _write: kept };
    Ok(ExecProcess::new(stdin, Some(stdout), stderr, Box::new(control)))
}

/// Kills the processes of those of `sessions` that still run (libpod has no call for it: their
/// pids are signalled) and waits a moment for them to end; returns the ids of those killed.
/// Sessions that are gone or ended are skipped.
pub async fn reap_leftovers(client: &Client, sessions: Vec<String>) -> Result<Vec<String>, RuntimeError> {
    let mut reaped = Vec::new();
    for id in sessions {
        let control = Control {
            client: client.clone(),
            id,
            tty: false,
            exit: OnceCell::new(),
            ended: Arc::new(Notify::new()),
            _write: None,
        };
        let session = match control.session().await {
            Ok(s) => s,
            Err(RuntimeError::NotFound { .. }) => {
                let _ = control.exit.set(0);
                continue;
            }
            Err(e) => {
                let _ = control.exit.set(0);
                return Err(e);
            }
        };
        if session.running {
            control.kill(SIGKILL).await?;
            let _ = tokio::time::timeout(REAP_WAIT, control.wait()).await;
            reaped.push(control.id.clone());
        }
        // Nothing for this copy's drop to kill.
        let _ = control.exit.set(0);
    }
    Ok(reaped)
}

/// Splits Docker's multiplexed stream into stdout and stderr.
async fn demux(
    mut input: impl tokio::io::AsyncRead + Unpin,
    mut stdout: tokio::io::DuplexStream,
    mut stderr: tokio::io::DuplexStream,
) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match input.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        while left > 0 {
            let n = left.min(buf.len());
            input.read_exact(&mut buf[..n]).await?;
            left -= n;
            // A reader that went away (its handle dropped) does not stop the draining.
            let _ = match header[0] {
                2 => stderr.write_all(&buf[..n]).await,
                _ => stdout.write_all(&buf[..n]).await,
            };
        }
    }
}

#[derive(Debug)]
struct Control {
    client: Client,
    id: String,
    tty: bool,
    exit: OnceCell<i32>,
    /// Signalled when the output ends (without a terminal), so that waiting looks at once.
    ended: Arc<Notify>,
    _write: Option<OwnedWriteHalf>,
}

impl Control {
    async fn session(&self) -> Result<Session, RuntimeError> {
        let a = at("inspect exec", "exec session", &self.id);
        self.client.call(Method::GET, &format!("/exec/{}/json", self.id), None, a).await?.json(a)
    }
}

#[async_trait]
impl ExecControl for Control {
    fn id(&self) -> &str {
        &self.id
    }

    async fn resize(&self, size: ConsoleSize) -> Result<(), RuntimeError> {
        if !self.tty {
            return Ok(());
        }
        let a = at("resize exec", "exec session", &self.id);
        self.client
            .call(Method::POST, &format!("/exec/{}/resize?h={}&w={}", self.id, size.rows, size.cols), None, a)
            .await
            .map(|_| ())
    }

    async fn kill(&self, signal: i32) -> Result<(), RuntimeError> {
        let session = self.session().await?;
        if !session.running {
            return Ok(());
        }
        let sig =
            rustix::process::Signal::from_named_raw(signal).ok_or(RuntimeError::InvalidSignal { signal })?;
        if let Some(pid) = i32::try_from(session.pid).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, sig);
        }
        Ok(())
    }

    async fn wait(&self) -> Result<i32, RuntimeError> {
        self.exit
            .get_or_try_init(|| async {
                let mut delay = Duration::from_millis(10);
                loop {
                    let notified = self.ended.notified();
                    let session = self.session().await?;
                    if !session.running {
                        return Ok(session.exit_code);
                    }
                    let _ = tokio::time::timeout(delay, notified).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
            })
            .await
            .copied()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if self.exit.initialized() {
            return;
        }
        // The caller is done: a process still running is killed.
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let client = self.client.clone();
        let id = self.id.clone();
        handle.spawn(async move {
            let control = Control {
                client,
                id,
                tty: false,
                exit: OnceCell::new(),
                ended: Arc::new(Notify::new()),
                _write: None,
            };
            let _ = control.kill(SIGKILL).await;
            // Mark it done so that this copy's drop does nothing.
            let _ = control.exit.set(0);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multiplexed_frames_go_to_their_streams() {
        let mut data = Vec::new();
        for (stream, text) in [(1u8, "out1\n"), (2, "err1\n"), (1, "out2\n")] {
            data.extend_from_slice(&[stream, 0, 0, 0]);
            data.extend_from_slice(&(text.len() as u32).to_be_bytes());
            data.extend_from_slice(text.as_bytes());
        }
        let (out_w, mut out_r) = tokio::io::duplex(1024);
        let (err_w, mut err_r) = tokio::io::duplex(1024);
        demux(&data[..], out_w, err_w).await.unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        out_r.read_to_string(&mut out).await.unwrap();
        err_r.read_to_string(&mut err).await.unwrap();
        assert_eq!(out, "out1\nout2\n");
        assert_eq!(err, "err1\n");
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error() {
        let data = [1u8, 0, 0, 0, 0, 0, 0, 9, b'a'];
        let (out_w, _out_r) = tokio::io::duplex(1024);
        let (err_w, _err_r) = tokio::io::duplex(1024);
        assert!(demux(&data[..], out_w, err_w).await.is_err());
    }
}
