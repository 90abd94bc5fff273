//! `ecsd serve --rootless` as a real unprivileged user: a user made for the test (random name,
//! its own subuid/subgid range and XDG_RUNTIME_DIR, removed afterwards with its files and
//! ranges even when the test fails) runs the built binary; the aws CLI of the venv drives it;
//! images come from the registry lab on 127.0.0.1. The user's ecsd runs its tasks on
//! containerd, or on its own Podman service with `ECSD_TEST_RUNTIME=podman` (hack/test's podman
//! tier).
//!
//! Root only (it creates a user): `#[ignore]`, run by the root tier of hack/test. It needs
//! rootlesskit, uidmap (newuidmap/newgidmap), setpriv, useradd/userdel and the venv's aws CLI.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::eventually;
use support::registry::LabRegistry;

/// The runtime the user's ecsd runs its tasks on: `ECSD_TEST_RUNTIME` (hack/test's podman tier
/// sets `podman`), else containerd.
fn runtime() -> String {
    match std::env::var("ECSD_TEST_RUNTIME").as_deref() {
        Err(_) | Ok("") | Ok("containerd") => "containerd".to_owned(),
        Ok("podman") => "podman".to_owned(),
        Ok(other) => panic!("ECSD_TEST_RUNTIME={other}: expected containerd or podman"),
    }
}

/// What a test user's ecsd sees as PATH.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

fn run(program: &str, args: &[&str]) -> String {
    let out =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throw-away user with a subordinate id range, a home and a runtime dir under a temporary
/// directory, and a copy of ecsd it can execute. Dropping it kills its processes (by pid),
/// deletes it, its ranges and its files.
struct TestUser {
    name: String,
    uid: u32,
    dir: PathBuf,
}

impl TestUser {
    fn create() -> TestUser {
        let mut raw = [0u8; 4];
        getrandom::fill(&mut raw).unwrap();
        let name = format!("ecsdrl{:08x}", u32::from_le_bytes(raw));
        // A range far above the usual 100000.. ones, different for each run.
        let start = 2_000_000 + u64::from(u32::from_le_bytes(raw) % 4096) * 65_536;
        let range = format!("{start}-{}", start + 65_535);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir(&dir).unwrap();
        // Others may traverse (not list) it, so the user reaches its home and the binary.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        let home = dir.join("home");
        // No automatic ranges (SUB_UID_COUNT=0): the test's own is the only one.
        run(
            "useradd",
            &[
                "-M",
                "-d",
                home.to_str().unwrap(),
                "-s",
                "/usr/sbin/nologin",
                "-K",
                "SUB_UID_COUNT=0",
                "-K",
                "SUB_GID_COUNT=0",
                &name,
            ],
        );
        let user = TestUser { uid: run("id", &["-u", &name]).trim().parse().unwrap(), name, dir };
        run("usermod", &["--add-subuids", &range, "--add-subgids", &range, &user.name]);
        for d in [user.home(), user.runtime_dir()] {
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
            run("chown", &[&user.name, d.to_str().unwrap()]);
        }
        std::fs::copy(env!("CARGO_BIN_EXE_ecsd"), user.binary()).unwrap();
        std::fs::set_permissions(user.binary(), std::fs::Permissions::from_mode(0o755)).unwrap();
        user
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn binary(&self) -> PathBuf {
        self.dir.join("ecsd")
    }

    fn data_dir(&self) -> PathBuf {
        self.home().join(".local/share/ecsd")
    }

    /// `args` run as the user (setpriv execs, so the pid is the program's own) with only
    /// HOME, PATH and `env` in its environment.
    fn command(&self, env: &[(&str, &Path)], args: &[&str]) -> Command {
        let uid = self.uid.to_string();
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "--"])
            .arg("env")
            .arg("-i")
            .arg(format!("HOME={}", self.home().display()))
            .arg(format!("PATH={PATH}"));
        for (k, v) in env {
            c.arg(format!("{k}={}", v.display()));
        }
        c.arg(self.binary()).args(args).current_dir(&self.dir);
        c
    }

    /// The pids of the user's processes, from /proc.
    fn processes(&self) -> Vec<i32> {
        let mut out = vec![];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let uid =
                status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
            // Zombies are gone as far as the user is concerned: their parent reaps them.
            let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
            if uid == Some(&self.uid.to_string()) && !zombie {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = Command::new("userdel").arg(&self.name).status();
        // userdel removes the subordinate ranges; a failed one must not leave them.
        for file in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = std::fs::read_to_string(file)
                && text.lines().any(|l| l.starts_with(&format!("{}:", self.name)))
            {
                let kept: String = text
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{}:", self.name)))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let _ = std::fs::write(file, kept);
            }
        }
        // Whatever the namespace mounted went with it; a leftover mount keeps its files.
        if !mounted_under(&self.dir) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether something in this (the host's) mount namespace is mounted under `dir`.
/// Held by the tests that depend on the mode of /dev/net/tun, which is one file for the host.
static TUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// /dev/net/tun at a mode for a test; the original mode is put back when it is dropped, also
/// when the test panics.
struct TunMode {
    original: u32,
}

impl TunMode {
    fn set(mode: u32) -> TunMode {
        let original = std::fs::metadata("/dev/net/tun").unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(mode)).unwrap();
        TunMode { original }
    }
}

impl Drop for TunMode {
    fn drop(&mut self) {
        let restored =
            std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.original));
        if let Err(e) = restored {
            eprintln!("cannot put /dev/net/tun back to {:o}: {e}", self.original);
        }
    }
}

