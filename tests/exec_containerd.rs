//! ECS Exec on a real containerd: the stock aws CLI with AWS's session-manager-plugin, driven
//! through a pseudo-terminal (tests/exec/ptyrun.py), and `ecsd exec`, against an in-process
//! ecsd (same set-up as tests/tasks_containerd.rs: root, `ECSD_TEST_CONTAINERD`,
//! `ECSD_TEST_IMAGE`, the `.venv` of hack/setup).
//!
//! The plugin is looked for on `PATH` (hack/test puts `../shared/tools` there when that
//! folder exists). A test that needs it and does not find it fails, unless
//! `ECSD_TEST_SKIPPED` names a file: then the test writes its name there and returns, and
//! hack/test reports it as skipped by name, never as passed.

mod harness;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerDefinition, KeyValuePair, Task};
use ecsd::exec::client::{self, ClientEvent, ClientIo, Outcome};
use ecsd::exec::protocol::ClientOptions;
use harness::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const IDLE_APP: &str = "trap 'exit 0' TERM; sleep 1000 & wait";

/// The folder holding session-manager-plugin, or `None` when the test is to be skipped.
fn plugin(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|d| d.join("session-manager-plugin").is_file()) {
        return Some(dir);
    }
    match std::env::var_os("ECSD_TEST_SKIPPED") {
        Some(file) => {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
            writeln!(f, "exec_containerd::{test}: session-manager-plugin is not on PATH").unwrap();
            None
        }
        None => panic!(
            "{test} needs session-manager-plugin on PATH (put the folder of ../shared/tools/session-manager-plugin \
             on PATH, or run hack/test, which reports the test as skipped when it is missing)"
        ),
    }
}

fn venv(bin: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin").join(bin)
}

/// The environment the aws CLI and `ecsd exec` get: any keys (ecsd does not check them),
/// no instance metadata, and the plugin's folder first on PATH.
fn client_env(plugin_dir: Option<&Path>) -> Vec<(String, String)> {
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(dir) = plugin_dir {
        path = format!("{}:{path}", dir.display());
    }
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_PAGER", ""),
        ("HOME", "/nonexistent"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(std::iter::once(("PATH".to_owned(), path)))
    .collect()
}

fn url(e: &Ecsd) -> String {
    format!("http://{}", e.daemon.as_ref().unwrap().addr())
}

/// Registers `family` (bridge mode) with busybox containers `(name, NAME env)` idling, and
/// runs it with ECS Exec when `exec`; waits for RUNNING.
async fn exec_task(e: &Ecsd, family: &str, names: &[&str], exec: bool, group: Option<&str>) -> Task {
    let containers: Vec<ContainerDefinition> = names
        .iter()
        .map(|n| sh(n, IDLE_APP).environment(KeyValuePair::builder().name("NAME").value(*n).build()).build())
        .collect();
    e.register(family, containers).await;
    let out = e
        .client
        .run_task()
        .task_definition(family)
        .enable_execute_command(exec)
        .set_group(group.map(str::to_owned))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failures(), &[]);
    let arn = arn_of(&out.tasks()[0]);
    let t = e.wait_status(&arn, "RUNNING").await;
    e.wait_trap(&arn, names[0], SIGTERM).await;
    t
}

/// A command in a pseudo-terminal (tests/exec/ptyrun.py), with what it shows collected.
struct Pty {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    shown: Arc<Mutex<Vec<u8>>>,
    /// How much of `shown` earlier expectations consumed.
    mark: usize,
}

