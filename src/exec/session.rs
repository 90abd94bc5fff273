//! One ECS Exec session: the server side of the data channel, driving one process in a
//! task's container.
//!
//! A [`Runner`] owns everything of the session in one task: the websocket (replaced when the
//! client reconnects after a ResumeSession), both streams, the process and its stdin pump.
//! Its course:
//!
//! 1. The handshake: HandshakeRequest (session type `InteractiveCommands`, no KMS) as output
//!    message 0, the client's HandshakeResponse, HandshakeComplete as message 1.
//! 2. The process starts through [`Engine::exec`](crate::engine::Engine::exec): for the
//!    plugin once its first terminal size arrives (so the terminal has the right size from
//!    the start, and the plugin's shell handler is ready for output), for `ecsd exec` at
//!    once, with the terminal and stdin it asked for.
//! 3. Output is read only while the send window has room, cut into messages of at most
//!    1024 bytes for the plugin (the agent's size, which it expects) and of at most
//!    [`ECSD_CHUNK`] for `ecsd exec` (fewer digests, headers and acknowledgements per byte),
//!    with the window in messages scaled so the bytes in flight stay the same; keystrokes and piped stdin go to the process through a bounded queue (a
//!    message that does not fit is left unacknowledged, and the client sends it again);
//!    terminal sizes resize the process's terminal; unacknowledged output is sent again.
//! 4. The end: the process exits (or is killed: TerminateSession, idle timeout, the task
//!    stopping, the client gone for good, shutdown); what it wrote is read to the end, the
//!    client acknowledges it all, `ecsd exec` gets the exit code, and `channel_closed` ends
//!    the channel. One audit line is written.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Exec;
use super::codec::{
    AgentMessage, FLAG_SYN, FLAGS_ACK, MAX_PAYLOAD, MessageIds, MessageType, OUTPUT_CHUNK, PayloadType,
};
use super::protocol::{
    Acknowledge, ChannelClosed, ClientOptions, Flag, HandshakeComplete, HandshakeRequest, HandshakeResponse,
    TerminalSize, exit_code_payload,
};
use super::registry::SessionSpec;
use super::stream::{Acked, Arrival, Incoming, Outgoing};
use crate::engine::{ExecError, ExecRequest, TaskEvent};
use crate::model::task::{ContainerStatus, TaskStatus};
use crate::model::time::Sleep;
use crate::runtime::{ConsoleSize, ExecOutput, ExecProcess, ExecStdin};

/// Output bytes in flight (unacknowledged) at most per session: 1024 messages of the
/// plugin's 1024 bytes, or fewer larger ones (plus each message's header).
const WINDOW_BYTES: usize = 1024 * OUTPUT_CHUNK;
/// The output message size for `ecsd exec`, whose client takes anything up to
/// [`MAX_PAYLOAD`].
pub const ECSD_CHUNK: usize = 32 * 1024;
const _: () = assert!(
    OUTPUT_CHUNK < ECSD_CHUNK && ECSD_CHUNK <= MAX_PAYLOAD && WINDOW_BYTES.is_multiple_of(ECSD_CHUNK)
);
/// Output is read in pieces of at most this many bytes, and only when that many fit in the
/// window (batching).
const READ_BYTES: usize = 64 * 1024;
/// Frames handled in one go when they are there already.
const RECV_BATCH: usize = 256;
/// Input messages held ahead of a gap at most.
const REORDER: usize = 256;
/// Input messages queued for the process's stdin at most.
const STDIN_QUEUE: usize = 64;
/// How long the plugin has to send its terminal size before the process starts without it.
const SIZE_WAIT: Duration = Duration::from_secs(2);
/// The terminal size when the client gives none.
const DEFAULT_SIZE: ConsoleSize = ConsoleSize { cols: 80, rows: 24 };
/// How long a client may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the process ended, output is still read while it keeps coming, until this long
/// passes without any (a background child may hold the terminal open for ever).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// How long the end waits for the client to acknowledge the last output.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// A client that leaves output unacknowledged this long is gone (the plugin's own limit).
const GIVE_UP: Duration = Duration::from_secs(300);
/// How long the plugin's session waits for it to reconnect after the websocket broke.
const RESUME_GRACE: Duration = Duration::from_secs(30);
/// A write to the websocket that takes longer than this means the client is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closed channel waits for the client's side of the close.
const LINGER: Duration = Duration::from_secs(2);
/// Websocket pings keep proxies from closing a quiet session (the SSM agent's interval).
const PING_EVERY: Duration = Duration::from_secs(54);
/// Bad frames logged one by one per session; the rest are counted in the audit line.
const BAD_FRAMES_LOGGED: u64 = 5;
const SIGKILL: i32 = 9;
/// The exit code of a command that could not be started (as a shell reports it).
const CANNOT_RUN: i32 = 126;

