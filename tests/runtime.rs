//! The containerd runtime against a real containerd.
//!
//! Tests marked `needs root and containerd` expect a private containerd (`hack/containerd
//! start DIR`) at `ECSD_TEST_CONTAINERD=DIR/containerd.sock` and the image tarball of
//! `hack/build-test-image` at `ECSD_TEST_IMAGE`; hack/test sets both up for the root tier.
//! All tests of one run share a containerd namespace, `ecsd-test-PID`; the image is imported
//! into it once. The restart test stops and starts that containerd, so it runs alone.

mod support;

use support::{eventually, image_tar, socket};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ecsd::runtime::embedded::ensure;
use ecsd::runtime::import::import;
use ecsd::runtime::{
    Backend, ConsoleSize, ContainerdOptions, ContainerdRuntime, Event, ExecOutput, ExecSpec, Image,
    ProcessStatus, Runtime, RuntimeError, Stdio, normalize, read_logs, run_to_completion,
};
use oci_spec::runtime::{LinuxBuilder, Process, ProcessBuilder, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OnceCell, RwLock, mpsc};

/// Held for reading by every test, for writing by the one that restarts containerd.
static CONTAINERD: RwLock<()> = RwLock::const_new(());
static IMPORTED: OnceCell<Vec<String>> = OnceCell::const_new();

const EXIT_WAIT: Duration = Duration::from_secs(20);

fn namespace() -> String {
    format!("ecsd-test-{}", std::process::id())
}

async fn imported() -> &'static Vec<String> {
    IMPORTED
        .get_or_init(|| async {
            let names = import(&socket(), &namespace(), &image_tar()).await.expect("import the test image");
            assert_eq!(
                names,
                vec!["docker.io/library/busybox:latest", "docker.io/library/busybox-stopsignal:latest"],
                "the images of hack/build-test-image"
            );
            names
        })
        .await
}

fn short_id(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A runtime with a live exit stream and the busybox image, plus a scratch directory.
struct Env {
    rt: ContainerdRuntime,
    events: mpsc::Receiver<Event>,
    image: Image,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        imported().await;
        let dir = tempfile::tempdir().unwrap();
        let rt = ContainerdRuntime::new(ContainerdOptions {
            address: socket(),
            namespace: namespace(),
            log_driver: PathBuf::from(env!("CARGO_BIN_EXE_ecsd")),
            exec_dir: dir.path().join("exec"),
        })
        .unwrap();
        let mut events = rt.events();
        wait_reconnected(&mut events).await;
        let image = rt.image(&normalize("busybox").unwrap()).await.expect("resolve busybox");
        Env { rt, events, image, dir }
    }

    fn stdio(&self, id: &str) -> Stdio {
        Stdio { log_dir: self.log_dir(id), terminal: false }
    }

    fn log_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(id)
    }

    /// Prepares, creates and starts container `id` running `args`; returns its pid.
    async fn run(&self, id: &str, args: &[&str], labels: &BTreeMap<String, String>) -> u32 {
        self.create(id, args, labels).await;
        self.rt.start(id).await.unwrap_or_else(|e| panic!("start {id}: {e}"))
    }

    async fn create(&self, id: &str, args: &[&str], labels: &BTreeMap<String, String>) {
        let rootfs = self.rt.prepare(id, &self.image).await.unwrap_or_else(|e| panic!("prepare {id}: {e}"));
        assert!(rootfs.layers[0].join("bin/busybox").is_file(), "layers {:?} hold the image", rootfs.layers);
        self.rt
            .create(id, &spec(id, args), labels, &self.stdio(id))
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
    }

    /// Waits for the exit of `id`'s main process: its code, time and pid.
    async fn wait_exit(&mut self, id: &str) -> (i32, f64, u32) {
        let deadline = tokio::time::Instant::now() + EXIT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Exit { id: got, pid, code, at })) if got == id => return (code, at, pid),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the event stream ended while waiting for {id}"),
                Err(_) => panic!("no exit of {id} within {EXIT_WAIT:?}"),
            }
        }
    }

    async fn try_wait_exit(&mut self, id: &str, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Exit { id: got, code, .. })) if got == id => return Some(code),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn kill_and_remove(&mut self, id: &str) {
        if self.rt.signal(id, 9).await.is_ok() {
            self.wait_exit(id).await;
        }
        self.rt.remove(id).await.unwrap_or_else(|e| panic!("remove {id}: {e}"));
    }
}

async fn wait_reconnected(events: &mut mpsc::Receiver<Event>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(Event::Reconnected)) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event stream ended before it was live"),
            Err(_) => panic!("the event subscription did not become live within 30 s"),
        }
    }
}

