//! ECS Exec through the API on the in-memory runtime: ExecuteCommand's checks and answer,
//! managedAgents, the token rules, and the data channel end to end, with ecsd's own client
//! (`ecsd::exec::client`) and with a raw client that speaks the protocol frame by frame, as
//! the plugin does.

use std::time::Duration;

use aws_sdk_ecs::types::ContainerDefinition;
use bytes::Bytes;
use ecsd::exec::client::{self, ClientEvent, ClientIo, Outcome};
use ecsd::exec::codec::{AgentMessage, FLAGS_ACK, MessageIds, MessageType, PayloadType};
use ecsd::exec::protocol::{
    Acknowledge, ChannelClosed, ClientOptions, Flag, HandshakeResponse, OpenDataChannelInput,
    ProcessedClientAction,
};
use ecsd::runtime::ConsoleSize;
use ecsd::runtime::fake::FakeExec;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Ecsd, err, eventually};

const WAIT: u64 = 10;

fn container(name: &str) -> ContainerDefinition {
    ContainerDefinition::builder().name(name).image("busybox").memory(32).build()
}

/// A running task of `containers` (run with enableExecuteCommand when `exec`): its ARN.
async fn running(e: &Ecsd, family: &str, containers: &[&str], exec: bool) -> String {
    e.client
        .register_task_definition()
        .family(family)
        .set_container_definitions(Some(containers.iter().map(|c| container(c)).collect()))
        .send()
        .await
        .unwrap();
    let out = e.client.run_task().task_definition(family).enable_execute_command(exec).send().await.unwrap();
    let arn = out.tasks()[0].task_arn().unwrap().to_owned();
    wait_running(e, &arn).await;
    arn
}

async fn describe(e: &Ecsd, arn: &str) -> aws_sdk_ecs::types::Task {
    e.client.describe_tasks().tasks(arn).send().await.unwrap().tasks()[0].clone()
}

async fn wait_running(e: &Ecsd, arn: &str) -> aws_sdk_ecs::types::Task {
    eventually(WAIT, "the task to run", || async {
        let t = describe(e, arn).await;
        (t.last_status() == Some("RUNNING")).then_some(t)
    })
    .await
}

fn runtime_id(t: &aws_sdk_ecs::types::Task, name: &str) -> String {
    t.containers().iter().find(|c| c.name() == Some(name)).unwrap().runtime_id().unwrap().to_owned()
}

async fn execute(
    e: &Ecsd,
    arn: &str,
    container: Option<&str>,
    command: &str,
) -> aws_sdk_ecs::operation::execute_command::ExecuteCommandOutput {
    e.client
        .execute_command()
        .task(arn)
        .set_container(container.map(str::to_owned))
        .command(command)
        .interactive(true)
        .send()
        .await
        .unwrap()
}

fn session(out: &aws_sdk_ecs::operation::execute_command::ExecuteCommandOutput) -> (String, String, String) {
    let s = out.session().unwrap();
    (
        s.session_id().unwrap().to_owned(),
        s.stream_url().unwrap().to_owned(),
        s.token_value().unwrap().to_owned(),
    )
}

/// What ecsd's client wrote and how its session ended.
struct Ran {
    outcome: Result<Outcome, client::ClientError>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs ecsd's client for a session, with `stdin`; returns a handle to send it events and
/// the task that ends with its results.
fn run_client(
    url: String,
    token: String,
    options: ClientOptions,
    stdin: Option<Vec<u8>>,
) -> (mpsc::UnboundedSender<ClientEvent>, tokio::task::JoinHandle<Ran>) {
    let (tx, events) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
        let (err_w, mut err_r) = tokio::io::duplex(1 << 20);
        let io = ClientIo {
            stdin: stdin
                .map(|b| Box::new(std::io::Cursor::new(b)) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            stdout: Box::new(out_w),
            stderr: Box::new(err_w),
            events,
        };
        let reading = tokio::spawn(async move {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let _ = tokio::join!(out_r.read_to_end(&mut o), err_r.read_to_end(&mut e));
            (o, e)
        });
        let outcome = client::run(&url, &token, options, io).await;
        let (stdout, stderr) = reading.await.unwrap();
        Ran { outcome, stdout, stderr }
    });
    (tx, handle)
}

const PIPE: ClientOptions = ClientOptions { tty: false, stdin: true, cols: 0, rows: 0 };

async fn next_exec(execs: &mut mpsc::UnboundedReceiver<FakeExec>) -> FakeExec {
    tokio::time::timeout(Duration::from_secs(WAIT), execs.recv()).await.expect("an exec in time").unwrap()
}

async fn finished(handle: tokio::task::JoinHandle<Ran>) -> Ran {
    tokio::time::timeout(Duration::from_secs(WAIT), handle)
        .await
        .expect("the session to end in time")
        .unwrap()
}