/// The size of the output messages for the client that opened the channel with
/// `client_version`: [`ECSD_CHUNK`] for ecsd's own client, the plugin's 1024 bytes for
/// every other (the stock plugin, and anything that does not say it is ecsd's).
pub fn output_chunk(client_version: &str) -> usize {
    if client_version.starts_with(super::client::CLIENT_NAME) { ECSD_CHUNK } else { OUTPUT_CHUNK }
}

/// Who is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// The stock session-manager-plugin: a terminal, no exit code on the channel.
    Plugin,
    /// `ecsd exec`, with what it asked for.
    Ecsd(ClientOptions),
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The process exited by itself.
    Exited,
    /// The client asked (TerminateSession, the flag or the API).
    ClientTerminated,
    Idle(Duration),
    TaskStopped,
    Shutdown,
    /// The websocket broke and the client did not come back.
    ClientGone,
    /// The client did not complete the handshake, or refused the session type.
    Handshake(String),
    /// The process could not be started.
    StartFailed,
}

impl EndReason {
    /// What the client is told in `channel_closed` (empty: a normal end).
    fn message(&self) -> String {
        match self {
            EndReason::Exited | EndReason::ClientGone | EndReason::StartFailed => String::new(),
            EndReason::ClientTerminated => "The session was terminated.".into(),
            EndReason::Idle(after) => format!(
                "ecsd ended the session after {}s without input or output (ECSD_EXEC_IDLE_TIMEOUT).",
                after.as_secs()
            ),
            EndReason::TaskStopped => "The task stopped.".into(),
            EndReason::Shutdown => "ecsd is shutting down.".into(),
            EndReason::Handshake(why) => format!("The session handshake failed: {why}"),
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::ClientTerminated => "terminated",
            EndReason::Idle(_) => "idle",
            EndReason::TaskStopped => "task-stopped",
            EndReason::Shutdown => "shutdown",
            EndReason::ClientGone => "client-gone",
            EndReason::Handshake(_) => "handshake",
            EndReason::StartFailed => "start-failed",
        }
    }
}

/// What a runner is told from outside its websocket.
#[derive(Debug)]
pub enum Control {
    /// A client connected again with a resume token: this is its websocket now.
    Attach {
        socket: Box<WebSocket>,
    },
    /// A resume token was issued: the client is about to reconnect.
    Resuming,
    Terminate(EndReason),
}

/// What goes to the process's stdin.
#[derive(Debug)]
enum StdinMsg {
    Data(Bytes),
    Eof,
}

/// The process, through its life.
enum Proc {
    NotStarted,
    Starting(JoinHandle<Result<ExecProcess, ExecError>>),
    Running(ExecProcess),
    /// Ended, failed to start, or never to be started.
    Done,
}

/// Whether an input message could be handled now.
enum Delivery {
    Done,
    /// The stdin queue is full: leave it for later.
    Later,
}

/// One session; see the module docs.
pub struct Runner {
    exec: Arc<Exec>,
    session_id: String,
    spec: Arc<SessionSpec>,
    control: mpsc::UnboundedReceiver<Control>,
    client: ClientKind,
    /// The largest output message's payload (see [`output_chunk`]).
    chunk: usize,
    /// The window's room (in messages) that reading output waits for: [`READ_BYTES`].
    read_batch: usize,
    socket: Option<WebSocket>,
    writes: Vec<Message>,
    out: Outgoing,
    inc: Incoming,
    ids: MessageIds,
    /// When the handshake request went out, until the response came.
    handshake_sent: Option<Instant>,
    handshake_done: bool,
    /// For the plugin: when the process starts without a terminal size.
    size_deadline: Option<Instant>,
    size: Option<ConsoleSize>,
    proc: Proc,
    stdin_tx: Option<mpsc::Sender<StdinMsg>>,
    stdin_rx: Option<mpsc::Receiver<StdinMsg>>,
    stdin_blocked: bool,
    stdout: Option<ExecOutput>,
    stderr: Option<ExecOutput>,
    exit_code: Option<i32>,
    /// After the exit: output stops being read at this point unless more comes.
    drain_until: Option<Instant>,
    /// Text to show the client once the handshake allows output (a start failure).
    notice: Option<String>,
    exit_sent: bool,
    end: Option<EndReason>,
    /// Set once the client was told everything and the channel is closed.
    finished: bool,
    kill_sent: bool,
    shutdown_seen: bool,
    control_closed: bool,
    /// The terminal size the process was started with.
    start_size: Option<ConsoleSize>,
    closing_since: Option<Instant>,
    resume_pending: bool,
    /// The clock's sleep until the client's grace to reconnect runs out.
    grace: Option<Sleep>,
    last_activity: f64,
    idle: Sleep,
    events: broadcast::Receiver<TaskEvent>,
    started_at: f64,
    bad_frames: u64,
    buf: Vec<u8>,
    buf_err: Vec<u8>,
}

