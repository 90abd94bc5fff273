//! The harness of the tests that run ECS tasks on a real runtime through a whole in-process
//! ecsd: see tests/tasks_containerd.rs for what it sets up and checks.
//!
//! The runtime is containerd unless `ECSD_TEST_RUNTIME=podman`: then every [`Ecsd`] runs
//! `ecsd serve --runtime podman` with a Podman service and store of its own under its data dir
//! (the test images copied in with skopeo), and the checks of what a test left read that store
//! with the podman CLI and look for the store's conmon processes. Tests that are about
//! containerd itself skip themselves there with [`skip_on_podman`], by name.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{
    ContainerCondition, ContainerDefinition, ContainerDependency, DesiredStatus, HostVolumeProperties,
    MountPoint, Task, Volume, builders::ContainerDefinitionBuilder,
};
use ecsd::Daemon;
use ecsd::config::{Config, ServeArgs};
use tokio::sync::RwLock;

/// Held for reading by every test, for writing by the one that restarts containerd.
pub static CONTAINERD: RwLock<()> = RwLock::const_new(());

/// The images of `hack/build-test-image`.
pub use crate::support::podman::IMAGES;

/// The container runtime the root tests run their daemons on (`ECSD_TEST_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestRuntime {
    Containerd,
    Podman,
}

/// `ECSD_TEST_RUNTIME`: `containerd` (the default) or `podman`.
pub fn test_runtime() -> TestRuntime {
    match std::env::var("ECSD_TEST_RUNTIME").as_deref() {
        Err(_) | Ok("") | Ok("containerd") => TestRuntime::Containerd,
        Ok("podman") => TestRuntime::Podman,
        Ok(other) => panic!("ECSD_TEST_RUNTIME={other}: expected containerd or podman"),
    }
}

/// Whether the root tests run on Podman.
pub fn on_podman() -> bool {
    test_runtime() == TestRuntime::Podman
}

/// For a test that is about containerd itself: on Podman it names itself (`file::test`) and
/// `why` in the file `ECSD_TEST_SKIPPED` names, which hack/test counts as skipped, never as
/// passed, and returns true (the test returns at once). Without that file it panics: a skip
/// nobody counts would look like a pass.
pub fn skip_on_podman(test: &str, why: &str) -> bool {
    if !on_podman() {
        return false;
    }
    match std::env::var_os("ECSD_TEST_SKIPPED") {
        Some(file) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
            writeln!(f, "{test}: not on Podman ({why})").unwrap();
            true
        }
        None => panic!("{test} does not run on Podman ({why}); set ECSD_TEST_SKIPPED to count it as skipped"),
    }
}

/// A shell that idles until SIGTERM, then exits 0. A plain `sleep` as pid 1 ignores SIGTERM
/// (pid 1 gets no signal it has no handler for), so it would wait for SIGKILL.
pub const IDLE: &str = "trap 'exit 0' TERM; sleep 1000 & wait";
pub const SIGTERM: u32 = 15;
pub const SIGUSR1: u32 = 10;

/// Generous bound for a task to reach a status on a loaded 2-core machine.
pub const WAIT: u64 = 60;

pub use crate::support::{client, eventually, image_tar, init_tracing, socket};

/// Runs a command to completion and returns its stdout; panics (with stderr) when it fails.
pub async fn run_cmd(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn task_id(task_arn: &str) -> String {
    task_arn.rsplit('/').next().unwrap().to_owned()
}

pub fn arn_of(t: &Task) -> String {
    t.task_arn().unwrap().to_owned()
}

pub fn named<'a>(t: &'a Task, name: &str) -> &'a aws_sdk_ecs::types::Container {
    t.containers().iter().find(|c| c.name() == Some(name)).unwrap_or_else(|| panic!("no container {name}"))
}

pub fn secs(t: Option<&aws_smithy_types::DateTime>) -> f64 {
    t.expect("timestamp is set").as_secs_f64()
}

/// A busybox container running `sh -c script`, with the host's control directory at /ctl.
pub fn sh(name: &str, script: &str) -> ContainerDefinitionBuilder {
    ContainerDefinition::builder()
        .name(name)
        .image("busybox")
        .memory(32)
        .command("sh")
        .command("-c")
        .command(script)
        .mount_points(MountPoint::builder().source_volume("ctl").container_path("/ctl").build())
}

pub fn depends(on: &str, condition: ContainerCondition) -> ContainerDependency {
    ContainerDependency::builder().container_name(on).condition(condition).build().unwrap()
}