#[tokio::test]
async fn execute_command_answers_as_ecs_and_describe_shows_the_agent() {
    let e = Ecsd::start().await;
    let arn = running(&e, "shell", &["app"], true).await;
    let t = describe(&e, &arn).await;
    let app = &t.containers()[0];
    let agents = app.managed_agents();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].name().map(|n| n.as_str()), Some("ExecuteCommandAgent"));
    assert_eq!(agents[0].last_status(), Some("RUNNING"));
    assert_eq!(agents[0].last_started_at(), app.managed_agents()[0].last_started_at());
    assert!(agents[0].last_started_at().is_some());
    assert!(t.enable_execute_command());

    let out = execute(&e, &arn, None, "/bin/sh").await;
    assert_eq!(out.cluster_arn(), Some("arn:aws:ecs:us-east-1:000000000000:cluster/default"));
    assert_eq!(out.task_arn(), Some(arn.as_str()));
    assert_eq!(out.container_name(), Some("app"));
    assert_eq!(out.container_arn(), app.container_arn());
    assert!(out.interactive());
    let (id, url, token) = session(&out);
    assert!(id.starts_with("ecs-execute-command-"), "{id}");
    let host = e.url.trim_start_matches("http://");
    assert_eq!(url, format!("ws://{host}/v1/data-channel/{id}?role=publish_subscribe"));
    assert_eq!(token.len(), 64, "256 random bits, in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(session(&execute(&e, &arn, Some("app"), "/bin/sh").await).2, token, "tokens differ");

    // The agent stops with the task.
    e.client.stop_task().task(&arn).send().await.unwrap();
    let stopped = eventually(WAIT, "STOPPED", || async {
        let t = describe(&e, &arn).await;
        (t.last_status() == Some("STOPPED")).then_some(t)
    })
    .await;
    assert_eq!(stopped.containers()[0].managed_agents()[0].last_status(), Some("STOPPED"));

    // A task without ECS Exec has no agent.
    let plain = running(&e, "plain", &["app"], false).await;
    assert!(describe(&e, &plain).await.containers()[0].managed_agents().is_empty());
}

#[tokio::test]
async fn the_stream_url_can_be_advertised_elsewhere() {
    let e = Ecsd::start_with(&[("ECSD_EXEC_URL", "wss://exec.example.com/ecsd/")]).await;
    let arn = running(&e, "shell", &["app"], true).await;
    let (id, url, _) = session(&execute(&e, &arn, None, "sh").await);
    assert_eq!(url, format!("wss://exec.example.com/ecsd/v1/data-channel/{id}?role=publish_subscribe"));
}

#[tokio::test]
async fn execute_command_refuses_what_ecs_refuses() {
    let e = Ecsd::start_with(&[("ECSD_EXEC_MAX_SESSIONS", "2")]).await;
    let plain = running(&e, "plain", &["app"], false).await;
    let two = running(&e, "two", &["web", "side"], true).await;
    let refuse = |task: String, container: Option<&'static str>, command: String, interactive: bool| {
        let client = e.client.clone();
        async move {
            let res = client
                .execute_command()
                .task(task)
                .set_container(container.map(str::to_owned))
                .command(command)
                .interactive(interactive)
                .send()
                .await;
            err(res.unwrap_err())
        }
    };
    let invalid = |m: &str| ("InvalidParameterException".to_owned(), m.to_owned());
    assert_eq!(
        refuse(plain.clone(), None, "sh".into(), true).await,
        invalid(
            "The execute command failed because execute command was not enabled when the task was run or the execute command agent isn’t running. Wait and try again or run a new task with execute command enabled and try again."
        )
    );
    assert_eq!(
        refuse(two.clone(), None, "sh".into(), false).await,
        invalid("Interactive is the only mode supported currently.")
    );
    assert_eq!(
        refuse(two.clone(), None, "sh".into(), true).await,
        invalid(
            "The task has more than one container (web, side); name the container to run the command in with the container parameter."
        )
    );
    assert_eq!(
        refuse(two.clone(), Some("db"), "sh".into(), true).await,
        invalid("The task has no container named db; its containers are: web, side.")
    );
    assert_eq!(
        refuse("0123456789abcdef0123456789abcdef".into(), None, "sh".into(), true).await,
        invalid("The referenced task was not found.")
    );
    assert_eq!(
        refuse(two.clone(), Some("web"), "x".repeat(4097), true).await,
        invalid("The command must be 1 to 4096 characters long; it is 4097.")
    );
    assert_eq!(
        refuse(two.clone(), Some("web"), "echo 'open".into(), true).await,
        invalid("The command cannot be run: the command has an unterminated single quote.")
    );
    assert_eq!(
        refuse(two.clone(), Some("web"), "   ".into(), true).await,
        invalid("The command cannot be run: the command has no words.")
    );
    let other_cluster =
        e.client.execute_command().cluster("nope").task(&two).command("sh").interactive(true).send().await;
    assert_eq!(err(other_cluster.unwrap_err()).0, "ClusterNotFoundException");

    // The per-task limit counts granted sessions; a positive control first.
    execute(&e, &two, Some("web"), "sh").await;
    execute(&e, &two, Some("side"), "sh").await;
    let (code, message) = refuse(two.clone(), Some("web"), "sh".into(), true).await;
    assert_eq!(code, "ClientException");
    assert_eq!(
        message,
        format!(
            "Task {two} has 2 ECS Exec sessions already, the most ecsd allows per task (ECSD_EXEC_MAX_SESSIONS); end one and try again."
        )
    );
    // Unused grants expire with their tokens, and the task can have sessions again.
    e.clock.advance(Duration::from_secs(61));
    execute(&e, &two, Some("web"), "sh").await;

    e.client.stop_task().task(&two).send().await.unwrap();
    eventually(WAIT, "STOPPED", || async {
        (describe(&e, &two).await.last_status() == Some("STOPPED")).then_some(())
    })
    .await;
    let (_, message) = refuse(two.clone(), Some("web"), "sh".into(), true).await;
    assert_eq!(
        message,
        "The execute command failed because the task is STOPPED, not RUNNING, so the execute command agent isn’t running. Wait and try again, or run a new task."
    );
}

