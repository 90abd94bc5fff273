//! `ecsd exec`: runs a command in a task's container over ECS Exec, the way
//! `aws ecs execute-command` does, but with ecsd's own data-channel client instead of the
//! Session Manager plugin, so it needs nothing installed, can pipe stdin byte for byte, and
//! exits with the command's exit code.
//!
//! The steps are an API client's: the task (given, or the first running one of a service
//! through ListTasks), the container (given, or the first of the task), ExecuteCommand, then
//! the session at the `streamUrl` it answers. Endpoint, region and credentials are found as
//! the aws CLI finds them (flags, `AWS_ENDPOINT_URL_ECS`, `AWS_ENDPOINT_URL`, the profile's
//! `endpoint_url`; `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's region; the standard
//! credential chain), except that the endpoint defaults to a local ecsd.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::Ecs;
use crate::aws::{AwsError, Keys};
use crate::config::ExecArgs;
use crate::exec::client::{self, ClientEvent, ClientIo};
use crate::exec::protocol::ClientOptions;
use crate::exec::words;

/// Where `ecsd exec` goes when nothing names an endpoint: `ecsd serve`'s default address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8000";
/// The exit code when `ecsd exec` itself fails (not the command).
pub const FAILED: u8 = 255;

/// Why `ecsd exec` could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum ExecCliError {
    #[error("{url} is not an http:// or https:// URL ({name})")]
    Endpoint { name: &'static str, url: String },
    #[error("{0}")]
    Api(#[from] AwsError),
    #[error("no service {service} in cluster {cluster}")]
    NoService { service: String, cluster: String },
    #[error("service {service} has no running task in cluster {cluster}")]
    NoRunningTask { service: String, cluster: String },
    #[error("no task {task} in cluster {cluster}")]
    NoTask { task: String, cluster: String },
    #[error("task {task} has no container named {name}; it has: {}", .have.join(", "))]
    NoContainer { task: String, name: String, have: Vec<String> },
    #[error("task {task} has no containers")]
    NoContainers { task: String },
    #[error("the endpoint answered {operation} without {what}")]
    Answer { operation: &'static str, what: &'static str },
    #[error(transparent)]
    Session(#[from] client::ClientError),
    #[error("the session ended without the command's exit code")]
    NoExitCode,
    #[error("cannot set up the terminal: {0}")]
    Terminal(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs `ecsd exec`; the exit code is the remote command's, or [`FAILED`].
pub fn main(args: ExecArgs, env: &dyn Fn(&str) -> Option<String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecsd exec: {}", ExecCliError::Runtime(e));
            return ExitCode::from(FAILED);
        }
    };
    let result = runtime.block_on(run(args, env));
    // A read of the terminal may still be blocked in the runtime's thread pool; it goes with
    // the process.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ecsd exec: {}", crate::error_chain(&e));
            ExitCode::from(FAILED)
        }
    }
}

/// Endpoint and region as the aws CLI finds them, and keys from the standard chain.
struct Target {
    endpoint: String,
    region: String,
    keys: Keys,
}

async fn target(args: &ExecArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Target, ExecCliError> {
    // No instance metadata for the region: ecsd exec normally talks to a local ecsd.
    let (sdk, region, keys) = super::sdk_identity(args.region.clone(), args.profile.clone(), env).await;
    let (name, endpoint) = match &args.endpoint_url {
        Some(url) => ("--endpoint-url", Some(url.clone())),
        None => {
            let key = aws_types::service_config::ServiceConfigKey::builder()
                .service_id("ECS")
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .ok();
            let specific = key.and_then(|k| sdk.service_config().and_then(|c| c.load_config(k)));
            ("AWS_ENDPOINT_URL_ECS", specific.or_else(|| sdk.endpoint_url().map(str::to_owned)))
        }
    };
    let endpoint = endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(ExecCliError::Endpoint { name, url: endpoint });
    }
    Ok(Target { endpoint, region, keys })
}

