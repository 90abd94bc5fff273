//! The client side of the data channel, as `ecsd exec` speaks it (and the tests): it opens
//! the websocket with the session's token and its [`ClientOptions`], answers the handshake,
//! sends stdin (with its end), terminal sizes and signals, writes what comes back to stdout
//! and stderr, acknowledges every message, and learns the exit code before `channel_closed`.
//!
//! It announces itself as [`CLIENT_NAME`] in its version, and the server then sends output
//! in larger messages than the plugin gets (see `session::output_chunk`). The same rules as
//! the server's hold for what it sends: numbered messages of at most 1024 bytes, a bounded
//! window of unacknowledged ones (so a slow server holds back stdin), and retransmission.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::codec::{AgentMessage, FLAGS_ACK, MessageIds, MessageType, OUTPUT_CHUNK, PayloadType};
use super::protocol::{
    ACTION_SUCCESS, Acknowledge, ChannelClosed, ClientOptions, Flag, HandshakeRequest, HandshakeResponse,
    OpenDataChannelInput, ProcessedClientAction, TerminalSize, parse_exit_code,
};
use super::stream::{Arrival, Incoming, Outgoing};

/// Input messages in flight at most.
const WINDOW: usize = 256;
/// Frames handled in one go when they are there already.
const RECV_BATCH: usize = 256;
/// Output messages held ahead of a gap at most: ecsd's window, the most it has in flight
/// (each at most `MAX_PAYLOAD`, so the bound is 64 MiB even for a server that sends the
/// largest messages).
const REORDER: usize = 1024;
/// How long the server may leave input unacknowledged before the session is given up.
const GIVE_UP: Duration = Duration::from_secs(300);
const STDOUT_BUFFER: usize = 256 * 1024;

/// How long the client waits for the server at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connecting and the websocket upgrade.
    pub connect: Duration,
    /// The server sending nothing at all (it pings every 54 s).
    pub silence: Duration,
    /// A write to the server waiting for room.
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connect: Duration::from_secs(30),
            silence: Duration::from_secs(180),
            write: Duration::from_secs(30),
        }
    }
}

/// How ecsd's client's version starts: a server that sees it sends output in messages of
/// up to 32 KiB instead of the plugin's 1024 bytes (this client takes anything up to
/// [`MAX_PAYLOAD`](super::codec::MAX_PAYLOAD)).
pub const CLIENT_NAME: &str = "ecsd-exec/";
/// The version ecsd's client announces.
pub const CLIENT_VERSION: &str = concat!("ecsd-exec/", env!("CARGO_PKG_VERSION"));

/// What the caller tells a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// The local terminal's new size.
    Resize { cols: u16, rows: u16 },
    /// A signal for the remote process (without a terminal; with one, Ctrl-C is a byte).
    Signal(i32),
    /// End the session (the process is killed).
    Terminate,
}

/// The local ends of a session.
pub struct ClientIo {
    /// What goes to the process's stdin; `None`: nothing (the options say `stdin: false`).
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIo").field("stdin", &self.stdin.is_some()).finish_non_exhaustive()
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The process's exit code, when the server said it.
    pub exit_code: Option<i32>,
    /// What `channel_closed` said (empty for a normal end).
    pub message: String,
}

/// Why a session could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the data channel at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("cannot connect to the data channel at {url}: no answer within {limit:?}")]
    ConnectTimeout { url: String, limit: Duration },
    #[error("the server refused the data channel: {0}")]
    Refused(String),
    #[error("the data channel broke before the session ended")]
    Broken,
    #[error("the server left input unacknowledged for {}s", GIVE_UP.as_secs())]
    Unresponsive,
    #[error("the server sent nothing for {0:?}")]
    Silent(Duration),
    #[error("the server took no data for {0:?}")]
    Stalled(Duration),
    #[error("the server did not speak the data channel protocol: {0}")]
    Protocol(String),
    #[error("cannot write the session's output")]
    Output(#[source] std::io::Error),
}

/// Runs a session at `url` with `token` to its end.
pub async fn run(
    url: &str,
    token: &str,
    options: ClientOptions,
    io: ClientIo,
) -> Result<Outcome, ClientError> {
    run_with(url, token, options, io, Limits::default()).await
}