#[tokio::test]
async fn a_piped_session_carries_stdin_stdout_stderr_and_the_exit_code() {
    let e = Ecsd::start().await;
    let arn = running(&e, "pipe", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (_, url, token) =
        session(&execute(&e, &arn, None, r#"/bin/sh -c 'cat; echo "a b" >&2; exit 3'"#).await);
    let input: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (_events, handle) = run_client(url, token, PIPE, Some(input.clone()));

    let mut x = next_exec(&mut execs).await;
    assert_eq!(
        x.spec.process.args().as_deref().unwrap(),
        ["/bin/sh", "-c", r#"cat; echo "a b" >&2; exit 3"#]
    );
    assert!(!x.spec.terminal() && x.spec.stdin, "{:?}", x.spec);
    let mut got = Vec::new();
    x.stdin.take().unwrap().read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), input.len());
    assert!(got == input, "stdin arrives byte for byte and ends");
    let mut stdout = x.stdout.take().unwrap();
    stdout.write_all(&got).await.unwrap();
    drop(stdout);
    x.stderr.as_mut().unwrap().write_all(b"a b\n").await.unwrap();
    x.exit(3);
    let ran = finished(handle).await;
    let outcome = ran.outcome.unwrap();
    assert_eq!(outcome, Outcome { exit_code: Some(3), message: String::new() });
    assert!(ran.stdout == input, "stdout is separate and intact ({} bytes)", ran.stdout.len());
    assert_eq!(ran.stderr, b"a b\n");
    eventually(WAIT, "the session to be gone", || async { (e.exec_sessions() == 0).then_some(()) }).await;
}

#[tokio::test]
async fn a_terminal_session_sizes_resizes_and_signals() {
    let e = Ecsd::start().await;
    let arn = running(&e, "tty", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (_, url, token) = session(&execute(&e, &arn, None, "/bin/sh").await);
    let tty = ClientOptions { tty: true, stdin: true, cols: 100, rows: 30 };
    let (events, handle) = run_client(url, token, tty, None);
    let mut x = next_exec(&mut execs).await;
    assert!(x.spec.terminal());
    assert_eq!(x.spec.console_size, Some(ConsoleSize { cols: 100, rows: 30 }));
    let env = x.spec.process.env().clone().unwrap();
    assert!(env.contains(&"TERM=xterm-256color".to_owned()), "{env:?}");
    assert!(x.stderr.is_none(), "one stream with a terminal");
    events.send(ClientEvent::Resize { cols: 132, rows: 43 }).unwrap();
    // The size the client sends after the handshake may come first.
    let size = tokio::time::timeout(Duration::from_secs(WAIT), async {
        loop {
            match x.next_resize().await {
                Some(s) if s.cols == 132 => return s,
                Some(_) => continue,
                None => panic!("the session let go of the process"),
            }
        }
    })
    .await
    .expect("the new size in time");
    assert_eq!(size, ConsoleSize { cols: 132, rows: 43 });
    // With a terminal, Ctrl-C is a key for the terminal; SIGTERM a signal.
    events.send(ClientEvent::Signal(2)).unwrap();
    let mut key = [0u8; 1];
    x.stdin.as_mut().unwrap().read_exact(&mut key).await.unwrap();
    assert_eq!(key, [3]);
    events.send(ClientEvent::Signal(15)).unwrap();
    assert_eq!(x.next_signal().await, Some(15));
    x.stdout.as_mut().unwrap().write_all(b"$ ").await.unwrap();
    x.exit(143);
    let ran = finished(handle).await;
    assert_eq!(ran.outcome.unwrap().exit_code, Some(143));
    assert_eq!(ran.stdout, b"$ ");
}

/// `ecsd exec --interactive </dev/null`: the local stdin ends at once, but a terminal's input
/// has no end; the process keeps its terminal (it would be hung up) and later keys arrive.
/// (That a pipe's stdin ends is checked in the piped session's test.)
#[tokio::test]
async fn the_end_of_local_stdin_leaves_a_terminal_open() {
    let e = Ecsd::start().await;
    let arn = running(&e, "ttyeof", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (_, url, token) = session(&execute(&e, &arn, None, "cat").await);
    let tty = ClientOptions { tty: true, stdin: true, cols: 80, rows: 24 };
    let mut raw = Raw::open(&url, &token, Some(tty)).await;
    raw.handshake().await;
    let mut x = next_exec(&mut execs).await;
    assert!(x.spec.terminal() && x.spec.stdin);
    raw.input(PayloadType::Flag, &Flag::StdinEof.encode()).await;
    raw.input(PayloadType::Output, b"\x03").await;
    let mut key = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(WAIT), x.stdin.as_mut().unwrap().read(&mut key))
        .await
        .expect("a key in time");
    assert_eq!((read.unwrap(), key), (1, [3]), "the terminal's input is still open");
    x.exit(0);
}

#[tokio::test]
async fn a_token_opens_one_session_once_within_a_minute() {
    let e = Ecsd::start().await;
    let arn = running(&e, "tokens", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);

    let (id, url, token) = session(&execute(&e, &arn, None, "sh").await);
    let (_, url2, token2) = session(&execute(&e, &arn, None, "sh").await);
    // Another session's URL with this token: refused, and the token is spent.
    let refused = Raw::open(&url2, &token, None).await.closed().await;
    assert_eq!(refused, "the token belongs to another session");
    assert_eq!(
        Raw::open(&url, &token, None).await.closed().await,
        "the token is not valid: it was never issued, or it was used already"
    );

    // A fresh token works once (positive control), then is refused.
    let (_, url3, token3) = session(&execute(&e, &arn, None, "sh").await);
    let (_ev, handle) = run_client(url3.clone(), token3.clone(), PIPE, Some(vec![]));
    let mut x = next_exec(&mut execs).await;
    assert_eq!(
        Raw::open(&url3, &token3, None).await.closed().await,
        "the token is not valid: it was never issued, or it was used already"
    );
    x.exit(0);
    assert_eq!(finished(handle).await.outcome.unwrap().exit_code, Some(0));

    // Unused for 60 seconds: expired.
    e.clock.advance(Duration::from_secs(61));
    assert_eq!(
        Raw::open(&url2, &token2, None).await.closed().await,
        "the token expired: it must be used within 60s of being issued"
    );
    let (_, url4, token4) = session(&execute(&e, &arn, None, "sh").await);
    e.clock.advance(Duration::from_secs(60));
    assert_eq!(
        Raw::open(&url4, &token4, None).await.closed().await,
        "the token expired: it must be used within 60s of being issued"
    );
    let _ = id;
}

#[tokio::test]
async fn the_plugins_way_handshake_size_output_and_channel_closed() {
    let e = Ecsd::start().await;
    let arn = running(&e, "plugin", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (id, url, token) = session(&execute(&e, &arn, None, "/bin/sh").await);
    let mut raw = Raw::open(&url, &token, None).await;
    raw.handshake().await;
    raw.input(PayloadType::Size, br#"{"cols":120,"rows":40}"#).await;
    let mut x = next_exec(&mut execs).await;
    assert!(x.spec.terminal() && x.spec.stdin);
    assert_eq!(x.spec.console_size, Some(ConsoleSize { cols: 120, rows: 40 }));
    raw.input(PayloadType::Output, b"echo hi\r").await;
    let mut typed = [0u8; 8];
    x.stdin.as_mut().unwrap().read_exact(&mut typed).await.unwrap();
    assert_eq!(&typed, b"echo hi\r");
    // Output: numbered after the handshake's two messages, at most 1024 bytes each.
    let big = vec![b'x'; 3000];
    x.stdout.as_mut().unwrap().write_all(&big).await.unwrap();
    let mut got = Vec::new();
    while got.len() < big.len() {
        let m = raw.next_output().await;
        assert_eq!(m.sequence_number, 2 + (got.len() / 1024) as i64);
        assert!(m.payload.len() <= 1024);
        assert_eq!(m.payload_type, PayloadType::Output);
        raw.ack(&m).await;
        got.extend_from_slice(&m.payload);
    }
    assert_eq!(got, big);
    // The end: no exit code for the plugin (it would print it), then channel_closed.
    x.exit(0);
    let closed = raw.channel_closed().await;
    assert_eq!((closed.session_id.as_str(), closed.output.as_str()), (id.as_str(), ""));
    let t = describe(&e, &arn).await;
    assert_eq!(closed.destination_id, format!("ecs:default_{}_{rt}", arn.rsplit('/').next().unwrap()));
    let _ = t;
}

#[tokio::test]
async fn unacknowledged_output_comes_again_and_bad_frames_are_survived() {
    let e = Ecsd::start().await;
    let arn = running(&e, "resend", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (_, url, token) = session(&execute(&e, &arn, None, "/bin/sh").await);
    let mut raw = Raw::open(&url, &token, None).await;
    raw.handshake().await;
    raw.input(PayloadType::Size, br#"{"cols":80,"rows":24}"#).await;
    let mut x = next_exec(&mut execs).await;

    // Frames no client should send: each is logged and ignored.
    let good = AgentMessage::new(
        MessageType::InputStreamData,
        raw.seq,
        0,
        uuid::Uuid::new_v4(),
        PayloadType::Output,
        Bytes::from_static(b"ok"),
        1,
    )
    .encode();
    let mut wrong_length = good.clone();
    wrong_length[3] = 100;
    let mut bad_digest = good.clone();
    let last = bad_digest.len() - 1;
    bad_digest[last] ^= 0xff;
    let mut unknown = good.clone();
    unknown[4..36].copy_from_slice(b"shell_data                      ");
    let mut oversized = AgentMessage::new(
        MessageType::InputStreamData,
        raw.seq,
        0,
        uuid::Uuid::new_v4(),
        PayloadType::Output,
        Bytes::from(vec![b'a'; 60_000]),
        1,
    )
    .encode();
    oversized[116..120].copy_from_slice(&70_000u32.to_be_bytes());
    for frame in [vec![0u8; 10], wrong_length, bad_digest, unknown, oversized] {
        raw.ws.send(Message::Binary(frame.into())).await.unwrap();
    }
    raw.ws.send(Message::Text("not json".into())).await.unwrap();
    // Positive control: the valid frame with the same number is taken.
    raw.ws.send(Message::Binary(good.into())).await.unwrap();
    raw.seq += 1;
    let mut typed = [0u8; 2];
    x.stdin.as_mut().unwrap().read_exact(&mut typed).await.unwrap();
    assert_eq!(&typed, b"ok");

    // Output left unacknowledged is sent again, with the same number.
    x.stdout.as_mut().unwrap().write_all(b"once").await.unwrap();
    let first = raw.next_stream().await;
    assert_eq!(&first.payload[..], b"once");
    let again = raw.next_stream().await;
    assert_eq!((again.sequence_number, &again.payload[..]), (first.sequence_number, &b"once"[..]));
    raw.ack(&again).await;
    x.exit(0);
    raw.channel_closed().await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_holds_the_process_back() {
    let e = Ecsd::start().await;
    let arn = running(&e, "slow", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (_, url, token) = session(&execute(&e, &arn, None, "yes").await);
    let mut raw = Raw::open(&url, &token, None).await;
    raw.handshake().await;
    raw.input(PayloadType::Size, br#"{"cols":80,"rows":24}"#).await;
    let mut x = next_exec(&mut execs).await;
    let mut stdout = x.stdout.take().unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'y'; 64 * 1024];
        let mut written = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stdout.write_all(&chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                _ => return written,
            }
        }
    });
    // No acknowledgement ever: the server stops at its window, so the writer blocks.
    let written = writer.await.unwrap();
    let mut received = std::collections::BTreeSet::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(300), raw.ws.next()).await {
        if let Message::Binary(b) = m {
            let m = AgentMessage::decode(b).unwrap();
            if m.payload_type == PayloadType::Output {
                received.insert(m.sequence_number);
            }
        }
    }
    assert!(written < 4 << 20, "the process was held back after {written} bytes");
    // Sent again and again, but never more than the window's worth of distinct messages.
    assert!(received.len() <= 1024, "at most the window came: {}", received.len());
    assert!(received.len() >= 64, "output came: {}", received.len());
    x.exit(0);
}

#[tokio::test]
async fn ecsds_client_gets_larger_output_messages_and_other_clients_1024_bytes() {
    let e = Ecsd::start().await;
    let arn = running(&e, "chunks", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // The same options either way: the client's version decides.
    for (version, ecsds) in [(client::CLIENT_VERSION, true), ("1.2.0.0", false)] {
        let (_, url, token) = session(&execute(&e, &arn, None, "cat big").await);
        let mut raw = Raw::open_as(&url, &token, Some(PIPE), version).await;
        raw.handshake().await;
        let mut x = next_exec(&mut execs).await;
        x.stdout.as_mut().unwrap().write_all(&big).await.unwrap();
        let (mut got, mut largest) = (Vec::new(), 0);
        while got.len() < big.len() {
            let m = raw.next_output().await;
            assert_eq!(m.payload_type, PayloadType::Output);
            raw.ack(&m).await;
            largest = largest.max(m.payload.len());
            got.extend_from_slice(&m.payload);
        }
        assert_eq!(got, big, "{version}");
        if ecsds {
            assert!(largest > 1024 && largest <= 32 * 1024, "{version}: messages of up to {largest} bytes");
        } else {
            assert!(largest <= 1024, "{version}: messages of up to {largest} bytes");
        }
        x.exit(0);
        loop {
            let m = raw.next().await;
            match m.message_type {
                MessageType::ChannelClosed => break,
                MessageType::OutputStreamData => raw.ack(&m).await,
                _ => {}
            }
        }
    }

    // Larger messages, fewer of them in flight: a client that acknowledges nothing still
    // holds the process back after about 1 MiB.
    let (_, url, token) = session(&execute(&e, &arn, None, "yes").await);
    let mut raw = Raw::open_as(&url, &token, Some(PIPE), client::CLIENT_VERSION).await;
    raw.handshake().await;
    let mut x = next_exec(&mut execs).await;
    let mut stdout = x.stdout.take().unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'y'; 64 * 1024];
        let mut written = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stdout.write_all(&chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                _ => return written,
            }
        }
    });
    let written = writer.await.unwrap();
    let mut received = std::collections::BTreeMap::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(300), raw.ws.next()).await {
        if let Message::Binary(b) = m {
            let m = AgentMessage::decode(b).unwrap();
            if m.payload_type == PayloadType::Output {
                received.insert(m.sequence_number, m.payload.len());
            }
        }
    }
    let in_flight: usize = received.values().sum();
    assert!(written < 4 << 20, "the process was held back after {written} bytes");
    assert!(in_flight <= 1 << 20, "at most the window came: {in_flight} bytes");
    assert!(in_flight >= 64 * 1024, "output came: {in_flight} bytes");
    x.exit(0);
}

#[tokio::test]
async fn terminate_resume_idle_and_task_stop_end_sessions() {
    let e = Ecsd::start().await;
    let arn = running(&e, "ends", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);

    // TerminateSession (what the plugin sends when it gives up) kills the process.
    let (id, url, token) = session(&execute(&e, &arn, None, "sleep 1000").await);
    let (_ev, handle) = run_client(url, token, PIPE, None);
    let mut x = next_exec(&mut execs).await;
    let resumed = ssm(&e, "ResumeSession", &id).await;
    assert_eq!(resumed["SessionId"], id.as_str());
    assert_eq!(resumed["TokenValue"].as_str().map(str::len), Some(64), "a live session can be resumed");
    assert!(resumed["StreamUrl"].as_str().unwrap().contains(&id));
    assert_eq!(ssm(&e, "TerminateSession", &id).await, serde_json::json!({ "SessionId": id }));
    assert_eq!(x.next_signal().await, Some(9));
    x.exit(137);
    let ran = finished(handle).await;
    assert_eq!(
        ran.outcome.unwrap(),
        Outcome { exit_code: Some(137), message: "The session was terminated.".into() }
    );
    let gone = ssm(&e, "ResumeSession", &id).await;
    assert_eq!(gone, serde_json::json!({ "SessionId": id }), "an ended session gets no token");

    // Idle for longer than ECSD_EXEC_IDLE_TIMEOUT (20 minutes by default).
    let (_, url, token) = session(&execute(&e, &arn, None, "sh").await);
    let (_ev, handle) = run_client(url, token, PIPE, None);
    let mut x = next_exec(&mut execs).await;
    e.clock.advance(Duration::from_secs(19 * 60));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!handle.is_finished(), "not idle long enough yet");
    e.clock.advance(Duration::from_secs(61));
    assert_eq!(x.next_signal().await, Some(9));
    x.exit(137);
    let ran = finished(handle).await.outcome.unwrap();
    assert_eq!(
        ran.message,
        "ecsd ended the session after 1200s without input or output (ECSD_EXEC_IDLE_TIMEOUT)."
    );

    // The task stops: so does the session.
    let (_, url, token) = session(&execute(&e, &arn, None, "sh").await);
    let (_ev, handle) = run_client(url, token, PIPE, None);
    let mut x = next_exec(&mut execs).await;
    e.client.stop_task().task(&arn).send().await.unwrap();
    assert_eq!(x.next_signal().await, Some(9));
    x.exit(137);
    assert_eq!(finished(handle).await.outcome.unwrap().message, "The task stopped.");
    eventually(WAIT, "no session left", || async { (e.exec_sessions() == 0).then_some(()) }).await;

    let unknown = e.http_ssm("AmazonSSM.StartSession", "{}").await;
    assert_eq!(unknown.0, 400);
    assert!(unknown.1.contains("UnknownOperationException"), "{}", unknown.1);
}