impl Pty {
    /// `argv` in a `cols` x `rows` terminal that [`Pty::resize`] turns into `then`.
    fn spawn(cols: u16, rows: u16, then: Option<(u16, u16)>, env: &[(String, String)], argv: &[&str]) -> Pty {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec/ptyrun.py");
        let python = if venv("python").exists() { venv("python") } else { PathBuf::from("python3") };
        let mut size = vec![cols.to_string(), rows.to_string()];
        if let Some((c, r)) = then {
            size.extend(["--then".to_owned(), c.to_string(), r.to_string()]);
        }
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .args(size)
            .arg("--")
            .args(argv)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let shown = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&shown);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty { child, stdin, shown, mark: 0 }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// The window is resized to the size `spawn` was given as `then`.
    fn resize(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).unwrap();
    }

    /// Types `keys` until the terminal shows `want` (what shows it may take a while to
    /// change, as a resize that the plugin notices when it next looks).
    async fn retype_until(&mut self, keys: &[u8], want: &str, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            self.send(keys).await;
            let found = eventually_or(1, || {
                let shown = self.shown.lock().unwrap();
                let tail = String::from_utf8_lossy(&shown[self.mark.min(shown.len())..]).into_owned();
                tail.find(want).map(|at| self.mark + at + want.len())
            })
            .await;
            if let Some(end) = found {
                self.mark = end;
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the terminal did not show {want:?} within {secs}s; it shows:\n{}", self.text());
            }
        }
    }

    async fn send(&mut self, keys: &[u8]) {
        self.stdin.write_all(keys).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits until the terminal shows `want` after what earlier expectations matched.
    async fn expect(&mut self, want: &str, secs: u64) {
        let found = eventually_or(secs, || {
            let shown = self.shown.lock().unwrap();
            let tail = String::from_utf8_lossy(&shown[self.mark.min(shown.len())..]).into_owned();
            tail.find(want).map(|at| self.mark + at + want.len())
        })
        .await;
        match found {
            Some(end) => self.mark = end,
            None => panic!("the terminal did not show {want:?} within {secs}s; it shows:\n{}", self.text()),
        }
    }

    async fn wait(&mut self, secs: u64) -> i32 {
        match tokio::time::timeout(Duration::from_secs(secs), self.child.wait()).await {
            Ok(status) => status.unwrap().code().unwrap_or(-1),
            Err(_) => panic!("the terminal's command did not end within {secs}s; it shows:\n{}", self.text()),
        }
    }
}

async fn eventually_or<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// In a remote shell: `stty size` shows the terminal's size (`rows cols`), then `resized`
/// after the window is resized; Ctrl-C reaches the foreground process through the terminal
/// (the sleep ends, and the shell takes the next line).
async fn shell_sizes_and_interrupts(pty: &mut Pty, size: &str, resized: &str) {
    pty.send(b"stty size\r").await;
    pty.expect(size, 30).await;
    pty.resize();
    pty.retype_until(b"stty size\r", resized, 30).await;
    pty.send(b"sh -c 'echo sle\"\"eping; exec sleep 100'\r").await;
    pty.expect("sleeping", 30).await;
    pty.send(b"\x03").await;
    // The terminal flushes what was typed with the Ctrl-C (as any terminal does): the next
    // line is typed at the shell's next prompt.
    pty.expect("# ", 15).await;
    pty.send(b"echo af''ter\r").await;
    pty.expect("after", 15).await;
}