fn mounted_under(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(dir)))
}

/// A rootless ecsd started by the test user; its stderr goes to `log`.
struct Rootless {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Rootless {
    fn start(user: &TestUser) -> Rootless {
        let log = user.dir.join("ecsd.log");
        let run = user.runtime_dir();
        let mut child = user
            .command(
                &[("XDG_RUNTIME_DIR", &run)],
                &[
                    "serve",
                    "--rootless",
                    "--runtime",
                    &runtime(),
                    "--listen",
                    "127.0.0.1:0",
                    "--introspection-listen",
                    "off",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("ecsd listening on ").unwrap_or_else(|| {
            panic!("ecsd did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        Rootless { url: url.to_owned(), child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// `aws ecs ARGS --output json` against this ecsd: the JSON, or the CLI's error text.
    fn ecs(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let aws = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws");
        let out = self
            .client(aws)
            .args(["ecs", "--endpoint-url", &self.url, "--output", "json"])
            .args(args)
            .output()
            .unwrap();
        match out.status.success() {
            true => Ok(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }

    /// `program`, an AWS client of this ecsd, with the test's credentials and region.
    fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        c
    }

    fn register(&self, family: &str, mode: &str, extra: &str, container: serde_json::Value) {
        let containers = serde_json::json!([container]).to_string();
        let mut args = vec![
            "register-task-definition",
            "--family",
            family,
            "--network-mode",
            mode,
            "--container-definitions",
        ];
        args.push(&containers);
        args.extend(extra.split_whitespace());
        self.ecs(&args).unwrap();
    }

    fn run_task(&self, family: &str) -> Result<String, String> {
        let out = self.ecs(&["run-task", "--task-definition", family])?;
        Ok(out["tasks"][0]["taskArn"].as_str().unwrap_or_else(|| panic!("no task: {out}")).to_owned())
    }

    /// RunTask of an awsvpc `family` on the default subnet, with ECS Exec enabled and `env`
    /// added to its container named `client` (when there is any).
    fn run_awsvpc(&self, family: &str, env: &[(&str, &str)]) -> Result<String, String> {
        let env: Vec<serde_json::Value> =
            env.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect();
        let overrides = serde_json::json!({"containerOverrides": [{"name": "client", "environment": env}]});
        let overrides = overrides.to_string();
        let mut args = vec![
            "run-task",
            "--task-definition",
            family,
            "--network-configuration",
            "awsvpcConfiguration={subnets=[subnet-default]}",
        ];
        if !env.is_empty() {
            args.extend(["--overrides", overrides.as_str()]);
        }
        args.push("--enable-execute-command");
        let out = self.ecs(&args)?;
        Ok(out["tasks"][0]["taskArn"].as_str().unwrap_or_else(|| panic!("no task: {out}")).to_owned())
    }

    async fn wait_status(&self, arn: &str, status: &str) -> serde_json::Value {
        eventually(60, &format!("{arn} {status}"), || async {
            let out = self.ecs(&["describe-tasks", "--tasks", arn]).unwrap();
            let task = out["tasks"][0].clone();
            (task["lastStatus"] == status).then_some(task)
        })
        .await
    }
}

/// An awsvpc client: its own metadata (v4), then `http://$TARGET/up` (10 tries of up to 3 s,
/// timed by `timeout`: busybox wget's `-T` crashes).
const CLIENT: &str = "for i in $(seq 10); do if timeout 3 wget -qO- $ECS_CONTAINER_METADATA_URI_V4/task; \
                      then break; fi; sleep 0.2; done; echo; \
                      for i in $(seq 10); do if timeout 3 wget -qO- http://$TARGET/up; then exit 0; fi; \
                      sleep 0.2; done; exit 1";

/// The container output of a task, read from the user's data dir by the same binary.
fn task_logs(user: &TestUser, arn: &str) -> String {
    run(
        user.binary().to_str().unwrap(),
        &["logs", "--data-dir", user.data_dir().to_str().unwrap(), arn.rsplit('/').next().unwrap()],
    )
}

/// Files of `uid` outside `/tmp` on the host's file systems that a user could write to.
fn files_outside_tmp(uid: u32) -> Vec<String> {
    let uid = uid.to_string();
    let mut found = vec![];
    for root in ["/", "/run", "/dev/shm", "/var/tmp"] {
        let out = Command::new("find")
            .args([root, "-xdev", "(", "-path", "/tmp", "-o", "-path", "/proc", "-o", "-path", "/work", ")"])
            .args(["-prune", "-o", "-user", &uid, "-print"])
            .output()
            .unwrap();
        found.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned));
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and containerd"]
async fn rootless_ecsd_runs_tasks_as_the_user_and_leaves_nothing_when_killed() {
    // As on Debian without udev: the user cannot open tun, so tasks get no way out.
    let _tun = TUN.lock().await;
    let _mode = TunMode::set(0o600);
    let user = TestUser::create();

    // What the user must fix is named before anything starts.
    let out = user.command(&[], &["serve", "--rootless"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("ecsd: XDG_RUNTIME_DIR is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doctor = user.command(&[("XDG_RUNTIME_DIR", &user.runtime_dir())], &["doctor"]).output().unwrap();
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.contains("ok      ecsd serve --rootless can start"), "{doctor}");

    let registry = LabRegistry::start("none");
    let image = registry.image("busybox");
    let ecsd = Rootless::start(&user);
    let pid = ecsd.child.id();
    let log = ecsd.log();
    assert!(
        log.contains(
            "rootless: ecsd, its container runtime and the tasks run in one rootlesskit user namespace"
        ),
        "{log}"
    );

    // A second rootless ecsd of the same user refuses before rootlesskit starts, and leaves
    // the running one's state alone (everything below still runs on the first).
    let second = user
        .command(
            &[("XDG_RUNTIME_DIR", &user.runtime_dir())],
            &["serve", "--rootless", "--listen", "127.0.0.1:0"],
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(said.starts_with("ecsd: another rootless ecsd of this user is running"), "{said}");
    assert!(user.runtime_dir().join("ecsd/rk/child_pid").exists(), "the first one's rootlesskit state");

    // networkMode none, with task cpu and memory: runs (unlimited, one warning), as the user.
    let script = "cat /proc/self/uid_map; echo; wget -qO- $ECS_CONTAINER_METADATA_URI_V4/task; echo; exit 3";
    ecsd.register(
        "none",
        "none",
        "--cpu 256 --memory 128",
        serde_json::json!({"name": "app", "image": image, "essential": true, "command": ["sh", "-c", script]}),
    );
    let arn = ecsd.run_task("none").unwrap();
    let id = arn.rsplit('/').next().unwrap().to_owned();
    let stopped = ecsd.wait_status(&arn, "STOPPED").await;
    assert_eq!(stopped["containers"][0]["exitCode"], 3, "{stopped}");
    // It was RUNNING on its way (too briefly to poll): ECS sets startedAt then.
    assert!(stopped["startedAt"].is_number(), "{stopped}");
    assert_eq!(stopped["stoppedReason"], "Essential container in task exited", "{stopped}");
    let output = task_logs(&user, &arn);
    let first: Vec<&str> = output.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(first, ["0", &user.uid.to_string(), "1"], "uid 0 inside is the user:\n{output}");
    assert!(output.contains(&format!("\"TaskARN\":\"{arn}\"")), "metadata answered inside:\n{output}");
    let warnings: Vec<String> = ecsd
        .log()
        .lines()
        .filter(|l| l.contains(&id) && l.contains("the task's cpu and memory limits are not applied"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("cgroup v1 gives an unprivileged user no cgroups"), "{}", warnings[0]);

    // The user's `ecsd image` finds this rootless ecsd's runtime (its containerd, or its Podman
    // service) by itself: an archive of two images imported, listed, run and removed. The
    // names point at a registry address where nothing listens, so the task's pull fails
    // and the imported image runs, as the default pull behaviour does with a present image.
    let archive = user.dir.join("images.tar");
    support::test_images_renamed(&archive, |n| n.replace("docker.io/library/", "127.0.0.1:9/imported/"));
    std::fs::set_permissions(&archive, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let image_cmd = |args: &[&str]| {
        let out = user.command(&[("XDG_RUNTIME_DIR", &user.runtime_dir())], args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "ecsd {args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let imported = image_cmd(&["image", "import", archive.to_str().unwrap()]);
    assert_eq!(
        imported,
        "127.0.0.1:9/imported/busybox:latest\n127.0.0.1:9/imported/busybox-stopsignal:latest\n"
    );
    let listed = image_cmd(&["image", "ls", "--output", "json"]);
    assert!(listed.contains("\"127.0.0.1:9/imported/busybox-stopsignal:latest\""), "{listed}");
    let stopsignal = "127.0.0.1:9/imported/busybox-stopsignal:latest";
    ecsd.register(
        "imported",
        "none",
        "",
        serde_json::json!({"name": "app", "image": stopsignal, "essential": true, "memory": 32,
            "command": ["sh", "-c", "exit 5"]}),
    );
    let arn = ecsd.run_task("imported").unwrap();
    let stopped = ecsd.wait_status(&arn, "STOPPED").await;
    assert_eq!(stopped["containers"][0]["exitCode"], 5, "{stopped}");
    assert_eq!(
        stopped["containers"][0]["imageDigest"],
        "sha256:635953b91bec0648d2047287aa31a2bd4bbc26dbfe807219be23fefd12b25445",
        "{stopped}"
    );
    assert_eq!(image_cmd(&["image", "rm", stopsignal]), format!("{stopsignal}\n"));
    let listed = image_cmd(&["image", "ls", "--output", "json"]);
    assert!(!listed.contains(stopsignal), "{listed}");
    assert!(listed.contains("127.0.0.1:9/imported/busybox:latest"), "{listed}");

    // A service keeps its desired count of tasks running, rootless as under root.
    ecsd.register(
        "svc",
        "none",
        "",
        serde_json::json!({"name": "app", "image": image, "essential": true, "memory": 32,
            "command": ["sleep", "3600"]}),
    );
    ecsd.ecs(&[
        "create-service",
        "--service-name",
        "svc",
        "--task-definition",
        "svc",
        "--desired-count",
        "2",
    ])
    .unwrap();
    let running = |want: usize| {
        let ecsd = &ecsd;
        async move {
            let out =
                ecsd.ecs(&["list-tasks", "--service-name", "svc", "--desired-status", "RUNNING"]).unwrap();
            let arns: Vec<String> = serde_json::from_value(out["taskArns"].clone()).unwrap_or_default();
            if arns.len() != want {
                return None;
            }
            if want == 0 {
                return Some(arns);
            }
            let mut args = vec!["describe-tasks", "--tasks"];
            args.extend(arns.iter().map(String::as_str));
            let tasks = ecsd.ecs(&args).unwrap();
            let all = tasks["tasks"].as_array()?.iter().all(|t| t["lastStatus"] == "RUNNING");
            all.then_some(arns)
        }
    };
    let first = eventually(60, "the service's 2 tasks RUNNING", || running(2)).await;
    // A task that stops is replaced.
    ecsd.ecs(&["stop-task", "--task", &first[0]]).unwrap();
    let next = eventually(60, "a replacement task RUNNING", || async {
        running(2).await.filter(|arns| !arns.contains(&first[0]))
    })
    .await;
    assert!(next.contains(&first[1]), "{next:?}");
    ecsd.ecs(&["delete-service", "--service", "svc", "--force"]).unwrap();
    eventually(60, "the service's tasks stopped", || running(0)).await;

    // Host ports: 80 is refused naming the sysctl; a high one is accepted and reachable.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for p in [80, port] {
        let serve = format!("echo up > /tmp/up; httpd -f -p 127.0.0.1:{p} -h /tmp");
        ecsd.register(
            &format!("host{p}"),
            "host",
            "",
            serde_json::json!({"name": "web", "image": image, "essential": true, "memory": 32,
                "portMappings": [{"containerPort": p, "hostPort": p}], "command": ["sh", "-c", serve]}),
        );
    }
    let refused = ecsd.run_task("host80").unwrap_err();
    assert!(
        refused.contains(
            "(InvalidParameterException) when calling the RunTask operation: hostPort 80 is below \
             net.ipv4.ip_unprivileged_port_start (1024) and ecsd runs rootless"
        ),
        "{refused}"
    );
    let web = ecsd.run_task(&format!("host{port}")).unwrap();
    ecsd.wait_status(&web, "RUNNING").await;
    let body = eventually(30, "the host-network task's server", || async move {
        let out = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/up")]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert_eq!(body, "up\n");

    // Task networks run in the uplink namespace inside the user's: two awsvpc tasks on the
    // default network reach each other by address, and the endpoints answer inside them.
    let serve = "echo up > /tmp/up; httpd -f -p 8080 -h /tmp";
    ecsd.register(
        "vpcweb",
        "awsvpc",
        "",
        serde_json::json!({"name": "web", "image": image, "memory": 32, "command": ["sh", "-c", serve],
            "healthCheck": {"command": ["CMD-SHELL", "wget -qO- http://127.0.0.1:8080/up"],
                            "interval": 5, "timeout": 5, "retries": 2}}),
    );
    ecsd.register(
        "vpcclient",
        "awsvpc",
        "",
        serde_json::json!({"name": "client", "image": image, "memory": 32, "command": ["sh", "-c", CLIENT]}),
    );
    let vpcweb = ecsd.run_awsvpc("vpcweb", &[]).unwrap();
    let t = ecsd.wait_status(&vpcweb, "RUNNING").await;
    let ip = t["attachments"][0]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "privateIPv4Address")
        .and_then(|d| d["value"].as_str())
        .unwrap_or_else(|| panic!("no address: {t}"))
        .to_owned();
    let client = |target: String| {
        let (ecsd, user) = (&ecsd, &user);
        async move {
            let arn = ecsd.run_awsvpc("vpcclient", &[("TARGET", &target)]).unwrap();
            let t = ecsd.wait_status(&arn, "STOPPED").await;
            (t["containers"][0]["exitCode"].clone(), task_logs(user, &arn), arn)
        }
    };
    // Health checks and ECS Exec go through the runtime's exec in the user namespace.
    eventually(60, "the web task HEALTHY", || async {
        let out = ecsd.ecs(&["describe-tasks", "--tasks", &vpcweb]).unwrap();
        (out["tasks"][0]["healthStatus"] == "HEALTHY").then_some(())
    })
    .await;
    let exec = |command: &str| {
        let out = ecsd
            .client(user.binary())
            .args(["exec", "--endpoint-url", &ecsd.url, "--task", &vpcweb, "--", "sh", "-c", command])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(exec("id -u; cat /tmp/up"), (Some(0), "0\nup\n".to_owned()));
    assert_eq!(exec("exit 7"), (Some(7), String::new()), "the command's exit code");
    let (code, said, arn) = client(format!("{ip}:8080")).await;
    assert_eq!(code, 0, "the client reaches the web task at {ip}:8080:\n{said}");
    assert!(said.contains(&format!("\"TaskARN\":\"{arn}\"")), "metadata answered inside:\n{said}");
    assert!(said.lines().any(|l| l == "up"), "{said}");
    // Negative control: the same client against a port nothing serves fails.
    let (code, said, _) = client(format!("{ip}:8081")).await;
    assert_eq!(code, 1, "nothing serves {ip}:8081:\n{said}");
    assert!(!said.lines().any(|l| l == "up"), "{said}");

    // The uplink namespace (where aardvark-dns runs) holds the network's bridge; the host's
    // namespace does not.
    let aardvark = user
        .processes()
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "aardvark-dns")
        })
        .expect("aardvark-dns runs for the default network");
    let uplink = std::fs::read_link(format!("/proc/{aardvark}/ns/net")).unwrap();
    let bridges = run(
        "nsenter",
        &[&format!("--net=/proc/{aardvark}/ns/net"), "ip", "-o", "link", "show", "type", "bridge"],
    );
    let bridge = bridges
        .lines()
        .next()
        .and_then(|l| l.split(": ").nth(1))
        .unwrap_or_else(|| panic!("no bridge in the uplink: {bridges}"))
        .to_owned();
    let host_links = run("ip", &["-o", "link", "show"]);
    assert!(
        !host_links.lines().any(|l| l.split(": ").nth(1) == Some(bridge.as_str())),
        "{bridge} in the host's namespace"
    );

    // A bridge-mode task's hostPort below the unprivileged start is refused before any bind;
    // a high one answers on the host's loopback (ecsd forwards it) until the task stops.
    let bport = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for p in [80, bport] {
        ecsd.register(
            &format!("bridge{p}"),
            "bridge",
            "",
            serde_json::json!({"name": "web", "image": image, "essential": true, "memory": 32,
                "portMappings": [{"containerPort": 8080, "hostPort": p}], "command": ["sh", "-c", serve]}),
        );
    }
    let refused = ecsd.run_task("bridge80").unwrap_err();
    assert!(refused.contains("hostPort 80 is below net.ipv4.ip_unprivileged_port_start"), "{refused}");
    let bridged = ecsd.run_task(&format!("bridge{bport}")).unwrap();
    ecsd.wait_status(&bridged, "RUNNING").await;
    let body = eventually(30, "the bridge task's published port", || async move {
        let out =
            Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{bport}/up")]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert_eq!(body, "up\n");
    ecsd.ecs(&["stop-task", "--task", &bridged]).unwrap();
    ecsd.wait_status(&bridged, "STOPPED").await;
    eventually(30, "the bridge task's port to close", || async move {
        let out =
            Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{bport}/up")]).output().ok()?;
        (!out.status.success()).then_some(())
    })
    .await;

    // SIGKILL of the process the user started ends everything in its namespace.
    let shims_before = user.processes().len();
    assert!(
        shims_before >= 4,
        "rootlesskit, ecsd, containerd or the Podman service, a shim or conmon, the task: {:?}",
        user.processes()
    );
    let log_path = ecsd.log.clone();
    let mut child = ecsd.child;
    run("kill", &["-KILL", &pid.to_string()]);
    let _ = child.wait();
    eventually(30, "none of the user's processes left", || async {
        user.processes().is_empty().then_some(())
    })
    .await;
    assert!(!mounted_under(&user.dir), "mounts left in the host's mount namespace");
    assert_eq!(files_outside_tmp(user.uid), Vec::<String>::new(), "files outside the user's dirs and /tmp");
    let gone = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/up")]).output().unwrap();
    assert!(!gone.status.success(), "the task's server still answers");
    // The uplink namespace and its bridge went with the user namespace: no process is in it
    // and the host's namespace never had the bridge.
    let in_uplink: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("ns/net")).is_ok_and(|n| n == uplink))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(in_uplink, Vec::<String>::new(), "processes in the uplink {}", uplink.display());
    let host_links = run("ip", &["-o", "link", "show"]);
    assert!(!host_links.lines().any(|l| l.split(": ").nth(1) == Some(bridge.as_str())), "{bridge} left");
    let log = std::fs::read_to_string(&log_path).unwrap();
    // /dev/net/tun is 0600 here: slirp4netns cannot be attached, which the first task network
    // says once, with the fix, however many tasks follow.
    let said = log.matches("tasks have no outbound connectivity").count();
    assert_eq!(said, 1, "the lack of outbound connectivity is said once:\n{log}");
    assert!(log.contains("chmod 0666 /dev/net/tun"), "the fix is named:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and containerd"]
async fn with_tun_usable_rootless_awsvpc_tasks_reach_the_outside() {
    let _tun = TUN.lock().await;
    let _mode = TunMode::set(0o666);
    let user = TestUser::create();
    let registry = LabRegistry::start("none");
    let image = registry.image("busybox");
    let outside = support::outside::Outside::start(200).await;
    let ecsd = Rootless::start(&user);
    let pid = ecsd.child.id();
    ecsd.register(
        "out",
        "awsvpc",
        "",
        serde_json::json!({"name": "client", "image": image, "essential": true, "memory": 32,
            "command": ["sh", "-c", CLIENT]}),
    );
    let target = outside.target();
    let arn = ecsd.run_awsvpc("out", &[("TARGET", target.as_str())]).unwrap();
    let stopped = ecsd.wait_status(&arn, "STOPPED").await;
    let output = task_logs(&user, &arn);
    assert_eq!(stopped["containers"][0]["exitCode"], 0, "{stopped}\n{output}");
    assert!(output.contains("hello, outside"), "{output}");
    // Negative control: the same task against a port nobody serves fails.
    let closed = outside.closed();
    let arn = ecsd.run_awsvpc("out", &[("TARGET", closed.as_str())]).unwrap();
    let stopped = ecsd.wait_status(&arn, "STOPPED").await;
    assert_eq!(stopped["containers"][0]["exitCode"], 1, "{stopped}");
    let log = ecsd.log();
    assert_eq!(log.matches("tasks have no outbound connectivity").count(), 0, "{log}");
    assert!(log.contains("through slirp4netns on ecsd's uplink namespace, and only"), "{log}");

    // SIGKILL: slirp4netns (a process of the user) goes with everything else.
    let mut child = ecsd.child;
    run("kill", &["-KILL", &pid.to_string()]);
    let _ = child.wait();
    eventually(30, "none of the user's processes left", || async {
        user.processes().is_empty().then_some(())
    })
    .await;
    drop(outside);
}