#[tokio::test]
async fn a_client_that_vanishes_loses_its_process() {
    let e = Ecsd::start().await;
    let arn = running(&e, "vanish", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    // ecsd's client does not come back: its process goes at once.
    let (_, url, token) = session(&execute(&e, &arn, None, "sh").await);
    let mut raw = Raw::open(&url, &token, Some(PIPE)).await;
    raw.handshake().await;
    let x = next_exec(&mut execs).await;
    drop(raw);
    tokio::time::timeout(Duration::from_secs(WAIT), x.dropped()).await.expect("the process is let go");

    // The plugin may resume: its process waits for the grace, then goes.
    let (id, url, token) = session(&execute(&e, &arn, None, "sh").await);
    let mut raw = Raw::open(&url, &token, None).await;
    raw.handshake().await;
    raw.input(PayloadType::Size, br#"{"cols":80,"rows":24}"#).await;
    let mut x = next_exec(&mut execs).await;
    drop(raw);
    // It comes back with a resume token, and the session goes on.
    let resumed = ssm(&e, "ResumeSession", &id).await;
    let mut raw =
        Raw::open(resumed["StreamUrl"].as_str().unwrap(), resumed["TokenValue"].as_str().unwrap(), None)
            .await;
    raw.seq = 2;
    raw.input(PayloadType::Output, b"still here").await;
    let mut typed = [0u8; 10];
    x.stdin.as_mut().unwrap().read_exact(&mut typed).await.unwrap();
    assert_eq!(&typed, b"still here");
    drop(raw);
    // Not back within the grace (30 s on the daemon's clock): the process goes.
    let killed = tokio::time::timeout(Duration::from_secs(WAIT), async {
        loop {
            e.clock.advance(Duration::from_secs(5));
            if let Ok(signal) = tokio::time::timeout(Duration::from_millis(20), x.next_signal()).await {
                return signal;
            }
        }
    })
    .await
    .expect("the process to be killed after the grace");
    assert_eq!(killed, Some(9));
    x.exit(137);
    eventually(WAIT, "no session left", || async { (e.exec_sessions() == 0).then_some(()) }).await;
}

/// A server that upgrades and then says nothing, and one that never answers the upgrade: the
/// client gives up on each within its limits instead of waiting forever. The same limits let
/// a session with ecsd run to its end (the positive control).
#[tokio::test]
async fn the_client_gives_up_on_a_server_that_keeps_it_waiting() {
    let limits = client::Limits {
        connect: Duration::from_millis(500),
        silence: Duration::from_millis(500),
        write: Duration::from_secs(5),
    };
    let io = || ClientIo {
        stdin: None,
        stdout: Box::new(tokio::io::sink()),
        stderr: Box::new(tokio::io::sink()),
        events: mpsc::unbounded_channel().1,
    };
    let opts = ClientOptions { tty: false, stdin: false, cols: 0, rows: 0 };

    let e = Ecsd::start().await;
    let arn = running(&e, "limits", &["app"], true).await;
    let rt = runtime_id(&describe(&e, &arn).await, "app");
    let mut execs = e.fake.drive_execs(&rt);
    let (_, url, token) = session(&execute(&e, &arn, None, "true").await);
    let control = tokio::spawn(async move { client::run_with(&url, &token, opts, io(), limits).await });
    next_exec(&mut execs).await.exit(0);
    let outcome = tokio::time::timeout(Duration::from_secs(WAIT), control).await.unwrap().unwrap();
    assert_eq!(outcome.unwrap().exit_code, Some(0));

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}/v1/data-channel/s", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = silent.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Reads what comes (the OpenDataChannel message) and answers nothing.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let ran = tokio::time::timeout(
        Duration::from_secs(WAIT),
        client::run_with(&silent_url, "t", opts, io(), limits),
    )
    .await
    .expect("the client gives up in time");
    assert!(matches!(ran, Err(client::ClientError::Silent(d)) if d == limits.silence), "{ran:?}");

    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_url = format!("ws://{}/v1/data-channel/s", mute.local_addr().unwrap());
    tokio::spawn(async move {
        let (_tcp, _) = mute.accept().await.unwrap();
        std::future::pending::<()>().await
    });
    let ran =
        tokio::time::timeout(Duration::from_secs(WAIT), client::run_with(&mute_url, "t", opts, io(), limits))
            .await
            .expect("the client gives up in time");
    assert!(matches!(ran, Err(client::ClientError::ConnectTimeout { .. })), "{ran:?}");
}

