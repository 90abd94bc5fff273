//! ECS Exec: the sessions ExecuteCommand opens, served over the Session Manager data channel
//! that the stock `session-manager-plugin` (and `ecsd exec`) speak, each running one command
//! in a task's container through [`Engine::exec`].
//!
//! | file | owns |
//! |---|---|
//! | `codec` | the binary message (pure) |
//! | `protocol` | the JSON documents it carries |
//! | `stream` | sequence numbers, acknowledgements, retransmission, the send window |
//! | `words` | the command string to arguments (POSIX word splitting) and back |
//! | `registry` | tokens and sessions: who may open what |
//! | `session` | one session: the websocket, the handshake, the process, the end |
//! | `client` | the client side, for `ecsd exec` and tests |
//!
//! Only the API reaches this module (ExecuteCommand, the websocket route, AmazonSSM
//! ResumeSession and TerminateSession); it reaches containers only through the engine. A
//! session's memory is bounded: a window of unacknowledged output, a bounded stdin queue and
//! bounded reordering. Each session writes one audit line (target `ecsd::exec::audit`) when
//! it ends: cluster, task, container, command, start, end, exit code; never what went
//! through it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::engine::Engine;
use crate::model::task::{ContainerStatus, TaskStatus};
use crate::model::time::Clock;

pub mod client;
pub mod codec;
pub mod protocol;
mod registry;
mod session;
pub mod stream;
pub mod words;

pub use registry::{Grant, RedeemError, SessionSpec, TOKEN_TTL};

use protocol::OpenDataChannelInput;
use registry::{Redeemed, Registry};
use session::{ClientKind, Control, EndReason};

/// The longest command ExecuteCommand takes, in characters.
pub const MAX_COMMAND_CHARS: usize = 4096;
/// How long a new websocket may take to send its opening frame.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for sessions to say goodbye to their clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The largest websocket message accepted from a client.
pub const MAX_MESSAGE: usize = codec::PREAMBLE + codec::MAX_PAYLOAD;

/// Settings of ECS Exec (`ECSD_EXEC_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// A session without input or output for this long is ended (`ECSD_EXEC_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// Sessions (opened or waiting for their websocket) one task may have at a time
    /// (`ECSD_EXEC_MAX_SESSIONS`).
    pub max_sessions_per_task: usize,
    /// The base URL clients reach the data channel at (`ECSD_EXEC_URL`, e.g. a TLS
    /// terminator's `wss://host/`); without it, `ws://` and the Host the client used.
    pub url: Option<String>,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings { idle_timeout: Duration::from_secs(20 * 60), max_sessions_per_task: 10, url: None }
    }
}

/// Why ExecuteCommand cannot open a session.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("Interactive is the only mode supported currently.")]
    NotInteractive,
    #[error("The referenced task was not found.")]
    TaskNotFound,
    #[error(
        "The execute command failed because execute command was not enabled when the task was run or the execute command agent isn’t running. Wait and try again or run a new task with execute command enabled and try again."
    )]
    NotEnabled,
    #[error(
        "The execute command failed because the task is {status}, not RUNNING, so the execute command agent isn’t running. Wait and try again, or run a new task."
    )]
    TaskNotRunning { status: &'static str },
    #[error(
        "The task has more than one container ({}); name the container to run the command in with the container parameter.",
        .names.join(", ")
    )]
    ContainerRequired { names: Vec<String> },
    #[error("The task has no container named {name}; its containers are: {}.", .names.join(", "))]
    ContainerNotFound { name: String, names: Vec<String> },
    #[error(
        "The execute command failed because container {name} is {status}, not RUNNING, so the execute command agent isn’t running in it."
    )]
    ContainerNotRunning { name: String, status: &'static str },
    #[error("The command must be 1 to {MAX_COMMAND_CHARS} characters long; it is {len}.")]
    CommandLength { len: usize },
    #[error("The command cannot be run: {0}.")]
    Command(#[from] words::SplitError),
    #[error(
        "Task {task} has {limit} ECS Exec sessions already, the most ecsd allows per task (ECSD_EXEC_MAX_SESSIONS); end one and try again."
    )]
    TooManySessions { task: String, limit: usize },
    #[error("ecsd cannot make a session token: the system's random source failed: {0}")]
    Random(getrandom::Error),
}