fn aws_execute_command<'a>(url: &'a str, task: &'a str, command: &'a str) -> Vec<&'a str> {
    let aws = Box::leak(venv("aws").display().to_string().into_boxed_str());
    vec![
        aws,
        "--endpoint-url",
        url,
        "ecs",
        "execute-command",
        "--task",
        task,
        "--interactive",
        "--command",
        command,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn the_stock_plugin_runs_a_shell_that_echoes_sizes_interrupts_and_exits() {
    let Some(dir) = plugin("the_stock_plugin_runs_a_shell_that_echoes_sizes_interrupts_and_exits") else {
        return;
    };
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "shell", &["app"], true, None).await;
    let arn = arn_of(&t);
    let url = url(&e);
    let mut pty = Pty::spawn(
        100,
        30,
        Some((120, 40)),
        &client_env(Some(&dir)),
        &aws_execute_command(&url, &arn, "/bin/sh"),
    );
    pty.expect("Starting session with SessionId", 60).await;
    pty.expect("# ", 30).await;
    pty.send(b"echo hel''lo\r").await;
    pty.expect("hello\r", 30).await;
    shell_sizes_and_interrupts(&mut pty, "30 100", "40 120").await;
    pty.send(b"exit\r").await;
    pty.expect("Exiting session with sessionId", 30).await;
    assert_eq!(pty.wait(30).await, 0, "{}", pty.text());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn the_stock_plugin_runs_a_one_off_command_and_ends_with_it() {
    let Some(dir) = plugin("the_stock_plugin_runs_a_one_off_command_and_ends_with_it") else { return };
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "oneoff", &["app"], true, None).await;
    let arn = arn_of(&t);
    let url = url(&e);
    // Nothing is typed: the command's output shows, and the session ends when it exits,
    // with the process's exit code lost as the plugin always loses it (it exits 0).
    let mut pty = Pty::spawn(
        80,
        24,
        None,
        &client_env(Some(&dir)),
        &aws_execute_command(&url, &arn, "echo h''i there"),
    );
    assert_eq!(pty.wait(60).await, 0, "{}", pty.text());
    let shown = pty.text().replace('\r', "");
    let after = shown.split("Starting session with SessionId").nth(1).expect("the session started");
    let lines: Vec<&str> = after.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.first(), Some(&"hi there"), "{shown}");
    assert!(lines.get(1).is_some_and(|l| l.starts_with("Exiting session with sessionId")), "{shown}");
    eventually(WAIT, "the session to be gone", || async {
        (e.daemon.as_ref().unwrap().exec().session_count() == 0).then_some(())
    })
    .await;
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn ten_megabytes_come_through_the_stock_plugin_intact() {
    let Some(dir) = plugin("ten_megabytes_come_through_the_stock_plugin_intact") else { return };
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "bulk", &["app"], true, None).await;
    let arn = arn_of(&t);
    let url = url(&e);
    // 7.5 MB of random bytes as base64 (10 MB of text, safe through a terminal), its sum,
    // then the text itself between markers base64 cannot hold.
    let command = "sh -c 'head -c 7500000 /dev/urandom | base64 > /tmp/b; sha256sum < /tmp/b; \
                   echo @BEGIN@; cat /tmp/b; echo @END@; rm /tmp/b'";
    let mut pty =
        Pty::spawn(120, 40, None, &client_env(Some(&dir)), &aws_execute_command(&url, &arn, command));
    assert_eq!(pty.wait(300).await, 0);
    let shown = pty.text().replace('\r', "");
    let sum = shown.split("Starting session with SessionId").nth(1).unwrap().lines().nth(1).unwrap();
    let sum = sum.split_whitespace().next().unwrap().to_owned();
    let body = shown.split("@BEGIN@\n").nth(1).and_then(|r| r.split("@END@\n").next()).expect("the markers");
    assert!(body.len() > 10_000_000, "{} bytes came", body.len());
    assert_eq!(hex::encode(Sha256::digest(body.as_bytes())), sum, "the text arrived intact");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn the_aws_cli_is_refused_a_task_without_execute_command() {
    let Some(dir) = plugin("the_aws_cli_is_refused_a_task_without_execute_command") else { return };
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "closed", &["app"], false, None).await;
    let out = tokio::process::Command::new(venv("aws"))
        .args(["--endpoint-url", &url(&e), "ecs", "execute-command", "--task", &arn_of(&t)])
        .args(["--interactive", "--command", "/bin/sh"])
        .env_clear()
        .envs(client_env(Some(&dir)))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(
            "An error occurred (InvalidParameterException) when calling the ExecuteCommand operation: \
             The execute command failed because execute command was not enabled when the task was run \
             or the execute command agent isn’t running."
        ),
        "{stderr}"
    );
    e.finish().await;
}