impl Runner {
    pub fn new(
        exec: Arc<Exec>,
        session_id: String,
        spec: Arc<SessionSpec>,
        control: mpsc::UnboundedReceiver<Control>,
        socket: WebSocket,
        client: ClientKind,
        chunk: usize,
    ) -> Runner {
        let chunk = chunk.clamp(1, READ_BYTES);
        let seed = super::random::<16>().unwrap_or_else(|_| {
            // Message ids need to be unique, not secret.
            let nanos =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
            nanos.to_be_bytes()
        });
        let now = exec.clock.now();
        let idle = exec.clock.sleep(exec.settings.idle_timeout);
        let events = exec.engine.subscribe();
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let mut runner = Runner {
            exec,
            session_id,
            spec,
            control,
            client,
            chunk,
            read_batch: (READ_BYTES / chunk).max(1),
            socket: None,
            writes: Vec::new(),
            out: Outgoing::new((WINDOW_BYTES / chunk).max(1)),
            inc: Incoming::new(REORDER),
            ids: MessageIds::new(seed),
            handshake_sent: None,
            handshake_done: false,
            size_deadline: None,
            size: None,
            proc: Proc::NotStarted,
            stdin_tx: Some(stdin_tx),
            stdin_rx: Some(stdin_rx),
            stdin_blocked: false,
            stdout: None,
            stderr: None,
            exit_code: None,
            drain_until: None,
            notice: None,
            exit_sent: false,
            end: None,
            finished: false,
            kill_sent: false,
            shutdown_seen: false,
            control_closed: false,
            start_size: None,
            closing_since: None,
            resume_pending: false,
            grace: None,
            last_activity: now,
            idle,
            events,
            started_at: now,
            bad_frames: 0,
            buf: vec![0; READ_BYTES],
            buf_err: vec![0; READ_BYTES],
        };
        runner.attach(socket);
        runner
    }

    fn tty(&self) -> bool {
        match self.client {
            ClientKind::Plugin => true,
            ClientKind::Ecsd(o) => o.tty,
        }
    }

    fn wants_stdin(&self) -> bool {
        match self.client {
            ClientKind::Plugin => true,
            ClientKind::Ecsd(o) => o.stdin,
        }
    }