/// What ExecuteCommand asks for, with the cluster and task resolved by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteRequest {
    pub cluster: String,
    pub task_id: String,
    pub container: Option<String>,
    pub command: String,
    pub interactive: bool,
}

/// A session granted: what ExecuteCommand answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub grant: Grant,
    pub task_arn: String,
    pub container_name: String,
    pub container_arn: String,
}

/// ECS Exec for one daemon; see the module docs.
#[derive(Debug)]
pub struct Exec {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    settings: ExecSettings,
    registry: Mutex<Registry>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
}

impl Exec {
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>, settings: ExecSettings) -> Arc<Exec> {
        Arc::new(Exec {
            engine,
            clock,
            settings,
            registry: Mutex::new(Registry::default()),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
        })
    }

    pub fn settings(&self) -> &ExecSettings {
        &self.settings
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks an ExecuteCommand request as ECS does and grants a session for it.
    pub fn grant(&self, req: &ExecuteRequest) -> Result<Granted, GrantError> {
        if !req.interactive {
            return Err(GrantError::NotInteractive);
        }
        let len = req.command.chars().count();
        if len == 0 || len > MAX_COMMAND_CHARS {
            return Err(GrantError::CommandLength { len });
        }
        let task = self.engine.task(&req.cluster, &req.task_id).ok_or(GrantError::TaskNotFound)?;
        if !task.enable_execute_command {
            return Err(GrantError::NotEnabled);
        }
        if task.last != TaskStatus::Running || task.desired != TaskStatus::Running {
            let status = match (task.last, task.desired) {
                (TaskStatus::Stopped, _) => "STOPPED",
                (last, TaskStatus::Running) => last.as_str(),
                _ => "STOPPING",
            };
            return Err(GrantError::TaskNotRunning { status });
        }
        let names: Vec<String> = task.containers.iter().map(|c| c.name.clone()).collect();
        let container = match (&req.container, task.containers.as_slice()) {
            (Some(name), _) => task
                .container(name)
                .ok_or_else(|| GrantError::ContainerNotFound { name: name.clone(), names: names.clone() })?,
            (None, [only]) => only,
            (None, _) => return Err(GrantError::ContainerRequired { names }),
        };
        if container.status != ContainerStatus::Running {
            return Err(GrantError::ContainerNotRunning {
                name: container.name.clone(),
                status: container.status.wire(),
            });
        }
        let command = words::split(&req.command)?;
        let spec = SessionSpec {
            cluster: task.cluster.clone(),
            task_id: task.id.clone(),
            task_arn: task.arn.clone(),
            container: container.name.clone(),
            runtime_id: container.runtime_id.clone(),
            command_text: req.command.clone(),
            command,
        };
        let token = hex::encode(random::<32>().map_err(GrantError::Random)?);
        let session_id =
            format!("ecs-execute-command-{}", hex::encode(random::<10>().map_err(GrantError::Random)?));
        let now = self.clock.now();
        let mut registry = self.registry();
        let limit = self.settings.max_sessions_per_task;
        if registry.count_for_task(&task.id, now) >= limit {
            return Err(GrantError::TooManySessions { task: task.arn.clone(), limit });
        }
        let grant = registry.grant(spec, session_id, token, now);
        debug!(session = %grant.session_id, task = %task.arn, container = %container.name, "exec session granted");
        Ok(Granted {
            grant,
            task_arn: task.arn.clone(),
            container_name: container.name.clone(),
            container_arn: container.arn.clone(),
        })
    }

    /// The websocket URL of `session_id`: under [`ExecSettings::url`] when set, else
    /// `ws://` on `host` (the address the client reached ecsd at).
    pub fn stream_url(&self, host: &str, session_id: &str) -> String {
        let base = match &self.settings.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("ws://{host}"),
        };
        format!("{base}/v1/data-channel/{session_id}?role=publish_subscribe")
    }

    /// AmazonSSM.ResumeSession: a new token for a live session's client to connect again;
    /// `None` when the session is over (the plugin then says it timed out and exits).
    pub fn resume(&self, session_id: &str) -> Option<String> {
        let token = hex::encode(random::<32>().ok()?);
        let control = self.registry().control(session_id)?;
        let token = self.registry().resume(session_id, token, self.clock.now())?;
        let _ = control.send(Control::Resuming);
        Some(token)
    }

    /// AmazonSSM.TerminateSession: ends the session (its process is killed). Whether it was
    /// live.
    pub fn terminate(&self, session_id: &str) -> bool {
        let control = self.registry().control(session_id);
        match control {
            Some(c) => c.send(Control::Terminate(EndReason::ClientTerminated)).is_ok(),
            None => {
                // Granted and never opened: the grant goes.
                self.registry().remove(session_id)
            }
        }
    }

    /// Sessions live, or granted and waiting for their websocket.
    pub fn session_count(&self) -> usize {
        let now = self.clock.now();
        self.registry().len(now)
    }

    /// Serves one websocket of the data channel at `/v1/data-channel/{session_id}`: reads the
    /// opening frame, redeems its token, and runs the session (or hands the socket to it, on
    /// a resume).
    pub async fn serve(self: Arc<Self>, session_id: String, mut socket: WebSocket) {
        let open = match tokio::time::timeout(OPEN_TIMEOUT, opening_frame(&mut socket)).await {
            Ok(Ok(open)) => open,
            Ok(Err(problem)) => {
                warn!(session = %session_id, problem, "refused a data channel");
                refuse(socket, problem).await;
                return;
            }
            Err(_) => {
                warn!(session = %session_id, "refused a data channel: no opening frame within {OPEN_TIMEOUT:?}");
                refuse(socket, "no opening frame in time").await;
                return;
            }
        };
        let client = match open.ecsd_exec {
            Some(options) => ClientKind::Ecsd(options),
            None => ClientKind::Plugin,
        };
        let redeemed = self.registry().redeem(&session_id, &open.token_value, self.clock.now());
        match redeemed {
            Ok(Redeemed::Open(spec)) => {
                if self.shutdown.is_cancelled() {
                    self.registry().remove(&session_id);
                    refuse(socket, "ecsd is shutting down").await;
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                self.registry().started(&session_id, tx);
                info!(session = %session_id, task = %spec.task_arn, container = %spec.container,
                      client = %open.client_version, "exec session opened");
                let chunk = session::output_chunk(&open.client_version);
                let runner = session::Runner::new(
                    Arc::clone(&self),
                    session_id.clone(),
                    spec,
                    rx,
                    socket,
                    client,
                    chunk,
                );
                // Tracked, so a shutdown waits for the session to end its process.
                self.sessions.track_future(runner.run()).await;
                self.registry().remove(&session_id);
            }
            Ok(Redeemed::Resume(control)) => {
                debug!(session = %session_id, "exec session resumed");
                // A resumed session keeps the client it was opened by.
                let _ = client;
                if let Err(mpsc::error::SendError(Control::Attach { socket })) =
                    control.send(Control::Attach { socket: Box::new(socket) })
                {
                    refuse(*socket, "the session has ended").await;
                }
            }
            Err(e) => {
                warn!(session = %session_id, error = %e, "refused a data channel");
                refuse(socket, &e.to_string()).await;
            }
        }
    }

    /// Ends every session (their processes are killed) and waits, briefly, for them to tell
    /// their clients.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.sessions.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.sessions.wait()).await.is_err() {
            warn!("exec sessions still ending after {SHUTDOWN_GRACE:?}; leaving them");
        }
    }
}

/// The opening frame: a text frame with OpenDataChannelInput.
async fn opening_frame(socket: &mut WebSocket) -> Result<OpenDataChannelInput, &'static str> {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|_| "the opening frame is not an OpenDataChannelInput document");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                return Err("the first frame must be the text OpenDataChannelInput");
            }
            Some(Ok(Message::Close(_))) | None => return Err("the client closed before opening the channel"),
            Some(Err(_)) => return Err("the websocket broke before the channel opened"),
        }
    }
}

/// Closes a websocket that opens no session, saying why (policy violation, 1008).
async fn refuse(mut socket: WebSocket, reason: &str) {
    let frame = CloseFrame { code: 1008, reason: reason.chars().take(120).collect::<String>().into() };
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::Close(Some(frame)))).await;
}

/// `N` bytes from the system's random source.
fn random<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)?;
    Ok(b)
}