/// `ecsd exec` (the binary) with `args`, `stdin` piped in: (exit code, stdout, stderr).
async fn ecsd_exec(e: &Ecsd, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["exec", "--endpoint-url", &url(e)])
        .args(args)
        .env_clear()
        .envs(client_env(None))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeding = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
    });
    let out = tokio::time::timeout(Duration::from_secs(WAIT), child.wait_with_output())
        .await
        .expect("ecsd exec ends")
        .unwrap();
    feeding.await.unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn ecsd_exec_runs_commands_pipes_and_exits_with_their_codes() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "cli", &["app", "side"], true, None).await;
    let arn = arn_of(&t);
    let task = task_id(&arn);

    // Exit codes: 0, 3, and 137 for a process killed by SIGKILL.
    let (code, out, _) = ecsd_exec(&e, &["--task", &task, "--", "sh", "-c", "echo \"$NAME\" ok"], b"").await;
    assert_eq!((code, String::from_utf8(out).unwrap()), (0, "app ok\n".to_owned()), "the first container");
    assert_eq!(ecsd_exec(&e, &["--task", &task, "--", "sh", "-c", "exit 3"], b"").await.0, 3);
    assert_eq!(ecsd_exec(&e, &["--task", &task, "--", "sh", "-c", "kill -9 $$"], b"").await.0, 137);
    let (code, out, _) =
        ecsd_exec(&e, &["--task", &arn, "--container", "side", "--", "sh", "-c", "echo \"$NAME\""], b"")
            .await;
    assert_eq!((code, out), (0, b"side\n".to_vec()));

    // A script into sh's stdin; stdout and stderr apart.
    let script = b"echo one\necho two >&2\nexit 5\n";
    let (code, out, err) = ecsd_exec(&e, &["--task", &task, "--pipe", "sh"], script).await;
    assert_eq!((code, out, err), (5, b"one\n".to_vec(), "two\n".to_owned()));

    // 1 MB of binary stdin, byte for byte.
    let blob: Vec<u8> = (0..1_048_576u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (code, out, err) = ecsd_exec(&e, &["--task", &task, "--pipe", "md5sum"], &blob).await;
    assert_eq!(code, 0, "{err}");
    let mut local =
        std::process::Command::new("md5sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    local.stdin.take().unwrap().write_all(&blob).unwrap();
    let want = local.wait_with_output().unwrap().stdout;
    assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(want).unwrap());
    // -i TEXT is the stdin.
    let (_, out, _) = ecsd_exec(&e, &["--task", &task, "--pipe", "wc -c", "-i", "12345"], b"ignored").await;
    assert_eq!(String::from_utf8(out).unwrap().trim(), "5");

    // --service: the service's running task, its first container.
    e.client
        .create_service()
        .service_name("web")
        .task_definition("cli")
        .desired_count(1)
        .enable_execute_command(true)
        .send()
        .await
        .unwrap();
    let listed = eventually(WAIT, "the service's task to run", || async {
        let l = e
            .client
            .list_tasks()
            .service_name("web")
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .send()
            .await
            .ok()?;
        let arn = l.task_arns().first()?.clone();
        let t = e.client.describe_tasks().tasks(&arn).send().await.ok()?;
        (t.tasks().first()?.last_status() == Some("RUNNING")).then_some(arn)
    })
    .await;
    e.wait_trap(&listed, "app", SIGTERM).await;
    let (code, out, err) =
        ecsd_exec(&e, &["--service", "web", "--", "sh", "-c", "echo \"$NAME\""], b"").await;
    assert_eq!((code, out), (0, b"app\n".to_vec()), "{err}");

    // Clear errors, and 255 for ecsd exec's own failures.
    let (code, _, err) = ecsd_exec(&e, &["--service", "nope", "--", "true"], b"").await;
    assert_eq!((code, err.trim()), (255, "ecsd exec: no service nope in cluster default"));
    let (code, _, err) = ecsd_exec(&e, &["--task", &task, "--container", "db", "--", "true"], b"").await;
    assert_eq!(code, 255);
    assert_eq!(err.trim(), format!("ecsd exec: task {task} has no container named db; it has: app, side"));
    let (code, _, err) =
        ecsd_exec(&e, &["--task", "0123456789abcdef0123456789abcdef", "--", "true"], b"").await;
    assert_eq!(
        (code, err.trim()),
        (255, "ecsd exec: no task 0123456789abcdef0123456789abcdef in cluster default")
    );
    let closed = exec_task(&e, "closed", &["app"], false, None).await;
    let (code, _, err) = ecsd_exec(&e, &["--task", &arn_of(&closed), "--", "true"], b"").await;
    assert_eq!(code, 255);
    assert!(err.starts_with("ecsd exec: InvalidParameterException: The execute command failed because execute command was not enabled"), "{err}");
    let (code, _, err) = ecsd_exec(&e, &["--task", &task, "--", "/no/such/program"], b"").await;
    match e.runtime {
        TestRuntime::Containerd => {
            assert_eq!(code, 126, "{err}");
            assert!(err.contains("cannot run /no/such/program in container app"), "{err}");
        }
        // Known difference: libpod answers the exec start before runc has tried, and its
        // session then looks like a process that exited 127 (its pid is reset at the end), so
        // ecsd cannot tell "never started" from "exited 127": the code is libpod's and the
        // text is runc's, not ecsd's notice.
        TestRuntime::Podman => {
            assert_eq!(code, 127, "{err}");
            assert!(err.contains("/no/such/program"), "{err}");
        }
    }
    // The service's tasks go with it: draining ends INACTIVE once every task is STOPPED.
    e.client.delete_service().service("web").force(true).send().await.unwrap();
    eventually(WAIT, "the service to drain", || async {
        let d = e.client.describe_services().services("web").send().await.ok()?;
        (d.services().first()?.status() == Some("INACTIVE")).then_some(())
    })
    .await;
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn ecsd_exec_in_a_terminal_sizes_resizes_interrupts_and_exits_with_the_code() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "tty", &["app"], true, None).await;
    let task = task_id(&arn_of(&t));
    let url = url(&e);
    let ecsd = env!("CARGO_BIN_EXE_ecsd");
    let argv = [ecsd, "exec", "--endpoint-url", &url, "--task", &task, "--", "/bin/sh"];
    let mut pty = Pty::spawn(100, 30, Some((132, 43)), &client_env(None), &argv);
    pty.expect("# ", 60).await;
    pty.send(b"[ -t 0 ] && echo a-terminal''-it-is\r").await;
    pty.expect("a-terminal-it-is", 30).await;
    shell_sizes_and_interrupts(&mut pty, "30 100", "43 132").await;
    pty.send(b"exit 4\r").await;
    assert_eq!(pty.wait(30).await, 4, "ecsd exec exits with the shell's code: {}", pty.text());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_token_is_refused_the_second_time() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let t = exec_task(&e, "once", &["app"], true, None).await;
    let out =
        e.client.execute_command().task(arn_of(&t)).command("true").interactive(true).send().await.unwrap();
    let s = out.session().unwrap();
    let (url, token) = (s.stream_url().unwrap().to_owned(), s.token_value().unwrap().to_owned());
    let first =
        session(&url, &token, ClientOptions { tty: false, stdin: false, cols: 0, rows: 0 }, None).await;
    assert_eq!(first.0.unwrap(), Outcome { exit_code: Some(0), message: String::new() });
    let second =
        session(&url, &token, ClientOptions { tty: false, stdin: false, cols: 0, rows: 0 }, None).await;
    match second.0 {
        Err(client::ClientError::Refused(why)) => {
            assert_eq!(why, "the token is not valid: it was never issued, or it was used already")
        }
        other => panic!("the second use was not refused: {other:?}"),
    }
    e.finish().await;
}