/// [`run`] with other limits on how long the server may keep the client waiting.
pub async fn run_with(
    url: &str,
    token: &str,
    options: ClientOptions,
    io: ClientIo,
    limits: Limits,
) -> Result<Outcome, ClientError> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(super::MAX_MESSAGE))
        .max_frame_size(Some(super::MAX_MESSAGE))
        .read_buffer_size(64 << 10);
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _) = tokio::time::timeout(limits.connect, connecting)
        .await
        .map_err(|_| ClientError::ConnectTimeout { url: url.to_owned(), limit: limits.connect })?
        .map_err(|e| ClientError::Connect { url: url.to_owned(), source: Box::new(e) })?;
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_id: uuid::Uuid::new_v4().to_string(),
        client_version: CLIENT_VERSION.into(),
        ecsd_exec: Some(options),
    };
    let text = serde_json::to_string(&open).map_err(|e| ClientError::Protocol(e.to_string()))?;
    tokio::time::timeout(limits.write, ws.send(Message::Text(text.into())))
        .await
        .map_err(|_| ClientError::Stalled(limits.write))?
        .map_err(|_| ClientError::Broken)?;
    let mut s = State {
        options,
        out: Outgoing::new(WINDOW),
        inc: Incoming::new(REORDER),
        ids: MessageIds::new(*uuid::Uuid::new_v4().as_bytes()),
        writes: Vec::new(),
        handshake_done: false,
        size: (options.cols, options.rows),
        exit_code: None,
        stdout: BufWriter::with_capacity(STDOUT_BUFFER, io.stdout),
        stderr: io.stderr,
        dirty: false,
    };
    let mut stdin = io.stdin;
    let mut events = io.events;
    let mut events_open = true;
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut heard = Instant::now();
    // A frame found waiting when the silence ran out (see below).
    let mut early = None;
    loop {
        if s.dirty {
            s.stdout.flush().await.map_err(ClientError::Output)?;
            s.dirty = false;
        }
        if !s.writes.is_empty() {
            let writing = async {
                for m in s.writes.drain(..) {
                    ws.feed(m).await?;
                }
                ws.flush().await
            };
            tokio::time::timeout(limits.write, writing)
                .await
                .map_err(|_| ClientError::Stalled(limits.write))?
                .map_err(|_| ClientError::Broken)?;
        }
        let can_send = s.handshake_done && s.out.room() > 0;
        let resend_at = s.out.next_due();
        tokio::select! {
            frame = next_frame(&mut ws, &mut early) => {
                let mut frame = frame;
                // What else is there already is handled before acknowledgements go out.
                for _ in 0..RECV_BATCH {
                    match frame {
                        Some(Ok(Message::Binary(bytes))) => {
                            if let Some(outcome) = s.on_message(bytes).await? {
                                let _ = ws.close(None).await;
                                return Ok(outcome);
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return Err(match frame {
                                Some(f) if u16::from(f.code) == 1008 => ClientError::Refused(f.reason.to_string()),
                                _ => ClientError::Broken,
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Err(ClientError::Broken),
                    }
                    match ws.next().now_or_never() {
                        Some(next) => frame = next,
                        None => break,
                    }
                }
                // After the batch: writing our stdout may have taken a while.
                heard = Instant::now();
            },
            read = read_stdin(&mut stdin, &mut buf), if can_send && stdin.is_some() => match read {
                Ok(0) | Err(_) => {
                    stdin = None;
                    s.send(PayloadType::Flag, Bytes::copy_from_slice(&Flag::StdinEof.encode()));
                }
                Ok(n) => s.send(PayloadType::Output, Bytes::copy_from_slice(&buf[..n])),
            },
            event = events.recv(), if events_open => match event {
                Some(ClientEvent::Resize { cols, rows }) => {
                    s.size = (cols, rows);
                    if s.handshake_done && s.options.tty {
                        s.send_size();
                    }
                }
                Some(ClientEvent::Signal(n)) => {
                    if s.handshake_done {
                        // With a terminal, as the plugin does: the keys that make these.
                        match (s.options.tty, n) {
                            (true, 2) => s.send(PayloadType::Output, Bytes::from_static(b"\x03")),
                            (true, 3) => s.send(PayloadType::Output, Bytes::from_static(b"\x1c")),
                            _ => s.send(PayloadType::Flag, Bytes::copy_from_slice(&Flag::Signal(n).encode())),
                        }
                    }
                }
                Some(ClientEvent::Terminate) => {
                    s.send(PayloadType::Flag, Bytes::copy_from_slice(&Flag::TerminateSession.encode()));
                }
                None => events_open = false,
            },
            _ = sleep_until(Some(heard + limits.silence)) => {
                // Writing our stdout may have held us back while frames came: only a
                // socket with nothing waiting is silent.
                match ws.next().now_or_never() {
                    Some(frame) => early = Some(frame),
                    None => return Err(ClientError::Silent(limits.silence)),
                }
            }
            _ = sleep_until(resend_at), if resend_at.is_some() => {
                let now = Instant::now();
                if s.out.oldest_wait(now).is_some_and(|w| w > GIVE_UP) {
                    return Err(ClientError::Unresponsive);
                }
                for frame in s.out.due(now) {
                    s.writes.push(Message::Binary(frame));
                }
            }
        }
    }
}

struct State {
    options: ClientOptions,
    out: Outgoing,
    inc: Incoming,
    ids: MessageIds,
    writes: Vec<Message>,
    handshake_done: bool,
    size: (u16, u16),
    exit_code: Option<i32>,
    stdout: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    stderr: Box<dyn AsyncWrite + Send + Unpin>,
    dirty: bool,
}

impl State {
    /// Handles one message; `Some` once the channel is closed.
    async fn on_message(&mut self, bytes: Bytes) -> Result<Option<Outcome>, ClientError> {
        let msg = AgentMessage::decode(bytes).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match msg.message_type {
            MessageType::Acknowledge => {
                if let Ok(seq) = Acknowledge::sequence_of(&msg.payload) {
                    self.out.ack(seq, Instant::now());
                }
            }
            MessageType::OutputStreamData => match self.inc.classify(msg.sequence_number) {
                Arrival::InOrder => {
                    self.ack(&msg);
                    self.inc.advance();
                    self.handle(msg).await?;
                    while let Some(next) = self.inc.take_next() {
                        self.inc.advance();
                        self.handle(next).await?;
                    }
                }
                Arrival::Ahead => {
                    self.ack(&msg);
                    self.inc.hold(msg);
                }
                Arrival::Behind => self.ack(&msg),
                Arrival::Full => {}
            },
            MessageType::ChannelClosed => {
                let closed: ChannelClosed = serde_json::from_slice(&msg.payload)
                    .map_err(|_| ClientError::Protocol("channel_closed without its document".into()))?;
                self.stdout.flush().await.map_err(ClientError::Output)?;
                return Ok(Some(Outcome { exit_code: self.exit_code, message: closed.output }));
            }
            _ => {}
        }
        Ok(None)
    }

    async fn handle(&mut self, msg: AgentMessage) -> Result<(), ClientError> {
        match msg.payload_type {
            PayloadType::HandshakeRequest => {
                let request: HandshakeRequest = serde_json::from_slice(&msg.payload)
                    .map_err(|_| ClientError::Protocol("a HandshakeRequest that does not parse".into()))?;
                let actions = request
                    .requested_client_actions
                    .iter()
                    .map(|a| {
                        let known = a.action_type == "SessionType"
                            && matches!(
                                a.action_parameters.get("SessionType").and_then(|t| t.as_str()),
                                Some("InteractiveCommands" | "NonInteractiveCommands" | "Standard_Stream")
                            );
                        ProcessedClientAction {
                            action_type: a.action_type.clone(),
                            action_status: if known { ACTION_SUCCESS } else { 3 },
                            action_result: serde_json::Value::Null,
                            error: if known {
                                String::new()
                            } else {
                                format!("Unsupported action {}", a.action_type)
                            },
                        }
                    })
                    .collect();
                let response = HandshakeResponse {
                    client_version: CLIENT_VERSION.into(),
                    processed_client_actions: actions,
                    errors: None,
                };
                let payload =
                    serde_json::to_vec(&response).map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.send(PayloadType::HandshakeResponse, Bytes::from(payload));
            }
            PayloadType::HandshakeComplete => {
                self.handshake_done = true;
                if self.options.tty {
                    self.send_size();
                }
            }
            PayloadType::Output => {
                self.stdout.write_all(&msg.payload).await.map_err(ClientError::Output)?;
                self.dirty = true;
            }
            PayloadType::StdErr => {
                self.stdout.flush().await.map_err(ClientError::Output)?;
                self.stderr.write_all(&msg.payload).await.map_err(ClientError::Output)?;
                self.stderr.flush().await.map_err(ClientError::Output)?;
            }
            PayloadType::ExitCode => self.exit_code = parse_exit_code(&msg.payload),
            _ => {}
        }
        Ok(())
    }

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

    fn send(&mut self, payload_type: PayloadType, payload: Bytes) {
        let ids = &mut self.ids;
        let frame = self.out.send(Instant::now(), |seq| {
            let msg = AgentMessage::new(
                MessageType::InputStreamData,
                seq,
                0,
                ids.next_id(),
                payload_type,
                payload,
                epoch_ms(),
            );
            Bytes::from(msg.encode())
        });
        self.writes.push(Message::Binary(frame));
    }

    fn send_size(&mut self) {
        let (cols, rows) = self.size;
        if cols == 0 || rows == 0 {
            return;
        }
        let size = TerminalSize { cols: u32::from(cols), rows: u32::from(rows) };
        let payload = serde_json::to_vec(&size).unwrap_or_default();
        self.send(PayloadType::Size, Bytes::from(payload));
    }
}

async fn read_stdin(
    stdin: &mut Option<Box<dyn AsyncRead + Send + Unpin>>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match stdin {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The frame found early, else the socket's next.
async fn next_frame<S: futures_util::Stream + Unpin>(
    ws: &mut S,
    early: &mut Option<Option<S::Item>>,
) -> Option<S::Item> {
    match early.take() {
        Some(frame) => frame,
        None => ws.next().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}