#[derive(Debug, Deserialize)]
struct ListTasksOutput {
    #[serde(rename = "taskArns", default)]
    task_arns: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DescribeTasksOutput {
    #[serde(default)]
    tasks: Vec<TaskView>,
    #[serde(default)]
    failures: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct TaskView {
    #[serde(rename = "taskArn", default)]
    task_arn: String,
    #[serde(rename = "lastStatus", default)]
    last_status: String,
    #[serde(default)]
    containers: Vec<ContainerView>,
}

#[derive(Debug, Deserialize)]
struct ContainerView {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct DescribeServicesOutput {
    #[serde(default)]
    services: Vec<serde_json::Value>,
    #[serde(default)]
    failures: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ExecuteCommandOutput {
    #[serde(rename = "taskArn", default)]
    task_arn: String,
    session: Option<SessionView>,
}

#[derive(Debug, Deserialize)]
struct SessionView {
    #[serde(rename = "streamUrl")]
    stream_url: String,
    #[serde(rename = "tokenValue")]
    token_value: String,
}

/// The first running task of `service` (hoop's ecs-exec.sh takes ListTasks' first).
async fn task_of_service(ecs: &Ecs, cluster: &str, service: &str) -> Result<String, ExecCliError> {
    let listed: ListTasksOutput = match ecs
        .call(
            "AmazonEC2ContainerServiceV20141113.ListTasks",
            json!({ "cluster": cluster, "serviceName": service, "desiredStatus": "RUNNING" }),
        )
        .await
    {
        Ok(listed) => listed,
        // ECS (and ecsd) refuse a service name the cluster does not have.
        Err(e) if e.code() == Some("ServiceNotFoundException") => {
            return Err(ExecCliError::NoService { service: service.to_owned(), cluster: cluster.to_owned() });
        }
        Err(e) => return Err(e.into()),
    };
    if listed.task_arns.is_empty() {
        let described: Result<DescribeServicesOutput, AwsError> = ecs
            .call(
                "AmazonEC2ContainerServiceV20141113.DescribeServices",
                json!({ "cluster": cluster, "services": [service] }),
            )
            .await;
        return Err(match described {
            Ok(d) if d.services.is_empty() && !d.failures.is_empty() => {
                ExecCliError::NoService { service: service.to_owned(), cluster: cluster.to_owned() }
            }
            // An endpoint without services says so; then only the task list tells.
            _ => ExecCliError::NoRunningTask { service: service.to_owned(), cluster: cluster.to_owned() },
        });
    }
    let first: Vec<&String> = listed.task_arns.iter().take(100).collect();
    let described: DescribeTasksOutput = ecs
        .call(
            "AmazonEC2ContainerServiceV20141113.DescribeTasks",
            json!({ "cluster": cluster, "tasks": first }),
        )
        .await?;
    let running = described.tasks.iter().find(|t| t.last_status == "RUNNING");
    match running.or(described.tasks.first()) {
        Some(t) => Ok(t.task_arn.clone()),
        None => Err(ExecCliError::NoRunningTask { service: service.to_owned(), cluster: cluster.to_owned() }),
    }
}

/// The container to run in: the one named, else the task's first.
async fn container_of(
    ecs: &Ecs,
    cluster: &str,
    task: &str,
    wanted: Option<&str>,
) -> Result<String, ExecCliError> {
    let described: DescribeTasksOutput = ecs
        .call(
            "AmazonEC2ContainerServiceV20141113.DescribeTasks",
            json!({ "cluster": cluster, "tasks": [task] }),
        )
        .await?;
    let Some(t) = described.tasks.first() else {
        let _ = described.failures;
        return Err(ExecCliError::NoTask { task: task.to_owned(), cluster: cluster.to_owned() });
    };
    let have: Vec<String> = t.containers.iter().map(|c| c.name.clone()).collect();
    match wanted {
        Some(name) if have.iter().any(|h| h == name) => Ok(name.to_owned()),
        Some(name) => Err(ExecCliError::NoContainer { task: task.to_owned(), name: name.to_owned(), have }),
        None => have.into_iter().next().ok_or_else(|| ExecCliError::NoContainers { task: task.to_owned() }),
    }
}

/// The command string ExecuteCommand gets.
fn command_string(args: &ExecArgs) -> String {
    match (&args.pipe, args.command.as_slice()) {
        (Some(pipe), _) => pipe.clone(),
        (None, []) => "/bin/sh".to_owned(),
        (None, argv) => words::join(argv),
    }
}

async fn run(args: ExecArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<u8, ExecCliError> {
    let target = target(&args, env).await?;
    let ecs = Ecs::new(&target.endpoint, &target.region, target.keys.clone());
    let cluster = args.cluster.clone().unwrap_or_else(|| "default".to_owned());
    let task = match (&args.task, &args.service) {
        (Some(t), _) => t.clone(),
        (None, Some(service)) => task_of_service(&ecs, &cluster, service).await?,
        (None, None) => unreachable!("clap requires --task or --service"),
    };
    let container = container_of(&ecs, &cluster, &task, args.container.as_deref()).await?;

    let stdin_terminal = std::io::stdin().is_terminal();
    let tty = args.interactive || (stdin_terminal && args.input.is_none());
    let send_stdin = tty || args.pipe.is_some() || args.input.is_some();
    let (cols, rows) = if tty { terminal_size().unwrap_or((0, 0)) } else { (0, 0) };
    let options = ClientOptions { tty, stdin: send_stdin, cols, rows };

    let answer: ExecuteCommandOutput = ecs
        .call(
            "AmazonEC2ContainerServiceV20141113.ExecuteCommand",
            json!({ "cluster": cluster, "task": task, "container": container,
                    "command": command_string(&args), "interactive": true }),
        )
        .await?;
    let session =
        answer.session.ok_or(ExecCliError::Answer { operation: "ExecuteCommand", what: "a session" })?;
    tracing::debug!(task = %answer.task_arn, container, "ECS Exec session granted");

    let (events_tx, events) = mpsc::unbounded_channel();
    let _raw =
        if tty && stdin_terminal { Some(RawMode::enter().map_err(ExecCliError::Terminal)?) } else { None };
    watch_signals(events_tx, tty);
    let stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> = match (&args.input, send_stdin) {
        (Some(text), _) => Some(Box::new(std::io::Cursor::new(text.clone().into_bytes()))),
        (None, true) => Some(Box::new(tokio::io::stdin())),
        (None, false) => None,
    };
    let io = ClientIo {
        stdin,
        stdout: Box::new(Blocking(std::io::stdout())),
        stderr: Box::new(Blocking(std::io::stderr())),
        events,
    };
    let outcome = client::run(&session.stream_url, &session.token_value, options, io).await?;
    drop(_raw);
    if !outcome.message.is_empty() {
        eprintln!("ecsd exec: {}", outcome.message);
    }
    let code = outcome.exit_code.ok_or(ExecCliError::NoExitCode)?;
    // As a shell reports it: the low 8 bits (128 + n for a signal, as the runtime says).
    Ok(u8::try_from(code).unwrap_or(FAILED))
}

/// Writes straight to a standard stream, on the runtime's own thread. The session's client
/// is this process's only work: a slow reader of our stdout should hold the session back
/// (it stops reading the data channel, the server stops reading the process), and handing
/// each write to another thread, as tokio's stdout does, costs more than it gives here.
struct Blocking<W>(W);

impl<W: std::io::Write + Unpin> tokio::io::AsyncWrite for Blocking<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.0.flush())
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// The local terminal's size (stdin's, else stdout's).
fn terminal_size() -> Option<(u16, u16)> {
    let size = |fd: std::os::fd::BorrowedFd<'_>| rustix::termios::tcgetwinsize(fd).ok();
    let ws = size(std::io::stdin().as_fd()).or_else(|| size(std::io::stdout().as_fd()))?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Forwards terminal resizes, and signals meant for the remote process.
fn watch_signals(events: mpsc::UnboundedSender<ClientEvent>, tty: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    if tty {
        let tx = events.clone();
        tokio::spawn(async move {
            let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
            while winch.recv().await.is_some() {
                if let Some((cols, rows)) = terminal_size()
                    && tx.send(ClientEvent::Resize { cols, rows }).is_err()
                {
                    return;
                }
            }
        });
    }
    // With a local terminal in raw mode these never come from the keyboard (Ctrl-C is a
    // byte); they come from kill(1), or from a terminal that is not stdin.
    for (kind, number) in [
        (SignalKind::interrupt(), 2),
        (SignalKind::quit(), 3),
        (SignalKind::terminate(), 15),
        (SignalKind::hangup(), 1),
    ] {
        let tx = events.clone();
        tokio::spawn(async move {
            let Ok(mut s) = signal(kind) else { return };
            while s.recv().await.is_some() {
                if tx.send(ClientEvent::Signal(number)).is_err() {
                    return;
                }
            }
        });
    }
}

/// The local terminal in raw mode (no echo, no line editing, no signals from keys) until
/// dropped, so every key reaches the remote terminal as it is.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        let fd = std::io::stdin();
        let saved = rustix::termios::tcgetattr(fd.as_fd())?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd.as_fd(), rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawMode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pipe: Option<&str>, command: &[&str]) -> ExecArgs {
        ExecArgs {
            pipe: pipe.map(str::to_owned),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..ExecArgs::default()
        }
    }

    #[test]
    fn the_command_string_splits_back_into_the_arguments() {
        assert_eq!(command_string(&args(None, &[])), "/bin/sh");
        assert_eq!(command_string(&args(Some("rails runner -"), &[])), "rails runner -");
        let argv = ["sh", "-c", "echo \"a b\"; exit 3"];
        let s = command_string(&args(None, &argv));
        assert_eq!(words::split(&s).unwrap(), argv);
    }
}