    /// Runs the session to its end and writes the audit line.
    pub async fn run(mut self) {
        if let ClientKind::Ecsd(o) = self.client {
            if o.tty && o.cols > 0 && o.rows > 0 {
                self.size = Some(ConsoleSize { cols: o.cols, rows: o.rows });
            }
            // ecsd's client said everything up front: start while the handshake goes.
            self.start_process();
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            self.progress().await;
            self.flush().await;
            if self.finished {
                break;
            }
            let room = self.out.room();
            let can_read = self.socket.is_some() && self.handshake_done && room >= self.read_batch;
            let retransmit_at = self.out.next_due().filter(|_| self.socket.is_some());
            let handshake_deadline = self.handshake_sent.map(|at| at + HANDSHAKE_TIMEOUT);
            let closing_deadline = self.closing_since.map(|at| at + CLOSE_WAIT);
            if self.drain_until.is_some() && self.socket.is_some() && room < self.read_batch {
                // A slow reader is not a quiet process: keep draining.
                self.drain_until = Some(Instant::now() + DRAIN_IDLE);
            }
            tokio::select! {
                ctl = self.control.recv(), if !self.control_closed => match ctl {
                    Some(Control::Attach { socket }) => self.attach(*socket),
                    Some(Control::Resuming) => self.resume_pending = true,
                    Some(Control::Terminate(reason)) => self.end_with(reason),
                    // The registry let go of the session: nothing more can come.
                    None => self.control_closed = true,
                },
                frame = recv(&mut self.socket), if self.socket.is_some() => {
                    self.on_frame(frame).await;
                    // Whatever else is there already (acknowledgements come in streams) is
                    // handled before the next write.
                    for _ in 0..RECV_BATCH {
                        let Some(ready) = self.socket.as_mut().and_then(|s| s.recv().now_or_never()) else { break };
                        self.on_frame(ready).await;
                    }
                }
                event = proc_event(&mut self.proc), if self.exit_code.is_none()
                    && matches!(self.proc, Proc::Starting(_) | Proc::Running(_)) => match event {
                    ProcEvent::Started(started) => self.on_started(started).await,
                    ProcEvent::Exited(code) => self.on_exit(code),
                },
                read = read_some(&mut self.stdout, &mut self.buf, room * self.chunk), if can_read && self.stdout.is_some() => {
                    self.on_output(read, PayloadType::Output, false)
                }
                read = read_some(&mut self.stderr, &mut self.buf_err, room * self.chunk), if can_read && self.stderr.is_some() => {
                    self.on_output(read, PayloadType::StdErr, true)
                }
                _ = sleep_until(retransmit_at), if retransmit_at.is_some() => self.retransmit(),
                _ = sleep_until(self.drain_until), if self.drain_until.is_some() => {
                    self.stdout = None;
                    self.stderr = None;
                    self.drain_until = None;
                }
                _ = sleep_until(self.size_deadline), if self.size_deadline.is_some() => {
                    self.size_deadline = None;
                    self.start_process();
                }
                _ = sleep_until(handshake_deadline), if handshake_deadline.is_some() => {
                    self.handshake_sent = None;
                    self.end_with(EndReason::Handshake("the client did not answer the handshake".into()));
                }
                _ = sleep_until(closing_deadline), if closing_deadline.is_some() => {
                    warn!(session = %self.session_id, "the client did not acknowledge the end of the output; closing");
                    let reason = self.end.clone().unwrap_or(EndReason::Exited);
                    self.close_channel(&reason);
                }
                _ = wait_permit(&self.stdin_tx), if self.stdin_blocked => {
                    self.stdin_blocked = false;
                }
                _ = &mut self.idle => self.on_idle_check(),
                _ = wait_sleep(&mut self.grace), if self.grace.is_some() => {
                    self.grace = None;
                    if self.socket.is_none() {
                        self.end_with(EndReason::ClientGone);
                        if self.socket.is_none() { self.finish_now(); }
                    }
                }
                event = self.events.recv() => self.on_task_event(event),
                _ = self.exec.shutdown.cancelled(), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    self.end_with(EndReason::Shutdown)
                }
                _ = ping.tick(), if self.socket.is_some() => self.writes.push(Message::Ping(Bytes::from_static(b"ecsd"))),
            }
            self.deliver_held().await;
        }
        self.shutdown_process().await;
        self.audit();
        if let Some(socket) = self.socket.take() {
            linger(socket).await;
        }
    }

    // ----- the websocket ------------------------------------------------------------------

    fn attach(&mut self, socket: WebSocket) {
        let first = self.handshake_sent.is_none() && !self.handshake_done;
        self.socket = Some(socket);
        self.grace = None;
        self.resume_pending = false;
        self.writes.clear();
        if first {
            let payload = serde_json::to_vec(&HandshakeRequest::interactive_commands()).unwrap_or_default();
            self.emit(PayloadType::HandshakeRequest, Bytes::from(payload));
            self.handshake_sent = Some(Instant::now());
        } else {
            // A reconnect: whatever was not acknowledged on the old socket goes again.
            for frame in self.out.resend_all(Instant::now()) {
                self.writes.push(Message::Binary(frame));
            }
        }
    }

    /// The websocket is gone (broken, closed, or stuck).
    fn detach(&mut self, clean_close: bool) {
        if self.socket.take().is_none() {
            return;
        }
        self.writes.clear();
        let will_resume = matches!(self.client, ClientKind::Plugin) && (!clean_close || self.resume_pending);
        if self.finished || self.end.is_some() && self.out.all_acked() && !will_resume {
            self.finish_now();
        } else if will_resume {
            debug!(session = %self.session_id, "the websocket broke; waiting for the client to resume");
            self.grace = Some(self.exec.clock.sleep(RESUME_GRACE));
        } else {
            self.end_with(EndReason::ClientGone);
            self.finish_now();
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) {
        match frame {
            Some(Ok(Message::Binary(bytes))) => self.on_message(bytes).await,
            Some(Ok(Message::Text(_))) => self.bad_frame("a text frame after the opening one"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) => self.detach(true),
            Some(Err(_)) | None => self.detach(false),
        }
    }

    fn bad_frame(&mut self, problem: &str) {
        self.bad_frames += 1;
        if self.bad_frames <= BAD_FRAMES_LOGGED {
            warn!(session = %self.session_id, problem, "ignored a bad data-channel frame");
        }
    }

    async fn on_message(&mut self, bytes: Bytes) {
        let msg = match AgentMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.bad_frame(&e.to_string());
                return;
            }
        };
        match msg.message_type {
            MessageType::Acknowledge => match Acknowledge::sequence_of(&msg.payload) {
                Ok(seq) => {
                    if self.out.ack(seq, Instant::now()) == Acked::Stale {
                        debug!(session = %self.session_id, seq, "acknowledgement of nothing in flight");
                    }
                }
                Err(_) => self.bad_frame("an acknowledgement without a sequence number"),
            },
            MessageType::InputStreamData => self.on_input(msg).await,
            other => debug!(session = %self.session_id, kind = other.as_str(), "ignored a message"),
        }
    }

    async fn on_input(&mut self, msg: AgentMessage) {
        match self.inc.classify(msg.sequence_number) {
            Arrival::InOrder => {
                if self.inc.has_next() {
                    // A copy of the message waiting in line for stdin room.
                    self.ack(&msg);
                    return;
                }
                if self.stdin_blocked && is_stdin(&msg) {
                    // No room: left unacknowledged, it comes again.
                    return;
                }
                if let Delivery::Done = self.deliver(&msg).await {
                    self.ack(&msg);
                    self.inc.advance();
                }
            }
            Arrival::Ahead => {
                self.ack(&msg);
                self.inc.hold(msg);
            }
            Arrival::Behind => self.ack(&msg),
            Arrival::Full => {
                debug!(session = %self.session_id, seq = msg.sequence_number, "input ahead of a gap dropped")
            }
        }
    }

    /// Handles input held ahead of a gap that is now next in line.
    async fn deliver_held(&mut self) {
        if self.stdin_blocked {
            return;
        }
        while let Some(msg) = self.inc.take_next() {
            match self.deliver(&msg).await {
                Delivery::Done => self.inc.advance(),
                Delivery::Later => {
                    self.inc.hold(msg);
                    return;
                }
            }
        }
    }

    async fn deliver(&mut self, msg: &AgentMessage) -> Delivery {
        match msg.payload_type {
            PayloadType::HandshakeResponse => {
                self.on_handshake_response(&msg.payload);
                Delivery::Done
            }
            PayloadType::Size => {
                match serde_json::from_slice::<TerminalSize>(&msg.payload) {
                    Ok(size) => self.on_size(size).await,
                    Err(_) => self.bad_frame("a terminal size that is not {\"cols\":N,\"rows\":N}"),
                }
                Delivery::Done
            }
            PayloadType::Output => {
                self.touch();
                self.queue_stdin(StdinMsg::Data(msg.payload.clone()))
            }
            PayloadType::Flag => match Flag::parse(&msg.payload) {
                Some(Flag::TerminateSession) => {
                    self.end_with(EndReason::ClientTerminated);
                    Delivery::Done
                }
                // A terminal's input has no end (Ctrl-D is a key): closing it would hang the
                // process up, as `ecsd exec --interactive </dev/null` must not.
                Some(Flag::StdinEof) if self.tty() => Delivery::Done,
                Some(Flag::StdinEof) => self.queue_stdin(StdinMsg::Eof),
                Some(Flag::Signal(signal)) => {
                    self.touch();
                    if let Proc::Running(p) = &self.proc
                        && let Err(e) = p.kill(signal).await
                    {
                        debug!(session = %self.session_id, signal, error = %e, "cannot signal the process");
                    }
                    Delivery::Done
                }
                Some(Flag::Other(n)) => {
                    debug!(session = %self.session_id, flag = n, "ignored a flag");
                    Delivery::Done
                }
                None => {
                    self.bad_frame("a flag that is not 4 bytes");
                    Delivery::Done
                }
            },
            other => {
                debug!(session = %self.session_id, payload_type = other.code(), "ignored input");
                Delivery::Done
            }
        }
    }

    fn queue_stdin(&mut self, item: StdinMsg) -> Delivery {
        if !self.wants_stdin() {
            return Delivery::Done;
        }
        let Some(tx) = &self.stdin_tx else { return Delivery::Done };
        match tx.try_send(item) {
            Ok(()) => Delivery::Done,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stdin_blocked = true;
                Delivery::Later
            }
            // The process no longer reads its stdin: what comes is dropped, as a pipe would.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stdin_tx = None;
                Delivery::Done
            }
        }
    }

    fn on_handshake_response(&mut self, payload: &[u8]) {
        if self.handshake_done {
            return;
        }
        let refusal = match serde_json::from_slice::<HandshakeResponse>(payload) {
            Ok(r) => r.refusal(),
            Err(_) => Some("the handshake response is not a HandshakeResponse document".to_owned()),
        };
        if let Some(why) = refusal {
            warn!(session = %self.session_id, why, "the client refused the session");
            self.end_with(EndReason::Handshake(why));
            return;
        }
        let took = self.handshake_sent.map(|at| at.elapsed()).unwrap_or_default();
        self.handshake_sent = None;
        let done = HandshakeComplete {
            handshake_time_to_complete: u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            customer_message: String::new(),
        };
        let payload = serde_json::to_vec(&done).unwrap_or_default();
        self.emit(PayloadType::HandshakeComplete, Bytes::from(payload));
        self.handshake_done = true;
        if matches!(self.proc, Proc::NotStarted) && self.end.is_none() {
            self.size_deadline = Some(Instant::now() + SIZE_WAIT);
        }
    }

    async fn on_size(&mut self, size: TerminalSize) {
        self.touch();
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX).max(1);
        let size = ConsoleSize { cols: clamp(size.cols), rows: clamp(size.rows) };
        self.size = Some(size);
        match &self.proc {
            Proc::NotStarted if self.handshake_done && self.end.is_none() => {
                self.size_deadline = None;
                self.start_process();
            }
            Proc::Running(p) if self.tty() => {
                if let Err(e) = p.resize(size.cols, size.rows).await {
                    debug!(session = %self.session_id, error = %e, "cannot resize the terminal");
                }
            }
            _ => {}
        }
    }

    /// An acknowledgement of `msg` goes out.
    fn ack(&mut self, msg: &AgentMessage) {
        let payload = serde_json::to_vec(&Acknowledge::of(msg)).unwrap_or_default();
        let ack = AgentMessage::new(
            MessageType::Acknowledge,
            0,
            FLAGS_ACK,
            self.ids.next_id(),
            PayloadType::Undefined,
            Bytes::from(payload),
            epoch_ms(),
        );
        self.writes.push(Message::Binary(Bytes::from(ack.encode())));
    }

    /// A stream message goes out (and stays in the window until acknowledged).
    fn emit(&mut self, payload_type: PayloadType, payload: Bytes) {
        self.emit_at(payload_type, payload, Instant::now(), epoch_ms());
    }

    fn emit_at(&mut self, payload_type: PayloadType, payload: Bytes, now: Instant, created: u64) {
        let ids = &mut self.ids;
        let frame = self.out.send(now, |seq| {
            let flags = if seq == 0 { FLAG_SYN } else { 0 };
            let msg = AgentMessage::new(
                MessageType::OutputStreamData,
                seq,
                flags,
                ids.next_id(),
                payload_type,
                payload,
                created,
            );
            Bytes::from(msg.encode())
        });
        if self.socket.is_some() {
            self.writes.push(Message::Binary(frame));
        }
    }

    fn retransmit(&mut self) {
        let now = Instant::now();
        if self.out.oldest_wait(now).is_some_and(|w| w > GIVE_UP) {
            warn!(session = %self.session_id, "the client left output unacknowledged for {GIVE_UP:?}; ending");
            self.end_with(EndReason::ClientGone);
            self.finish_now();
            return;
        }
        for frame in self.out.due(now) {
            self.writes.push(Message::Binary(frame));
        }
    }

    async fn flush(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let Some(socket) = self.socket.as_mut() else {
            self.writes.clear();
            return;
        };
        let writes = &mut self.writes;
        let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
            for m in writes.drain(..) {
                socket.feed(m).await?;
            }
            socket.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.detach(false),
            Err(_) => {
                warn!(session = %self.session_id, "the client stopped reading the websocket");
                self.detach(false);
            }
        }
    }

    // ----- the process --------------------------------------------------------------------

    fn start_process(&mut self) {
        if !matches!(self.proc, Proc::NotStarted) || self.end.is_some() {
            return;
        }
        let tty = self.tty();
        self.start_size = self.size;
        let request = ExecRequest {
            command: self.spec.command.clone(),
            tty,
            stdin: self.wants_stdin(),
            console_size: tty.then(|| self.size.unwrap_or(DEFAULT_SIZE)),
            // What the SSM agent gives a session's shell: a terminal type full-screen
            // programs know.
            env: if tty { vec!["TERM=xterm-256color".to_owned()] } else { vec![] },
        };
        let engine = Arc::clone(&self.exec.engine);
        let spec = Arc::clone(&self.spec);
        self.proc = Proc::Starting(tokio::spawn(async move {
            engine.exec(&spec.cluster, &spec.task_id, &spec.container, request).await
        }));
    }

    async fn on_started(&mut self, started: Result<ExecProcess, ExecError>) {
        match started {
            Ok(mut process) => {
                debug!(session = %self.session_id, exec = process.id(), "exec'd process started");
                self.stdout = process.stdout.take();
                self.stderr = process.stderr.take();
                if let (Some(stdin), Some(rx)) = (process.stdin.take(), self.stdin_rx.take()) {
                    tokio::spawn(pump_stdin(stdin, rx));
                }
                // A size that came while the process was starting.
                if let Some(size) = self.size
                    && self.tty()
                    && self.size != self.start_size
                    && let Err(e) = process.resize(size.cols, size.rows).await
                {
                    debug!(session = %self.session_id, error = %e, "cannot size the terminal");
                }
                let ending = self.end.is_some();
                self.proc = Proc::Running(process);
                if ending {
                    self.kill().await;
                }
            }
            Err(e) => {
                warn!(session = %self.session_id, task = %self.spec.task_arn, container = %self.spec.container,
                      error = %crate::error_chain(&e), "cannot start the exec'd process");
                self.proc = Proc::Done;
                self.stdin_tx = None;
                self.exit_code = Some(CANNOT_RUN);
                self.notice = Some(format!(
                    "ecsd: cannot run {} in container {}: {}",
                    self.spec.command_text,
                    self.spec.container,
                    crate::error_chain(&e)
                ));
                self.end_with(EndReason::StartFailed);
            }
        }
    }

    fn on_output(&mut self, read: std::io::Result<usize>, payload_type: PayloadType, from_stderr: bool) {
        let stream = if from_stderr { &mut self.stderr } else { &mut self.stdout };
        match read {
            Ok(0) | Err(_) => *stream = None,
            Ok(n) => {
                self.touch();
                let buf = if from_stderr { &self.buf_err } else { &self.buf };
                let data = Bytes::copy_from_slice(&buf[..n]);
                let (now, created) = (Instant::now(), epoch_ms());
                for start in (0..n).step_by(self.chunk) {
                    let end = (start + self.chunk).min(n);
                    self.emit_at(payload_type, data.slice(start..end), now, created);
                }
                if self.drain_until.is_some() {
                    self.drain_until = Some(Instant::now() + DRAIN_IDLE);
                }
            }
        }
    }

    fn on_exit(&mut self, code: Result<i32, crate::runtime::RuntimeError>) {
        let code = code.unwrap_or_else(|e| {
            warn!(session = %self.session_id, error = %e, "cannot learn the exit code of the exec'd process");
            -1
        });
        debug!(session = %self.session_id, code, "exec'd process exited");
        self.exit_code = Some(code);
        if self.stdout.is_some() || self.stderr.is_some() {
            self.drain_until = Some(Instant::now() + DRAIN_IDLE);
        }
    }

    async fn kill(&mut self) {
        if let Proc::Running(p) = &self.proc
            && self.exit_code.is_none()
            && let Err(e) = p.kill(SIGKILL).await
        {
            debug!(session = %self.session_id, error = %e, "cannot kill the exec'd process");
        }
    }

    /// The process ends with the session, whatever happened.
    async fn shutdown_process(&mut self) {
        self.stdin_tx = None;
        match std::mem::replace(&mut self.proc, Proc::Done) {
            Proc::Starting(handle) => {
                // Dropping a started process kills it.
                if let Ok(Ok(p)) = handle.await {
                    drop(p);
                }
            }
            Proc::Running(p) => {
                if self.exit_code.is_none() {
                    let _ = p.kill(SIGKILL).await;
                    if let Ok(code) = tokio::time::timeout(Duration::from_secs(5), p.wait()).await {
                        self.exit_code = code.ok();
                    }
                }
            }
            Proc::NotStarted | Proc::Done => {}
        }
        self.stdout = None;
        self.stderr = None;
    }

    // ----- the end ------------------------------------------------------------------------

    fn end_with(&mut self, reason: EndReason) {
        if self.end.is_some() {
            return;
        }
        if reason != EndReason::Exited {
            debug!(session = %self.session_id, reason = reason.as_str(), "ending the session");
        }
        self.end = Some(reason);
        self.size_deadline = None;
        // A running process is killed by `progress`; one never started never will be.
        if matches!(self.proc, Proc::NotStarted) {
            self.proc = Proc::Done;
        }
    }

    /// Moves the end along: kills the process once the session is ending, and once the
    /// output is all out and acknowledged, sends the exit code and `channel_closed`.
    async fn progress(&mut self) {
        if self.finished {
            return;
        }
        // A process not started yet is not over: `end_with` makes it never to be (Done).
        let process_over = match &self.proc {
            Proc::Done => true,
            Proc::Running(_) => self.exit_code.is_some(),
            Proc::NotStarted | Proc::Starting(_) => false,
        };
        if process_over && self.end.is_some() && self.socket.is_none() && self.grace.is_none() {
            // Nobody will read what is left.
            self.stdout = None;
            self.stderr = None;
        }
        let output_over = self.stdout.is_none() && self.stderr.is_none();
        if process_over && output_over && self.end.is_none() {
            self.end = Some(EndReason::Exited);
        }
        let Some(reason) = self.end.clone() else { return };
        if !process_over {
            if matches!(self.proc, Proc::Running(_)) && !self.kill_sent {
                self.kill_sent = true;
                self.kill().await;
            }
            return;
        }
        if !output_over {
            return;
        }
        if self.socket.is_none() {
            // Nobody to tell: a client that may come back gets its grace; else done.
            if self.grace.is_none() {
                self.finish_now();
            }
            return;
        }
        if !self.handshake_done {
            // Nothing but channel_closed may go before the handshake.
            self.close_channel(&reason);
            return;
        }
        if let Some(text) = self.notice.take() {
            match self.client {
                ClientKind::Plugin => self.emit(PayloadType::Output, Bytes::from(format!("{text}\r\n"))),
                ClientKind::Ecsd(_) => self.emit(PayloadType::StdErr, Bytes::from(format!("{text}\n"))),
            }
        }
        if let (ClientKind::Ecsd(_), false, Some(code)) = (self.client, self.exit_sent, self.exit_code) {
            self.emit(PayloadType::ExitCode, Bytes::from(exit_code_payload(code)));
            self.exit_sent = true;
        }
        if self.out.all_acked() {
            self.close_channel(&reason);
        } else if self.closing_since.is_none() {
            self.closing_since = Some(Instant::now());
        }
    }

    fn close_channel(&mut self, reason: &EndReason) {
        let closed = ChannelClosed::new(
            self.ids.next_id(),
            epoch_ms(),
            &self.spec.target(),
            &self.session_id,
            &reason.message(),
        );
        let msg = AgentMessage::new(
            MessageType::ChannelClosed,
            0,
            0,
            self.ids.next_id(),
            PayloadType::Undefined,
            Bytes::from(serde_json::to_vec(&closed).unwrap_or_default()),
            epoch_ms(),
        );
        self.writes.push(Message::Binary(Bytes::from(msg.encode())));
        self.writes.push(Message::Close(Some(CloseFrame { code: 1000, reason: "session ended".into() })));
        self.finished = true;
    }

    fn finish_now(&mut self) {
        if self.end.is_none() {
            self.end = Some(EndReason::ClientGone);
        }
        self.finished = true;
    }

    fn touch(&mut self) {
        self.last_activity = self.exec.clock.now();
    }

    fn on_idle_check(&mut self) {
        let limit = self.exec.settings.idle_timeout;
        let quiet = self.exec.clock.now() - self.last_activity;
        if quiet >= limit.as_secs_f64() {
            if self.end.is_none() {
                info!(session = %self.session_id, "ending an idle exec session");
            }
            self.end_with(EndReason::Idle(limit));
            // Nothing more to wait for on this timer.
            self.idle = Box::pin(std::future::pending());
        } else {
            let left = Duration::from_secs_f64(limit.as_secs_f64() - quiet);
            self.idle = self.exec.clock.sleep(left);
        }
    }

    fn on_task_event(&mut self, event: Result<TaskEvent, broadcast::error::RecvError>) {
        let task = match event {
            Ok(e) if e.task.id == self.spec.task_id && e.task.cluster == self.spec.cluster => e.task,
            Ok(_) => return,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                match self.exec.engine.task(&self.spec.cluster, &self.spec.task_id) {
                    Some(t) => t,
                    None => {
                        self.end_with(EndReason::TaskStopped);
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.events = self.exec.engine.subscribe();
                return;
            }
        };
        let container_up =
            task.container(&self.spec.container).is_some_and(|c| c.status == ContainerStatus::Running);
        if task.desired == TaskStatus::Stopped || !container_up {
            self.end_with(EndReason::TaskStopped);
        }
    }

    fn audit(&self) {
        let ended = self.exec.clock.now();
        let reason = self.end.as_ref().map_or("ended", EndReason::as_str);
        let client = match self.client {
            ClientKind::Plugin => "session-manager-plugin",
            ClientKind::Ecsd(_) => "ecsd-exec",
        };
        info!(
            target: "ecsd::exec::audit",
            session = %self.session_id,
            cluster = %self.spec.cluster,
            task = %self.spec.task_arn,
            container = %self.spec.container,
            command = %self.spec.command_text,
            client,
            started = %super::protocol::rfc3339_millis((self.started_at * 1000.0) as u64),
            ended = %super::protocol::rfc3339_millis((ended * 1000.0) as u64),
            exit_code = self.exit_code,
            reason,
            bad_frames = self.bad_frames,
            "exec session"
        );
    }
}