/// Runs ecsd's client library to the end: its outcome and stdout.
async fn session(
    url: &str,
    token: &str,
    options: ClientOptions,
    events: Option<mpsc::UnboundedReceiver<ClientEvent>>,
) -> (Result<Outcome, client::ClientError>, Vec<u8>) {
    let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
    let events = events.unwrap_or_else(|| mpsc::unbounded_channel().1);
    let io = ClientIo { stdin: None, stdout: Box::new(out_w), stderr: Box::new(tokio::io::sink()), events };
    let reading = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = out_r.read_to_end(&mut v).await;
        v
    });
    let outcome = client::run(url, token, options, io).await;
    (outcome, reading.await.unwrap())
}

/// The exec'd processes the runtime runs in a container.
async fn exec_processes(e: &Ecsd, runtime_id: &str) -> Vec<u32> {
    e.exec_pids(runtime_id).await
}

/// A session whose process printed `ready` and waits: the client keeps going in the
/// background; `stop` (Terminate/Signal) and the outcome come through the handle.
struct Live {
    events: mpsc::UnboundedSender<ClientEvent>,
    handle: tokio::task::JoinHandle<Result<Outcome, client::ClientError>>,
}

async fn live(e: &Ecsd, arn: &str, tty: bool) -> Live {
    let out = e
        .client
        .execute_command()
        .task(arn)
        .command("sh -c 'echo ready; exec sleep 1000'")
        .interactive(true)
        .send()
        .await
        .unwrap();
    let s = out.session().unwrap();
    let (url, token) = (s.stream_url().unwrap().to_owned(), s.token_value().unwrap().to_owned());
    let (events, rx) = mpsc::unbounded_channel();
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    // With a terminal, keys go through stdin: it stays open until the session ends.
    let (stdin_w, stdin_r) = tokio::io::duplex(64);
    let options = ClientOptions { tty, stdin: tty, cols: 80, rows: 24 };
    let io = ClientIo {
        stdin: tty.then(|| Box::new(stdin_r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        stdout: Box::new(out_w),
        stderr: Box::new(tokio::io::sink()),
        events: rx,
    };
    let handle = tokio::spawn(async move {
        let _keep = stdin_w;
        client::run(&url, &token, options, io).await
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(WAIT), async {
        while !String::from_utf8_lossy(&seen).contains("ready") {
            let n = out_r.read(&mut buf).await.unwrap();
            assert!(n > 0, "the session ended before its process was ready");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the process to be ready");
    tokio::spawn(async move { while out_r.read(&mut buf).await.is_ok_and(|n| n > 0) {} });
    Live { events, handle }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_hundred_sessions_leave_nothing_behind() {
    let _g = CONTAINERD.read().await;
    let mut e = Ecsd::start(&[("ECSD_EXEC_MAX_SESSIONS", "20")]).await;
    let a = exec_task(&e, "many", &["app"], true, None).await;
    let arn = arn_of(&a);
    let rt = named(&a, "app").runtime_id().unwrap().to_owned();

    // 40 that end by themselves, 10 at a time.
    for batch in 0..4 {
        let runs = (0..10).map(|i| {
            let e = &e;
            let arn = arn.clone();
            async move {
                let command = format!("sh -c 'echo {batch}-{i}'");
                let out = e
                    .client
                    .execute_command()
                    .task(&arn)
                    .command(command)
                    .interactive(true)
                    .send()
                    .await
                    .unwrap();
                let s = out.session().unwrap();
                let opts = ClientOptions { tty: i % 2 == 0, stdin: false, cols: 80, rows: 24 };
                let (outcome, stdout) =
                    session(s.stream_url().unwrap(), s.token_value().unwrap(), opts, None).await;
                assert_eq!(outcome.unwrap().exit_code, Some(0));
                assert!(String::from_utf8_lossy(&stdout).contains(&format!("{batch}-{i}")));
            }
        });
        futures_util::future::join_all(runs).await;
    }
    // 20 ended by Ctrl-C (with a terminal) or SIGINT (without).
    for tty in [true, false] {
        let sessions = futures_util::future::join_all((0..10).map(|_| live(&e, &arn, tty))).await;
        for s in &sessions {
            s.events.send(ClientEvent::Signal(2)).unwrap();
        }
        for s in sessions {
            let outcome =
                tokio::time::timeout(Duration::from_secs(WAIT), s.handle).await.unwrap().unwrap().unwrap();
            assert_eq!(outcome.exit_code, Some(130), "{outcome:?}");
        }
    }
    // 20 whose client vanishes mid-session.
    for _ in 0..2 {
        let sessions = futures_util::future::join_all((0..10).map(|_| live(&e, &arn, false))).await;
        for s in sessions {
            s.handle.abort();
        }
    }
    eventually(WAIT, "the vanished clients' processes to end", || async {
        exec_processes(&e, &rt).await.is_empty().then_some(())
    })
    .await;
    // 10 ended by their task stopping.
    let b = exec_task(&e, "stopping", &["app"], true, None).await;
    let b_arn = arn_of(&b);
    let sessions = futures_util::future::join_all((0..10).map(|_| live(&e, &b_arn, false))).await;
    e.stop(&b_arn, "test: stop under sessions").await;
    for s in sessions {
        let ended = tokio::time::timeout(Duration::from_secs(WAIT), s.handle).await.unwrap().unwrap();
        assert!(!matches!(ended, Ok(Outcome { exit_code: Some(0), .. })), "{ended:?}");
    }
    e.wait_status(&arn_of(&b), "STOPPED").await;
    eventually(WAIT, "no session left", || async {
        (e.daemon.as_ref().unwrap().exec().session_count() == 0).then_some(())
    })
    .await;

    // 10 whose ecsd is killed: the next ecsd ends their processes when it re-adopts the task.
    e.down().await;
    let mut spawned = e.spawn_binary();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .args(["exec", "--endpoint-url", &spawned.url, "--task", &arn, "--"])
            .args(["sh", "-c", "echo ready; exec sleep 1000"])
            .env_clear()
            .envs(client_env(None))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(WAIT), out.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"ready\n");
        clients.push(child);
    }
    assert_eq!(exec_processes(&e, &rt).await.len(), 10, "ten exec'd processes run");
    spawned.kill();
    for mut c in clients {
        let status = tokio::time::timeout(Duration::from_secs(WAIT), c.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(255), "ecsd exec fails when its ecsd dies");
    }
    e.up().await;
    eventually(WAIT, "the dead ecsd's exec'd processes to be ended", || async {
        exec_processes(&e, &rt).await.is_empty().then_some(())
    })
    .await;

    // Nothing left: no exec'd process, no FIFO, no session, no connection.
    let fifo_dir = e.data.path().join("run/exec");
    let fifos: Vec<_> =
        std::fs::read_dir(&fifo_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert_eq!(fifos, Vec::<PathBuf>::new(), "exec FIFO directories left");
    assert_eq!(e.daemon.as_ref().unwrap().exec().session_count(), 0);
    let port = e.daemon.as_ref().unwrap().addr().port();
    let connections = run_cmd("ss", &["-Htn", "state", "established", &format!("( sport = :{port} )")]).await;
    assert_eq!(connections.trim(), "", "websockets left open");
    e.finish().await;
}