async fn ssm(e: &Ecsd, op: &str, id: &str) -> serde_json::Value {
    let (status, body) =
        e.http_ssm(&format!("AmazonSSM.{op}"), &serde_json::json!({ "SessionId": id }).to_string()).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

impl Ecsd {
    fn exec_sessions(&self) -> usize {
        self.daemon.as_ref().unwrap().exec().session_count()
    }

    /// POSTs an AWS JSON 1.1 call with `target` to the daemon: (status, body).
    async fn http_ssm(&self, target: &str, body: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(&self.url)
            .header("x-amz-target", target)
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// A client that speaks the data channel frame by frame, as the plugin does.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ids: MessageIds,
    seq: i64,
    /// The highest output sequence number [`Raw::next_output`] handed out.
    last_output: i64,
}

impl Raw {
    async fn open(url: &str, token: &str, ecsd: Option<ClientOptions>) -> Raw {
        Raw::open_as(url, token, ecsd, "1.2.0.0").await
    }

    /// [`Raw::open`] with the client version the opening frame says.
    async fn open_as(url: &str, token: &str, ecsd: Option<ClientOptions>, version: &str) -> Raw {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let open = OpenDataChannelInput {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token.into(),
            client_id: uuid::Uuid::new_v4().to_string(),
            client_version: version.into(),
            ecsd_exec: ecsd,
        };
        ws.send(Message::Text(serde_json::to_string(&open).unwrap().into())).await.unwrap();
        Raw { ws, ids: MessageIds::new(*uuid::Uuid::new_v4().as_bytes()), seq: 0, last_output: -1 }
    }

    /// The reason of the close frame the server refuses a session with.
    async fn closed(mut self) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(WAIT), self.ws.next()).await.expect("a close") {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1008);
                    return f.reason.to_string();
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> AgentMessage {
        loop {
            let frame =
                tokio::time::timeout(Duration::from_secs(WAIT), self.ws.next()).await.expect("a message");
            match frame {
                Some(Ok(Message::Binary(b))) => return AgentMessage::decode(b).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next output stream message (acknowledgements of our input are skipped).
    async fn next_stream(&mut self) -> AgentMessage {
        loop {
            let m = self.next().await;
            if m.message_type == MessageType::OutputStreamData {
                return m;
            }
            assert_eq!(m.message_type, MessageType::Acknowledge, "{m:?}");
        }
    }

    /// The next output message not seen before. A message the server sent again because its
    /// acknowledgement was late (on a loaded machine) is acknowledged again and skipped, as
    /// session-manager-plugin does.
    async fn next_output(&mut self) -> AgentMessage {
        loop {
            let m = self.next_stream().await;
            if m.sequence_number > self.last_output {
                self.last_output = m.sequence_number;
                return m;
            }
            self.ack(&m).await;
        }
    }

    async fn ack(&mut self, m: &AgentMessage) {
        let payload = serde_json::to_vec(&Acknowledge::of(m)).unwrap();
        let ack = AgentMessage::new(
            MessageType::Acknowledge,
            0,
            FLAGS_ACK,
            self.ids.next_id(),
            PayloadType::Undefined,
            Bytes::from(payload),
            1,
        );
        self.ws.send(Message::Binary(ack.encode().into())).await.unwrap();
    }

    async fn input(&mut self, payload_type: PayloadType, payload: &[u8]) {
        let m = AgentMessage::new(
            MessageType::InputStreamData,
            self.seq,
            0,
            self.ids.next_id(),
            payload_type,
            Bytes::copy_from_slice(payload),
            1,
        );
        self.seq += 1;
        self.ws.send(Message::Binary(m.encode().into())).await.unwrap();
    }

    /// The handshake as the plugin does it.
    async fn handshake(&mut self) {
        let request = self.next_stream().await;
        assert_eq!((request.sequence_number, request.flags), (0, 1), "the first message carries SYN");
        assert_eq!(request.payload_type, PayloadType::HandshakeRequest);
        let body: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
        assert_eq!(
            body["RequestedClientActions"][0]["ActionParameters"]["SessionType"],
            "InteractiveCommands"
        );
        self.ack(&request).await;
        let response = HandshakeResponse {
            client_version: "1.2.0.0".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: "SessionType".into(),
                action_status: 1,
                action_result: serde_json::Value::Null,
                error: String::new(),
            }],
            errors: None,
        };
        self.input(PayloadType::HandshakeResponse, &serde_json::to_vec(&response).unwrap()).await;
        let complete = self.next_stream().await;
        assert_eq!((complete.sequence_number, complete.payload_type), (1, PayloadType::HandshakeComplete));
        self.ack(&complete).await;
    }

    /// Acknowledges output until `channel_closed` comes.
    async fn channel_closed(&mut self) -> ChannelClosed {
        loop {
            let m = self.next().await;
            match m.message_type {
                MessageType::ChannelClosed => return serde_json::from_slice(&m.payload).unwrap(),
                MessageType::OutputStreamData => {
                    assert_ne!(m.payload_type, PayloadType::ExitCode, "the plugin would print it");
                    self.ack(&m).await;
                }
                _ => {}
            }
        }
    }
}