fn is_stdin(msg: &AgentMessage) -> bool {
    msg.payload_type == PayloadType::Output
        || msg.payload_type == PayloadType::Flag && Flag::parse(&msg.payload) == Some(Flag::StdinEof)
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1)
}

async fn recv(socket: &mut Option<WebSocket>) -> Option<Result<Message, axum::Error>> {
    match socket {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// What the process did.
enum ProcEvent {
    Started(Result<ExecProcess, ExecError>),
    Exited(Result<i32, crate::runtime::RuntimeError>),
}

/// The process started (or failed to), or it exited.
async fn proc_event(proc: &mut Proc) -> ProcEvent {
    match proc {
        Proc::Starting(handle) => ProcEvent::Started(match handle.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ExecError::Runtime(crate::runtime::RuntimeError::Cancelled { operation: "exec" })),
        }),
        Proc::Running(p) => ProcEvent::Exited(p.wait().await),
        _ => std::future::pending().await,
    }
}

/// Reads at most `room` bytes of output.
async fn read_some(stream: &mut Option<ExecOutput>, buf: &mut [u8], room: usize) -> std::io::Result<usize> {
    let limit = buf.len().min(room);
    match stream {
        Some(s) => s.read(&mut buf[..limit]).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn wait_sleep(sleep: &mut Option<Sleep>) {
    match sleep {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}

async fn wait_permit(tx: &Option<mpsc::Sender<StdinMsg>>) {
    match tx {
        Some(tx) => {
            // The permit is dropped at once: this only waits for room.
            let _ = tx.reserve().await;
        }
        None => std::future::pending().await,
    }
}

/// Waits (briefly) for the client to answer the close, reading what it still sends: a
/// socket closed with unread data resets the connection, and the client could lose the end
/// of the output and `channel_closed` with it.
async fn linger(mut socket: WebSocket) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Copies queued input to the process's stdin until the queue closes or stdin does.
async fn pump_stdin(mut stdin: ExecStdin, mut rx: mpsc::Receiver<StdinMsg>) {
    while let Some(item) = rx.recv().await {
        match item {
            StdinMsg::Data(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            StdinMsg::Eof => {
                let _ = stdin.shutdown().await;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ecsds_own_client_gets_larger_output_messages() {
        assert_eq!(output_chunk(super::super::client::CLIENT_VERSION), ECSD_CHUNK);
        // The stock plugin, anything else, and a name that merely contains ecsd's.
        for other in ["1.2.0.0", "", "ecsd-exec", "my-ecsd-exec/1.0", "ECSD-EXEC/1.0"] {
            assert_eq!(output_chunk(other), OUTPUT_CHUNK, "{other:?}");
        }
        // The bytes in flight are the same either way.
        assert_eq!((WINDOW_BYTES / ECSD_CHUNK) * ECSD_CHUNK, (WINDOW_BYTES / OUTPUT_CHUNK) * OUTPUT_CHUNK);
    }
}