fn spec(id: &str, args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some(id.chars().take(12).collect()));
    spec.set_process(Some(process(args)));
    let mut root = oci_spec::runtime::Root::default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(format!("/ecsd-test/{id}")))
        .namespaces(oci_spec::runtime::get_default_namespaces())
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .unwrap();
    spec.set_linux(Some(linux));
    spec
}

fn process(args: &[&str]) -> Process {
    ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn logs_of(dir: &Path) -> String {
    let mut out = Vec::new();
    let _ = read_logs(dir, false, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn unreachable_containerd_is_unavailable_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ContainerdRuntime::new(ContainerdOptions {
        address: dir.path().join("nothing.sock"),
        namespace: "ecs".into(),
        log_driver: PathBuf::from("/bin/true"),
        exec_dir: dir.path().join("exec"),
    })
    .unwrap();
    let mut events = rt.events();
    for result in
        [rt.list().await.map(|_| ()), rt.version().await.map(|_| ()), rt.start("x").await.map(|_| ())]
    {
        match result {
            Err(e @ RuntimeError::Unavailable { runtime: Backend::Containerd, .. }) => {
                assert!(e.to_string().starts_with("containerd is unreachable at "), "{e}");
                assert!(e.to_string().contains("nothing.sock"), "{e}");
            }
            other => panic!("want Unavailable, got {other:?}"),
        }
    }
    assert!(matches!(
        rt.image("docker.io/library/busybox:latest").await,
        Err(RuntimeError::Unavailable { .. })
    ));
    // No subscription, so no Reconnected; and nothing panics in the background.
    assert!(tokio::time::timeout(Duration::from_millis(500), events.recv()).await.is_err());
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn images_resolve_after_import() {
    let _g = CONTAINERD.read().await;
    let env = Env::new().await;
    let image = &env.image;
    assert_eq!(image.name, "docker.io/library/busybox:latest");
    assert!(image.digest.starts_with("sha256:") && image.config_digest.starts_with("sha256:"));
    assert_ne!(image.digest, image.config_digest);
    assert_eq!(image.config.cmd, Some(vec!["sh".to_owned()]));
    assert_eq!(image.config.env, vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
    assert_eq!(image.config.stop_signal, None);
    assert_eq!(image.config.labels.get("ecsd.test.image").map(String::as_str), Some("busybox"));

    let stop = env.rt.image(&normalize("busybox-stopsignal").unwrap()).await.unwrap();
    assert_eq!(stop.config.stop_signal.as_deref(), Some("SIGUSR1"));
    assert_ne!(stop.digest, image.digest);

    // By digest, as Docker finds repo@digest.
    let by_digest = normalize(&format!("busybox@{}", image.digest)).unwrap();
    let found = env.rt.image(&by_digest).await.unwrap();
    assert_eq!(
        (found.digest.as_str(), found.config_digest.as_str()),
        (image.digest.as_str(), image.config_digest.as_str())
    );

    // Importing again changes nothing.
    let again = import(&socket(), &namespace(), &image_tar()).await.unwrap();
    assert_eq!(&again, imported().await);
    assert_eq!(env.rt.image(&image.name).await.unwrap(), *image);
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn missing_image_is_image_not_found() {
    let _g = CONTAINERD.read().await;
    let env = Env::new().await;
    let name = normalize("nope/never-imported:1").unwrap();
    match env.rt.image(&name).await {
        Err(RuntimeError::ImageNotFound { reference, store: ns, .. }) => {
            assert_eq!(reference, "docker.io/nope/never-imported:1");
            assert_eq!(ns, namespace());
        }
        other => panic!("want ImageNotFound, got {other:?}"),
    }
    let digest = format!("busybox@sha256:{}", "0".repeat(64));
    assert!(matches!(
        env.rt.image(&normalize(&digest).unwrap()).await,
        Err(RuntimeError::ImageNotFound { .. })
    ));
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn exit_code_and_logs() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("exit");
    let pid = env.run(&id, &["sh", "-c", "echo hi; echo oops >&2; exit 3"], &labels(&[])).await;
    let (code, at, exited) = env.wait_exit(&id).await;
    assert_eq!(code, 3);
    assert_eq!(exited, pid, "the exit event names the process start returned");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - at).abs() < 60.0, "exit time {at} is not now ({now})");

    let dir = env.log_dir(&id);
    let text = eventually(10, "both lines in the log", || async {
        let t = logs_of(&dir);
        (t.contains("hi\n") && t.contains("oops\n")).then_some(t)
    })
    .await;
    assert_eq!(text.lines().count(), 2, "{text:?}");
    let raw = std::fs::read_to_string(dir.join("container.log")).unwrap();
    assert!(raw.contains(r#""log":"hi\n","stream":"stdout","time":""#), "{raw}");
    assert!(raw.contains(r#""log":"oops\n","stream":"stderr""#), "{raw}");

    assert_eq!(env.rt.remove(&id).await.unwrap().map(|(c, _)| c), Some(3));
    // The log directory is the engine's to keep or delete.
    assert!(dir.join("container.log").exists());
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn signals_stop_containers() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    // A shell that handles SIGTERM exits 143 ...
    let trap = short_id("trap");
    env.run(&trap, &["sh", "-c", "trap 'exit 143' TERM; echo trapped; sleep 1000 & wait"], &labels(&[]))
        .await;
    // ... once the trap is installed, which it says.
    let dir = env.log_dir(&trap);
    eventually(20, "the trap installed", || async { logs_of(&dir).contains("trapped").then_some(()) }).await;
    env.rt.signal(&trap, 15).await.unwrap();
    assert_eq!(env.wait_exit(&trap).await.0, 143);
    env.rt.remove(&trap).await.unwrap();

    // `sleep` as pid 1 ignores SIGTERM (no handler), so it takes SIGKILL: 137.
    let sleep = short_id("sleep");
    env.run(&sleep, &["sleep", "1000"], &labels(&[])).await;
    env.rt.signal(&sleep, 15).await.unwrap();
    let code = match env.try_wait_exit(&sleep, Duration::from_secs(2)).await {
        Some(code) => code,
        None => {
            env.rt.signal(&sleep, 9).await.unwrap();
            env.wait_exit(&sleep).await.0
        }
    };
    assert!(code == 143 || code == 137, "exit code {code}");
    assert_eq!(env.rt.remove(&sleep).await.unwrap().map(|(c, _)| c), Some(code));
    // Signalling what is gone names it.
    assert!(matches!(env.rt.signal(&sleep, 9).await, Err(RuntimeError::NotFound { what: "task", .. })));
}

/// Whether containerd still knows exec'd process `exec_id` of container `id`.
async fn exec_known(id: &str, exec_id: &str) -> bool {
    let channel = containerd_client::connect(socket()).await.expect("connect to the test containerd");
    let mut tasks = containerd_client::services::v1::tasks_client::TasksClient::new(channel);
    let mut req = tonic::Request::new(containerd_client::services::v1::GetRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
    });
    req.metadata_mut().insert("containerd-namespace", namespace().parse().unwrap());
    match tasks.get(req).await {
        Ok(_) => true,
        Err(s) if s.code() == tonic::Code::NotFound => false,
        Err(s) => panic!("get exec {exec_id} of {id}: {s}"),
    }
}

/// Waits until containerd has forgotten every process of `exec_ids` and the exec directory is
/// empty.
async fn wait_cleaned_up(env: &Env, id: &str, exec_ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let exec_dir = env.dir.path().join("exec");
    loop {
        let mut known = Vec::new();
        for exec_id in exec_ids {
            if exec_known(id, exec_id).await {
                known.push(exec_id.clone());
            }
        }
        let fifos: Vec<_> = match std::fs::read_dir(&exec_dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        if known.is_empty() && fifos.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after 20 s: exec'd processes {known:?}, FIFO directories {fifos:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exec_spec(args: &[&str]) -> ExecSpec {
    ExecSpec::new(process(args))
}

/// Reads `stream` until `done` holds for what was read, or fails after 10 s.
async fn read_until(stream: &mut ExecOutput, what: &str, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if done(&text) {
            return text;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("{what}: the stream ended; read {text:?}"),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{what}: {e}; read {text:?}"),
            Err(_) => panic!("{what}: not within 10 s; read {text:?}"),
        }
    }
}

async fn read_all(stream: Option<ExecOutput>) -> Vec<u8> {
    let mut out = Vec::new();
    stream.expect("a stream").read_to_end(&mut out).await.expect("read to the end");
    out
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn exec_runs_health_checks() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("exec");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let run = |args: &'static [&'static str]| {
        run_to_completion(&env.rt, &id, process(args), Duration::from_secs(10))
    };

    let ok = run(&["sh", "-c", "echo healthy"]).await.unwrap();
    assert_eq!((ok.exit_code, ok.output.as_str()), (0, "healthy\n"));
    let sick = run(&["sh", "-c", "echo sick >&2; exit 2"]).await.unwrap();
    assert_eq!((sick.exit_code, sick.output.as_str()), (2, "sick\n"));
    // A child left in the background keeps the output open; the result does not wait for it.
    let started = Instant::now();
    let spawner = run(&["sh", "-c", "echo started; sleep 30 &"]).await.unwrap();
    assert_eq!((spawner.exit_code, spawner.output.as_str()), (0, "started\n"));
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    let long = run(&["sh", "-c", "seq 1 2000"]).await.unwrap();
    assert_eq!(long.output.len(), 1024);
    assert!(long.output.ends_with("1999\n2000\n"), "{}", long.output);
    match run(&["/no/such/binary"]).await {
        Err(e @ RuntimeError::Internal { operation: "start exec", .. }) => {
            assert!(e.to_string().contains(&id), "{e}")
        }
        other => panic!("want Internal, got {other:?}"),
    }
    // Health-check exits are not container exits.
    assert_eq!(env.try_wait_exit(&id, Duration::from_millis(300)).await, None);
    wait_cleaned_up(&env, &id, &[]).await;
    // An exec in a container that is gone names it.
    match env.rt.exec("never-existed", exec_spec(&["true"])).await {
        Err(RuntimeError::NotFound { what, id }) => {
            assert_eq!((what, id.as_str()), ("task", "never-existed"))
        }
        other => panic!("want NotFound, got {other:?}"),
    }
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn exec_times_out_and_is_killed() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("exectime");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let started = Instant::now();
    match run_to_completion(&env.rt, &id, process(&["sleep", "30"]), Duration::from_millis(500)).await {
        Err(RuntimeError::Timeout { operation: "exec", after }) => {
            assert_eq!(after, Duration::from_millis(500))
        }
        other => panic!("want Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // The container is unharmed and execs again.
    let again = run_to_completion(&env.rt, &id, process(&["true"]), Duration::from_secs(10)).await.unwrap();
    assert_eq!(again.exit_code, 0);
    wait_cleaned_up(&env, &id, &[]).await;
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn streaming_exec_keeps_stdout_and_stderr_apart() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("streams");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let mut exec = env
        .rt
        .exec(&id, exec_spec(&["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"]))
        .await
        .unwrap();
    assert!(exec.stdin.is_none(), "no stdin was asked for");
    let (out, err) = tokio::join!(read_all(exec.stdout.take()), read_all(exec.stderr.take()));
    assert_eq!(String::from_utf8_lossy(&out), "out\nout2\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert_eq!(exec.wait().await.unwrap(), 3);
    // Waiting again tells the same.
    assert_eq!(exec.wait().await.unwrap(), 3);
    let exec_id = exec.id().to_owned();
    // Read to the end and exited: cleaned up even while the handle lives.
    wait_cleaned_up(&env, &id, &[exec_id]).await;
    drop(exec);
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn terminal_exec_has_its_size_from_the_start_and_resizes() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("tty");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let mut spec = exec_spec(&["sh", "-c", "stty size; read line; stty size; echo got $line"]);
    spec.process.set_terminal(Some(true));
    spec.stdin = true;
    spec.console_size = Some(ConsoleSize { cols: 100, rows: 30 });
    let mut exec = env.rt.exec(&id, spec).await.unwrap();
    assert!(exec.stderr.is_none(), "a terminal has one output stream");
    let mut stdout = exec.stdout.take().unwrap();
    let mut stdin = exec.stdin.take().unwrap();
    read_until(&mut stdout, "the initial size", |t| t.contains("30 100\r\n")).await;

    exec.resize(132, 43).await.unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    let text = read_until(&mut stdout, "the size after the resize", |t| t.contains("got hello\r\n")).await;
    assert!(text.contains("43 132\r\n"), "{text:?}");
    assert_eq!(exec.wait().await.unwrap(), 0);
    drop((stdin, stdout));
    let exec_id = exec.id().to_owned();
    drop(exec);
    wait_cleaned_up(&env, &id, &[exec_id]).await;
    env.kill_and_remove(&id).await;
}

/// 1 MiB that is not text: every byte value, in an order no pipe would keep by accident.
fn binary_data() -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn stdin_arrives_byte_for_byte_and_closing_it_ends_cat() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("stdin");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let data = binary_data();

    // Through cat and back, written and read at once (a pipe holds only 64 KiB).
    let mut spec = exec_spec(&["cat"]);
    spec.stdin = true;
    let mut exec = env.rt.exec(&id, spec).await.unwrap();
    let mut stdin = exec.stdin.take().unwrap();
    let input = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        // Closing stdin is what ends cat.
        stdin.shutdown().await.unwrap();
    });
    let (out, err) = tokio::join!(read_all(exec.stdout.take()), read_all(exec.stderr.take()));
    writer.await.unwrap();
    assert_eq!(out.len(), data.len());
    assert!(out == data, "cat returned other bytes");
    assert!(err.is_empty());
    assert_eq!(exec.wait().await.unwrap(), 0);

    // Into md5sum (here sha256sum, which busybox also has), dropping stdin to close it.
    let mut spec = exec_spec(&["sha256sum"]);
    spec.stdin = true;
    let mut exec = env.rt.exec(&id, spec).await.unwrap();
    let mut stdin = exec.stdin.take().unwrap();
    stdin.write_all(&data).await.unwrap();
    drop(stdin);
    let out = read_all(exec.stdout.take()).await;
    let want = format!("{}  -\n", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)));
    assert_eq!(String::from_utf8_lossy(&out), want);
    assert_eq!(exec.wait().await.unwrap(), 0);
    drop(exec);
    wait_cleaned_up(&env, &id, &[]).await;
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn exec_exit_codes_and_kill() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("codes");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    for (args, code) in [(&["true"][..], 0), (&["sh", "-c", "exit 3"][..], 3)] {
        let exec = env.rt.exec(&id, exec_spec(args)).await.unwrap();
        assert_eq!(exec.wait().await.unwrap(), code, "{args:?}");
    }
    let exec = env.rt.exec(&id, exec_spec(&["sleep", "1000"])).await.unwrap();
    exec.kill(9).await.unwrap();
    assert_eq!(exec.wait().await.unwrap(), 137);
    assert!(matches!(exec.kill(-1).await, Err(RuntimeError::InvalidSignal { signal: -1 })));
    // The container's own process is untouched.
    assert_eq!(env.try_wait_exit(&id, Duration::from_millis(300)).await, None);
    drop(exec);
    wait_cleaned_up(&env, &id, &[]).await;
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn dropping_an_exec_early_leaves_nothing_behind() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("dropped");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let mut spec = exec_spec(&["sh", "-c", "echo started; exec sleep 1000"]);
    spec.stdin = true;
    let mut exec = env.rt.exec(&id, spec).await.unwrap();
    let exec_id = exec.id().to_owned();
    let mut stdout = exec.stdout.take().unwrap();
    read_until(&mut stdout, "the process to start", |t| t == "started\n").await;
    // Positive control: while it runs, containerd knows it and its pid lives.
    assert!(exec_known(&id, &exec_id).await);
    let pids = ctr(&["tasks", "ps", &id]);
    assert!(pids.lines().count() >= 3, "the container's process and the exec'd one: {pids}");

    drop(exec);
    drop(stdout);
    wait_cleaned_up(&env, &id, std::slice::from_ref(&exec_id)).await;
    // Only the container's own process is left.
    let pids = ctr(&["tasks", "ps", &id]);
    assert_eq!(pids.lines().count(), 2, "header and the container's process: {pids}");
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn a_hundred_short_execs_leave_nothing_behind() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("hundred");
    env.run(&id, &["sleep", "1000"], &labels(&[])).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..100 {
        let mut exec = env.rt.exec(&id, exec_spec(&["echo", &i.to_string()])).await.unwrap();
        ids.push(exec.id().to_owned());
        let out = read_all(exec.stdout.take()).await;
        assert_eq!(String::from_utf8_lossy(&out), format!("{i}\n"));
        assert_eq!(exec.wait().await.unwrap(), 0, "exec {i}");
    }
    eprintln!("100 execs in {:?}", started.elapsed());
    wait_cleaned_up(&env, &id, &ids).await;
    env.kill_and_remove(&id).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn remove_is_idempotent() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    assert_eq!(env.rt.remove("never-existed").await.unwrap(), None);

    // Prepared only: the snapshot and lease go.
    let prepared = short_id("prepared");
    env.rt.prepare(&prepared, &env.image).await.unwrap();
    match env.rt.prepare(&prepared, &env.image).await {
        Err(RuntimeError::AlreadyExists { what: "snapshot", id }) => assert_eq!(id, prepared),
        other => panic!("want AlreadyExists, got {other:?}"),
    }
    assert_eq!(env.rt.remove(&prepared).await.unwrap(), None);
    env.rt.prepare(&prepared, &env.image).await.expect("prepare again after remove");
    assert_eq!(env.rt.remove(&prepared).await.unwrap(), None);

    // Created, never started.
    let created = short_id("created");
    env.create(&created, &["true"], &labels(&[])).await;
    match env.rt.create(&created, &spec(&created, &["true"]), &labels(&[]), &env.stdio(&created)).await {
        Err(RuntimeError::AlreadyExists { what: "container", id }) => assert_eq!(id, created),
        other => panic!("want AlreadyExists, got {other:?}"),
    }
    assert_eq!(env.rt.remove(&created).await.unwrap(), None);
    assert_eq!(env.rt.remove(&created).await.unwrap(), None);

    // Running: refused; after the exit, removed with its status; then gone.
    let running = short_id("running");
    env.run(&running, &["sleep", "1000"], &labels(&[])).await;
    match env.rt.remove(&running).await {
        Err(RuntimeError::StillRunning { id }) => assert_eq!(id, running),
        other => panic!("want StillRunning, got {other:?}"),
    }
    env.rt.signal(&running, 9).await.unwrap();
    env.wait_exit(&running).await;
    assert_eq!(env.rt.remove(&running).await.unwrap().map(|(c, _)| c), Some(137));
    assert_eq!(env.rt.remove(&running).await.unwrap(), None);
    let ids: Vec<String> = env.rt.list().await.unwrap().into_iter().map(|c| c.id).collect();
    for id in [&prepared, &created, &running] {
        assert!(!ids.contains(id), "{id} still listed");
    }
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn list_shows_labels_and_statuses() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let group = short_id("list");
    let created = short_id("l-created");
    let running = short_id("l-running");
    let exited = short_id("l-exited");
    env.create(&created, &["true"], &labels(&[("group", &group), ("role", "created")])).await;
    let pid = env.run(&running, &["sleep", "1000"], &labels(&[("group", &group), ("role", "running")])).await;
    env.run(&exited, &["sh", "-c", "exit 7"], &labels(&[("group", &group), ("role", "exited")])).await;
    env.wait_exit(&exited).await;

    let mine: BTreeMap<String, (BTreeMap<String, String>, ProcessStatus)> = env
        .rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get("group") == Some(&group))
        .map(|c| (c.id, (c.labels, c.status)))
        .collect();
    assert_eq!(mine.len(), 3, "{mine:?}");
    assert_eq!(mine[&created].1, ProcessStatus::Created);
    assert_eq!(mine[&created].0.get("role").map(String::as_str), Some("created"));
    assert_eq!(mine[&running].1, ProcessStatus::Running { pid });
    match mine[&exited].1 {
        ProcessStatus::Exited { code: 7, at } => assert!(at > 1.0e9),
        other => panic!("want Exited 7, got {other:?}"),
    }
    env.rt.remove(&created).await.unwrap();
    env.rt.remove(&exited).await.unwrap();
    env.kill_and_remove(&running).await;
}

/// `ctr` on the test containerd and namespace; its stdout.
fn ctr(args: &[&str]) -> String {
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket())
        .arg("--namespace")
        .arg(namespace())
        .args(args)
        .output()
        .expect("run ctr");
    assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs containerd's garbage collector now: deleting a lease with --sync waits for a collection.
fn collect_garbage() {
    let id = short_id("gc");
    ctr(&["leases", "create", "--id", &id]);
    ctr(&["leases", "delete", "--sync", &id]);
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn twenty_cycles_keep_their_snapshots() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    // The image's layers survive a collection (the unpack labelled them for GC) ...
    collect_garbage();
    let committed = ctr(&["snapshots", "ls"]).lines().filter(|l| l.contains("Committed")).count();
    assert!(committed >= 1, "image snapshots were collected");
    let (mut prepare, mut create, mut start, mut exit, mut remove, mut lifecycle) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        let id = short_id(&format!("cycle{i}"));
        let t0 = Instant::now();
        env.rt.prepare(&id, &env.image).await.unwrap_or_else(|e| panic!("cycle {i}: prepare: {e}"));
        prepare.push(t0.elapsed());
        // ... and so does a prepared snapshot nothing references yet (its lease holds it).
        collect_garbage();
        let t1 = Instant::now();
        env.rt
            .create(&id, &spec(&id, &["true"]), &labels(&[]), &env.stdio(&id))
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: create: {e}"));
        let t2 = Instant::now();
        env.rt.start(&id).await.unwrap_or_else(|e| panic!("cycle {i}: start: {e}"));
        let t3 = Instant::now();
        assert_eq!(env.wait_exit(&id).await.0, 0, "cycle {i}");
        let t4 = Instant::now();
        assert!(env.rt.remove(&id).await.unwrap().is_some(), "cycle {i}");
        create.push(t2 - t1);
        start.push(t3 - t2);
        exit.push(t4 - t3);
        remove.push(t4.elapsed());
        lifecycle.push(t4.elapsed() + (t4 - t1) + prepare[i]);
    }
    let leftovers: Vec<String> =
        ctr(&["snapshots", "ls"]).lines().filter(|l| l.starts_with("cycle")).map(str::to_owned).collect();
    assert!(leftovers.is_empty(), "snapshots left behind: {leftovers:?}");
    assert!(!ctr(&["leases", "ls"]).contains("ecsd-cycle"), "leases left behind");
    eprintln!(
        "20 cycles of `true`, medians: prepare {:?}, create (container + task) {:?}, start {:?}, \
         start to exit event {:?}, remove {:?}, lifecycle without the forced GC {:?}",
        median(prepare.clone()),
        median(create),
        median(start),
        median(exit),
        median(remove),
        median(lifecycle)
    );
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn logs_are_complete_rotated_and_outlive_the_runtime() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    // About 20 MB of json-file entries: one rotation at 10 MiB. Removing the task closes the
    // output pipes; the shim then waits for the driver to drain them.
    let id = short_id("loud");
    env.run(&id, &["seq", "1", "250000"], &labels(&[])).await;
    assert_eq!(env.wait_exit(&id).await.0, 0);
    env.rt.remove(&id).await.unwrap();
    let dir = env.log_dir(&id);
    let text = logs_of(&dir);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 250_000);
    assert_eq!((lines[0], lines[249_999]), ("1", "250000"));
    assert!(dir.join("container.log.1").exists());
    assert!(std::fs::metadata(dir.join("container.log.1")).unwrap().len() <= 10 << 20);

    // Output keeps being captured while no runtime (no ecsd) exists.
    let ticker = short_id("ticker");
    {
        let other = ContainerdRuntime::new(ContainerdOptions {
            address: socket(),
            namespace: namespace(),
            log_driver: PathBuf::from(env!("CARGO_BIN_EXE_ecsd")),
            exec_dir: env.dir.path().join("exec"),
        })
        .unwrap();
        other.prepare(&ticker, &env.image).await.unwrap();
        let args = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"];
        other.create(&ticker, &spec(&ticker, &args), &labels(&[]), &env.stdio(&ticker)).await.unwrap();
        other.start(&ticker).await.unwrap();
    }
    let dir = env.log_dir(&ticker);
    let before = eventually(10, "ticks", || async {
        let n = logs_of(&dir).lines().count();
        (n > 0).then_some(n)
    })
    .await;
    eventually(10, "more ticks", || async { (logs_of(&dir).lines().count() > before + 5).then_some(()) })
        .await;
    env.kill_and_remove(&ticker).await;
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn terminal_output_is_logged() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let id = short_id("tty");
    env.rt.prepare(&id, &env.image).await.unwrap();
    let mut spec = spec(&id, &["sh", "-c", "echo on; tty"]);
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    let stdio = Stdio { log_dir: env.log_dir(&id), terminal: true };
    env.rt.create(&id, &spec, &labels(&[]), &stdio).await.unwrap();
    env.rt.start(&id).await.unwrap();
    assert_eq!(env.wait_exit(&id).await.0, 0);
    env.rt.remove(&id).await.unwrap();
    let text = logs_of(&env.log_dir(&id));
    assert!(text.contains("on\r\n") && text.contains("/dev/pts/0"), "{text:?}");
}

/// Builds a `docker save` archive of the test image: configs and uncompressed layers by path.
fn docker_save_tar(out: &Path, repo_tag: &str) {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(image_tar()).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    let blob = |d: &str| files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(&blob(manifest["layers"][0]["digest"].as_str().unwrap())[..])
        .read_to_end(&mut layer)
        .unwrap();
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let docker_manifest = serde_json::json!([
        {"Config": config_name, "RepoTags": [repo_tag], "Layers": ["0123abcd/layer.tar"]}
    ]);
    let mut builder = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    add(&config_name, &blob(config_digest));
    add("0123abcd/layer.tar", &layer);
    add("0123abcd/VERSION", b"1.0");
    add("manifest.json", docker_manifest.to_string().as_bytes());
    builder.into_inner().unwrap().flush().unwrap();
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn docker_save_archives_import_and_run() {
    let _g = CONTAINERD.read().await;
    let mut env = Env::new().await;
    let tar = env.dir.path().join("docker-save.tar");
    docker_save_tar(&tar, "example.com/test/dsave:v1");
    let names = import(&socket(), &namespace(), &tar).await.unwrap();
    assert_eq!(names, vec!["example.com/test/dsave:v1"]);
    let image = env.rt.image("example.com/test/dsave:v1").await.unwrap();
    assert_eq!(image.config.cmd, Some(vec!["sh".to_owned()]));
    assert_eq!(image.config_digest, env.image.config_digest, "same config, other manifest");
    env.image = image;
    let id = short_id("dsave");
    env.run(&id, &["sh", "-c", "test -x /bin/busybox"], &labels(&[])).await;
    assert_eq!(env.wait_exit(&id).await.0, 0);
    env.rt.remove(&id).await.unwrap();

    let junk = env.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all, not even close; just some bytes to read").unwrap();
    assert!(import(&socket(), &namespace(), &junk).await.is_err());
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn embedded_containerd_starts_restarts_and_stops() {
    let _g = CONTAINERD.read().await;
    // A running containerd is used as it is.
    assert!(ensure(&socket(), Path::new("/nonexistent"), "ecs").await.unwrap().is_none());

    let data = tempfile::tempdir().unwrap();
    let nothing = data.path().join("nothing.sock");
    let embedded = ensure(&nothing, data.path(), "ecs").await.unwrap().expect("an embedded containerd");
    assert_eq!(embedded.address(), data.path().join("containerd/containerd.sock"));
    let rt = ContainerdRuntime::new(ContainerdOptions {
        address: embedded.address().to_owned(),
        namespace: "ecs".into(),
        log_driver: PathBuf::from(env!("CARGO_BIN_EXE_ecsd")),
        exec_dir: data.path().join("exec"),
    })
    .unwrap();
    assert!(rt.version().await.is_ok());
    let first = embedded.pid();
    assert_eq!(
        std::fs::read_to_string(data.path().join("containerd/containerd.pid")).unwrap().trim(),
        first.to_string()
    );

    // Killed, it comes back (after a 1 s backoff) and the same runtime reaches it again.
    let pid = rustix::process::Pid::from_raw(first as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if embedded.pid() != first && embedded.pid() != 0 && rt.version().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the embedded containerd did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = embedded.pid();
    embedded.shutdown().await;
    assert!(!Path::new(&format!("/proc/{second}/exe")).exists(), "containerd {second} still runs");
    assert!(matches!(rt.version().await, Err(RuntimeError::Unavailable { .. })));
}

/// Stops the private containerd of `ECSD_TEST_CONTAINERD` by its pid file and waits for it.
async fn stop_containerd(dir: &Path) {
    let pid: i32 = std::fs::read_to_string(dir.join("containerd.pid")).unwrap().trim().parse().unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    eventually(15, "containerd to exit", || async {
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).unwrap_or_default();
        // Gone, or a zombie waiting for a parent that is not us.
        (state.is_empty() || state.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .then_some(())
    })
    .await;
}

fn start_containerd(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/containerd");
    let out = std::process::Command::new(script).arg("start").arg(dir).output().unwrap();
    assert!(out.status.success(), "hack/containerd start: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn events_survive_a_containerd_restart() {
    let _g = CONTAINERD.write().await;
    let mut env = Env::new().await;
    let dir = socket().parent().unwrap().to_owned();
    let id = short_id("survivor");
    let pid = env.run(&id, &["sleep", "1000"], &labels(&[])).await;

    stop_containerd(&dir).await;
    let down = Instant::now();
    match env.rt.list().await {
        Err(RuntimeError::Unavailable { .. }) => {}
        other => panic!("want Unavailable while containerd is down, got {other:?}"),
    }
    assert!(down.elapsed() < Duration::from_secs(5), "a down containerd answers fast: {:?}", down.elapsed());
    // The container outlives containerd (its shim does); it exits while nobody listens.
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    eventually(20, "the container's process to end", || async {
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).unwrap_or_default();
        (state.is_empty() || state.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .then_some(())
    })
    .await;

    start_containerd(&dir);
    let back = Instant::now();
    wait_reconnected(&mut env.events).await;
    eprintln!("resubscribed {:?} after containerd came back", back.elapsed());
    env.rt.version().await.expect("calls work again");
    // What happened while the stream was down is in list().
    let state = eventually_async_list(&env, &id).await;
    assert!(matches!(state, ProcessStatus::Exited { code: 137, .. }), "{state:?}");
    env.rt.remove(&id).await.unwrap();

    // And new exits arrive on the same stream.
    let after = short_id("after");
    env.run(&after, &["sh", "-c", "exit 5"], &labels(&[])).await;
    assert_eq!(env.wait_exit(&after).await.0, 5);
    env.rt.remove(&after).await.unwrap();
}

async fn eventually_async_list(env: &Env, id: &str) -> ProcessStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = env.rt.list().await.unwrap().into_iter().find(|c| c.id == id).map(|c| c.status);
        if let Some(s @ ProcessStatus::Exited { .. }) = status {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} is {status:?}, not Exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