/// One ecsd on the test's containerd namespace, with its data dir and a host directory that
/// task definitions mount at /ctl (the test drops files there to tell containers to move on).
/// An `ecsd serve` process of [`Ecsd::spawn_binary`].
pub struct Spawned {
    pub child: std::process::Child,
    pub url: String,
}

impl Spawned {
    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next test network's index (`10.223.<n>.0/24`).
static NEXT_NETWORK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub struct Ecsd {
    pub runtime: TestRuntime,
    pub daemon: Option<Daemon>,
    pub client: Client,
    pub data: tempfile::TempDir,
    pub ctl: tempfile::TempDir,
    pub namespace: String,
    pub env: Vec<(String, String)>,
    pub network_index: u32,
}

impl Ecsd {
    pub async fn start(env: &[(&str, &str)]) -> Ecsd {
        Ecsd::start_with_networks(env, "").await
    }

    /// Starts an ecsd whose default network is its own (`10.223.<n>.0/24` on bridge
    /// `ecsdt<n>`), so tests running side by side never share addresses, plus the
    /// `[networks.NAME]` tables of `more_networks` (TOML, where `{n}` stands for `<n>`).
    pub async fn start_with_networks(env: &[(&str, &str)], more_networks: &str) -> Ecsd {
        init_tracing();
        // A bridge of that name on the host (another run's leftover) would share the subnet:
        // take the next free one, so this test checks only what it made itself.
        let n = loop {
            let n = NEXT_NETWORK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert!(n < 250, "out of test networks");
            if !Path::new(&format!("/sys/class/net/ecsdt{n}")).exists() {
                break n;
            }
            eprintln!("warning: bridge ecsdt{n} exists already (a leftover of another run); not using it");
        };
        let namespace = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let runtime = test_runtime();
        let data = tempfile::tempdir().unwrap();
        match runtime {
            TestRuntime::Containerd => {
                let names = ecsd::runtime::import::import(&socket(), &namespace, &image_tar())
                    .await
                    .unwrap_or_else(|e| panic!("import {} into {namespace}: {e}", image_tar().display()));
                assert_eq!(names, IMAGES, "the images of hack/build-test-image");
            }
            TestRuntime::Podman => {
                let dir = data.path().to_owned();
                tokio::task::spawn_blocking(move || crate::support::podman::load_test_images(&dir))
                    .await
                    .unwrap();
            }
        }
        let mut e = Ecsd {
            runtime,
            daemon: None,
            client: client("http://127.0.0.1:1"),
            data,
            ctl: tempfile::tempdir().unwrap(),
            namespace,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            network_index: n,
        };
        let config = e.data.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[networks.default]\nsubnet = \"10.223.{n}.0/24\"\nbridge = \"ecsdt{n}\"\n{}",
                more_networks.replace("{n}", &n.to_string())
            ),
        )
        .unwrap();
        e.env.push(("ECSD_CONFIG".into(), config.display().to_string()));
        // The imported test images are in no registry: a default-behaviour pull would go to
        // Docker Hub. Tests of pulls set the behaviour they test.
        if !e.env.iter().any(|(k, _)| k == "ECS_IMAGE_PULL_BEHAVIOR") {
            e.env.push(("ECS_IMAGE_PULL_BEHAVIOR".into(), "prefer-cached".into()));
        }
        e.up().await;
        e
    }

    /// Runs `ecsd serve` as a process of its own on this ecsd's data dir and configuration
    /// (the in-process daemon must be down), to be killed with SIGKILL.
    pub fn spawn_binary(&self) -> Spawned {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--namespace", &self.namespace])
            .arg("--data-dir")
            .arg(self.data.path());
        match self.runtime {
            TestRuntime::Containerd => cmd.arg("--containerd-address").arg(socket()),
            TestRuntime::Podman => cmd.args(["--runtime", "podman"]),
        };
        cmd
            // Daemons of tests run side by side: the introspection API on a free port.
            .env("ECSD_INTROSPECTION_LISTEN", "127.0.0.1:0")
            .env("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "true")
            .env("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "true")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Its log goes to the test's output: warnings only, unless the test asks for more.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn ecsd");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr =
            line.trim().strip_prefix("ecsd listening on ").unwrap_or_else(|| panic!("ecsd said {line:?}"));
        Spawned { child, url: addr.to_owned() }
    }

    /// The gateway of this ecsd's default network (the host's address on its bridge).
    pub fn gateway(&self) -> String {
        format!("10.223.{}.1", self.network_index)
    }

    pub fn config(&self) -> Config {
        let args = match self.runtime {
            TestRuntime::Containerd => ServeArgs {
                containerd_address: Some(socket()),
                namespace: Some(self.namespace.clone()),
                ..ServeArgs::default()
            },
            // ecsd starts its own Podman service on the data dir's store, as `ecsd serve
            // --runtime podman` does, and stops it at shutdown (containers keep running).
            TestRuntime::Podman => ServeArgs {
                runtime: Some(ecsd::config::RuntimeChoice::Podman),
                namespace: Some(self.namespace.clone()),
                ..ServeArgs::default()
            },
        };
        // The shim runs the log driver from the ecsd binary, not from this test binary.
        let mut vars: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.push(("ECSD_LOG_DRIVER", env!("CARGO_BIN_EXE_ecsd")));
        // ecs-init's host firewall rules (and route_localnet) only where a test asks for them.
        for flag in ["ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS"] {
            if !vars.iter().any(|(k, _)| *k == flag) {
                vars.push((flag, "true"));
            }
        }
        crate::support::config_with(args, self.data.path(), &vars)
    }

    /// Starts a daemon on the data dir (again, after [`Ecsd::down`]).
    pub async fn up(&mut self) {
        assert!(self.daemon.is_none());
        let daemon = ecsd::start(&self.config()).await.expect("ecsd starts");
        self.client = client(&format!("http://{}", daemon.addr()));
        self.daemon = Some(daemon);
    }

    /// Shuts the daemon down; containers keep running.
    pub async fn down(&mut self) {
        let daemon = self.daemon.take().expect("ecsd is running");
        daemon.shutdown().await.expect("clean shutdown");
    }

    pub fn ctl(&self, file: &str) -> PathBuf {
        self.ctl.path().join(file)
    }

    /// Creates /ctl/`file` for the containers to see.
    pub fn signal_file(&self, file: &str) {
        std::fs::write(self.ctl(file), b"").unwrap();
    }

    pub fn netns(&self, task_arn: &str) -> PathBuf {
        Path::new("/run/netns").join(self.netns_name(task_arn))
    }

    pub fn netns_name(&self, task_arn: &str) -> String {
        format!("ecsd-{}-{}", self.namespace, task_id(task_arn))
    }

    /// The namespace of a bridge-mode task's `i`-th container.
    pub fn container_netns_name(&self, task_arn: &str, i: usize) -> String {
        format!("{}-{i}", self.netns_name(task_arn))
    }

    pub fn container_netns(&self, task_arn: &str, i: usize) -> PathBuf {
        Path::new("/run/netns").join(self.container_netns_name(task_arn, i))
    }

    pub fn log_dir(&self, task_arn: &str, container: &str) -> PathBuf {
        self.data.path().join("tasks").join(task_id(task_arn)).join(container).join("logs")
    }

    /// What the container wrote to stdout and stderr so far.
    pub fn logs(&self, task_arn: &str, container: &str) -> String {
        let mut out = Vec::new();
        match ecsd::runtime::read_logs(&self.log_dir(task_arn, container), false, &mut out) {
            Ok(()) => String::from_utf8(out).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("read the logs of {container}: {e}"),
        }
    }

    pub async fn wait_log(&self, task_arn: &str, container: &str, want: &str) {
        eventually(WAIT, &format!("{container} to log {want:?}"), || async {
            self.logs(task_arn, container).contains(want).then_some(())
        })
        .await;
    }

    /// Waits until the main process of `container` handles `signal` (its shell trap is set):
    /// sent earlier, the signal would be ignored.
    pub async fn wait_trap(&self, task_arn: &str, container: &str, signal: u32) {
        let t = self.wait_container(task_arn, container, "RUNNING").await;
        let id = named(&t, container).runtime_id().unwrap().to_owned();
        let tasks = self.runtime_tasks().await;
        let pid = tasks.get(&id).unwrap_or_else(|| panic!("{id} is not in the runtime: {tasks:?}")).0;
        eventually(WAIT, &format!("{container} to trap signal {signal}"), || async {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?.trim();
            let mask = u64::from_str_radix(caught, 16).ok()?;
            (mask & (1 << (signal - 1)) != 0).then_some(())
        })
        .await;
    }

    /// `ctr` with this ecsd's socket and namespace; `Err(stderr)` when it fails.
    pub async fn try_ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(socket())
            .args(["--namespace", &self.namespace])
            .args(args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub async fn ctr(&self, args: &[&str]) -> String {
        let socket = socket();
        let mut all = vec!["--address", socket.to_str().unwrap(), "--namespace", &self.namespace];
        all.extend_from_slice(args);
        run_cmd("ctr", &all).await
    }

    /// The runtime's processes of this ecsd's containers: runtime id → (pid, status), the
    /// status as containerd says it (`CREATED`, `RUNNING`, `STOPPED`, `PAUSED`). containerd:
    /// the tasks of the namespace; Podman: the containers of the store (pid 0 unless running).
    pub async fn runtime_tasks(&self) -> BTreeMap<String, (u32, String)> {
        match self.runtime {
            TestRuntime::Containerd => self
                .ctr(&["tasks", "ls"])
                .await
                .lines()
                .skip(1)
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f[0].to_owned(), (f[1].parse().unwrap(), f[2].to_owned()))
                })
                .collect(),
            TestRuntime::Podman => self
                .podman_ps()
                .await
                .into_iter()
                .map(|c| {
                    let status = match c.state.as_str() {
                        "running" => "RUNNING",
                        "exited" | "stopped" => "STOPPED",
                        "paused" => "PAUSED",
                        _ => "CREATED",
                    };
                    (c.name, (c.pid, status.to_owned()))
                })
                .collect(),
        }
    }

    /// The runtime's containers of this ecsd, by runtime id.
    pub async fn runtime_containers(&self) -> BTreeSet<String> {
        match self.runtime {
            TestRuntime::Containerd => {
                self.ctr(&["containers", "ls", "-q"]).await.lines().map(str::to_owned).collect()
            }
            TestRuntime::Podman => self.podman_ps().await.into_iter().map(|c| c.name).collect(),
        }
    }

    /// `podman ps --all` of this ecsd's store.
    pub async fn podman_ps(&self) -> Vec<crate::support::podman::Listed> {
        let dir = self.data.path().to_owned();
        tokio::task::spawn_blocking(move || crate::support::podman::ps(&dir)).await.unwrap()
    }

    /// The labels and the environment container `runtime_id` was created with (containerd's
    /// copy of its spec, or Podman's inspect).
    pub async fn container_config(&self, runtime_id: &str) -> ContainerConfig {
        let pairs = |v: &serde_json::Value| -> BTreeMap<String, String> {
            v.as_array()
                .unwrap_or_else(|| panic!("no environment in {v}"))
                .iter()
                .filter_map(|v| v.as_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect()
        };
        let strings = |v: &serde_json::Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                })
                .unwrap_or_default()
        };
        match self.runtime {
            TestRuntime::Containerd => {
                let info: serde_json::Value =
                    serde_json::from_str(&self.ctr(&["containers", "info", runtime_id]).await).unwrap();
                ContainerConfig {
                    labels: strings(&info["Labels"]),
                    env: pairs(&info["Spec"]["process"]["env"]),
                }
            }
            TestRuntime::Podman => {
                let (dir, id) = (self.data.path().to_owned(), runtime_id.to_owned());
                let info = tokio::task::spawn_blocking(move || crate::support::podman::inspect(&dir, &id))
                    .await
                    .unwrap();
                ContainerConfig {
                    labels: strings(&info["Config"]["Labels"]),
                    env: pairs(&info["Config"]["Env"]),
                }
            }
        }
    }

    /// SIGKILLs the main process of container `runtime_id` if it runs (through no runtime:
    /// the test plays a process that dies).
    pub async fn kill_container(&self, runtime_id: &str) {
        if let Some((pid, status)) = self.runtime_tasks().await.get(runtime_id)
            && status == "RUNNING"
            && let Some(pid) = i32::try_from(*pid).ok().and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    /// The processes exec'd into container `runtime_id`: those in its pid namespace, other
    /// than its main process, whose parent is outside it (the shim or conmon that runs them).
    pub async fn exec_pids(&self, runtime_id: &str) -> Vec<u32> {
        let Some((main, _)) = self.runtime_tasks().await.get(runtime_id).cloned() else { return vec![] };
        if main == 0 {
            return vec![];
        }
        let pidns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        let Some(ns) = pidns(main) else { return vec![] };
        let ppid = |pid: u32| -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
        };
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != main && pidns(pid).as_ref() == Some(&ns))
            .filter(|&pid| ppid(pid).is_some_and(|p| pidns(p).as_ref() != Some(&ns)))
            .collect()
    }

    /// The host volume `ctl` that [`sh`] containers mount at /ctl.
    pub fn ctl_volume(&self) -> Volume {
        Volume::builder()
            .name("ctl")
            .host(HostVolumeProperties::builder().source_path(self.ctl.path().to_str().unwrap()).build())
            .build()
    }

    pub async fn register(&self, family: &str, containers: Vec<ContainerDefinition>) {
        self.register_mode(family, "bridge", containers).await
    }

    pub async fn register_mode(&self, family: &str, mode: &str, containers: Vec<ContainerDefinition>) {
        self.client
            .register_task_definition()
            .family(family)
            .network_mode(aws_sdk_ecs::types::NetworkMode::from(mode))
            .set_container_definitions(Some(containers))
            .volumes(
                Volume::builder()
                    .name("ctl")
                    .host(
                        HostVolumeProperties::builder()
                            .source_path(self.ctl.path().to_str().unwrap())
                            .build(),
                    )
                    .build(),
            )
            .volumes(Volume::builder().name("shared").build())
            .send()
            .await
            .unwrap();
    }

    pub async fn run(&self, family: &str) -> Task {
        let out = self.client.run_task().task_definition(family).send().await.unwrap();
        assert_eq!(out.failures(), &[], "RunTask failures");
        assert_eq!(out.tasks().len(), 1);
        let t = out.tasks()[0].clone();
        assert_eq!(t.last_status(), Some("PROVISIONING"));
        assert_eq!(t.desired_status(), Some("RUNNING"));
        t
    }

    /// Runs an awsvpc task on the network `subnet` names.
    pub async fn run_awsvpc(&self, family: &str, subnet: &str) -> Task {
        let nc = aws_sdk_ecs::types::NetworkConfiguration::builder()
            .awsvpc_configuration(
                aws_sdk_ecs::types::AwsVpcConfiguration::builder().subnets(subnet).build().unwrap(),
            )
            .build();
        let out =
            self.client.run_task().task_definition(family).network_configuration(nc).send().await.unwrap();
        assert_eq!(out.failures(), &[], "RunTask failures");
        out.tasks()[0].clone()
    }

    pub async fn describe(&self, task_arn: &str) -> Task {
        let out = self.client.describe_tasks().tasks(task_arn).send().await.unwrap();
        assert_eq!(out.failures(), &[], "DescribeTasks failures");
        out.tasks()[0].clone()
    }

    pub async fn wait_status(&self, task_arn: &str, status: &str) -> Task {
        self.wait_status_for(task_arn, status, WAIT).await
    }

    pub async fn wait_status_for(&self, task_arn: &str, status: &str, secs: u64) -> Task {
        eventually(secs, &format!("task {} to be {status}", task_id(task_arn)), || async {
            let t = self.describe(task_arn).await;
            (t.last_status() == Some(status)).then_some(t)
        })
        .await
    }

    pub async fn wait_container(&self, task_arn: &str, container: &str, status: &str) -> Task {
        eventually(WAIT, &format!("container {container} to be {status}"), || async {
            let t = self.describe(task_arn).await;
            (named(&t, container).last_status() == Some(status)).then_some(t)
        })
        .await
    }

    pub async fn stop(&self, task_arn: &str, reason: &str) -> Task {
        let out = self.client.stop_task().task(task_arn).reason(reason).send().await.unwrap();
        let t = out.task().unwrap().clone();
        assert_eq!(t.desired_status(), Some("STOPPED"));
        assert_eq!(t.stopped_reason(), Some(reason));
        t
    }

    /// The task namespaces of this ecsd under /run/netns.
    pub fn netns_left(&self) -> Vec<String> {
        let prefix = format!("ecsd-{}-", self.namespace);
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sandboxes whose addresses the network still holds (its state files).
    pub fn sandboxes_left(&self) -> Vec<String> {
        std::fs::read_dir(self.data.path().join("network"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every task that is still up, then checks that nothing outlived its task: no
    /// containerd container or task, no active snapshot, no network namespace. Shuts down.
    pub async fn finish(mut self) {
        let live = self.client.list_tasks().desired_status(DesiredStatus::Running).send().await.unwrap();
        for arn in live.task_arns() {
            self.stop(arn, "test cleanup").await;
        }
        let all = self.client.list_tasks().desired_status(DesiredStatus::Stopped).send().await.unwrap();
        for arn in all.task_arns() {
            self.wait_status(arn, "STOPPED").await;
        }
        match self.runtime {
            TestRuntime::Containerd => {
                assert_eq!(self.runtime_tasks().await, BTreeMap::new(), "containerd tasks left");
                assert_eq!(self.runtime_containers().await, BTreeSet::new(), "containerd containers left");
                let active: Vec<String> = self
                    .ctr(&["snapshots", "ls"])
                    .await
                    .lines()
                    .skip(1)
                    .filter(|l| l.split_whitespace().last() == Some("Active"))
                    .map(str::to_owned)
                    .collect();
                assert_eq!(active, Vec::<String>::new(), "active snapshots left");
            }
            TestRuntime::Podman => {
                assert_eq!(self.podman_ps().await, vec![], "Podman containers left");
                // An exec session's conmon ends a few seconds after its process
                // (containers.conf exit_command_delay); a container's ends with it.
                let dir = self.data.path().to_owned();
                let left = tokio::time::timeout(std::time::Duration::from_secs(WAIT), async {
                    loop {
                        let left = crate::support::podman::conmons(&dir);
                        if left.is_empty() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                })
                .await;
                assert!(left.is_ok(), "conmon processes left: {:?}", crate::support::podman::conmons(&dir));
            }
        }
        assert_eq!(self.netns_left(), Vec::<String>::new(), "network namespaces left");
        assert_eq!(self.sandboxes_left(), Vec::<String>::new(), "addresses still held (network state files)");
        let bridge = format!("/sys/class/net/ecsdt{}", self.network_index);
        assert!(!Path::new(&bridge).exists(), "{bridge} outlived the last task on it");
        self.down().await;
    }
}

impl Drop for Ecsd {
    /// After a failed test: removes what it left in containerd and /run/netns (best effort;
    /// a passing test has removed everything already, [`Ecsd::finish`] checks it). Then the
    /// namespace and its images go, so the private containerd stays small.
    fn drop(&mut self) {
        if self.runtime == TestRuntime::Podman {
            // ecsd's Podman service (an in-process daemon's stops with it, for good; a killed
            // `ecsd serve`'s is left running), every container, and the store's mounts.
            drop(self.daemon.take());
            let pid = std::fs::read_to_string(self.data.path().join("podman/podman.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            crate::support::podman::clean_store(self.data.path(), pid);
        }
        let on_containerd = self.runtime == TestRuntime::Containerd;
        let ctr = |args: &[&str]| -> String {
            if !on_containerd {
                return String::new();
            }
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(socket())
                .arg("--namespace")
                .arg(&self.namespace)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        // Host firewall rules a failed test's daemon left (a passing one removed them).
        let tag = format!("ecsd:{}", self.namespace);
        for program in ["iptables", "ip6tables"] {
            let listing = std::process::Command::new(program)
                .args(["-w", "30", "-S", "INPUT"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for rule in ecsd::network::firewall::tagged_rules(&listing, &tag) {
                let _ = std::process::Command::new(program)
                    .args(["-w", "30", "-D", "INPUT"])
                    .args(&rule)
                    .output();
            }
        }
        for id in ctr(&["tasks", "ls", "-q"]).lines() {
            ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        for id in ctr(&["tasks", "ls", "-q"]).lines() {
            ctr(&["tasks", "rm", "--force", id]);
        }
        for id in ctr(&["containers", "ls", "-q"]).lines() {
            ctr(&["containers", "rm", id]);
        }
        // The task networks go through netavark, so their firewall rules go too.
        let config = self.config();
        let dir = self.data.path().join("network");
        let prefix = format!("ecsd-{}-", self.namespace);
        let _ = std::thread::spawn(move || {
            use ecsd::network::Network;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let namespaces = ecsd::network::Namespaces::new(&prefix);
                if let Ok(net) = ecsd::network::Netavark::new(config.network, namespaces, &dir) {
                    for id in net.list().await.unwrap_or_default() {
                        let _ = net.remove(&id).await;
                    }
                }
            })
        })
        .join();
        for name in self.netns_left() {
            let _ = std::process::Command::new("ip").args(["netns", "delete", &name]).output();
        }
        // The test images, and whatever a test pulled.
        for image in ctr(&["images", "ls", "-q"]).lines() {
            ctr(&["images", "rm", "--sync", image]);
        }
        if on_containerd {
            let _ = std::process::Command::new("ctr")
                .arg("--address")
                .arg(socket())
                .args(["namespaces", "rm", &self.namespace])
                .output();
        }
    }
}

/// What a container was created with.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// Runs `argv` inside the network namespace `netns` (`ip netns exec`) with exactly `env`;
/// returns (exit status, stdout, stderr).
pub async fn in_netns(netns: &str, env: &[(String, String)], argv: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
