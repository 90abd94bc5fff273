//! ECS tasks on a real containerd, end to end through the API.
//!
//! Each test starts the whole daemon in-process with [`ecsd::start`] (the containerd runtime
//! and real network namespaces, not the fakes of `tests/api`) on `127.0.0.1:0`, with its own
//! data dir and its own containerd namespace `t-<random>` (so its task namespaces are
//! `/run/netns/ecsd-t-<random>-<task id>`), imports the test image into that namespace, and
//! drives ecsd with aws-sdk-ecs. Every test ends with [`Ecsd::finish`], which stops what is
//! left and asserts that no container, snapshot or network namespace outlived its task.
//!
//! Like `tests/runtime.rs`, the tests need root, a private containerd (`hack/containerd start
//! DIR`) at `ECSD_TEST_CONTAINERD=DIR/containerd.sock` and the image tarball of
//! `hack/build-test-image` at `ECSD_TEST_IMAGE`; hack/test sets both up for the root tier.
//! The lock is the one of `tests/runtime.rs`: every test holds [`CONTAINERD`] for reading and
//! the test that restarts containerd holds it for writing. (cargo runs test binaries one
//! after the other, so the two files never share the containerd at the same moment.)

mod harness;
mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{
    ContainerCondition, ContainerDefinition, ContainerOverride, DesiredStatus, HealthCheck, KeyValuePair,
    MountPoint, Task, TaskOverride,
};
use harness::*;

/// Polls the task every 5 ms until it is `until`, and returns it with every status seen on
/// the way (in order, without repeats).
async fn watch(e: &Ecsd, task_arn: &str, seen: &mut Vec<String>, until: &str) -> Task {
    let deadline = Instant::now() + Duration::from_secs(WAIT);
    loop {
        let t = e.describe(task_arn).await;
        let status = t.last_status().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == until {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT}s waiting for {until}; saw {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const LIFECYCLE: [&str; 8] = [
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
];

fn assert_in_lifecycle_order(seen: &[String]) {
    let rank =
        |s: &String| LIFECYCLE.iter().position(|l| l == s).unwrap_or_else(|| panic!("unknown status {s}"));
    assert!(seen.windows(2).all(|w| rank(&w[0]) < rank(&w[1])), "statuses went backwards: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_task_walks_the_lifecycle_on_containerd() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    e.register(
        "lifecycle",
        vec![sh("app", "echo hi; until [ -e /ctl/go ]; do sleep 0.05; done; exit 3").build()],
    )
    .await;
    let t = e.run("lifecycle").await;
    let arn = arn_of(&t);
    let mut seen = vec!["PROVISIONING".to_owned()];
    let running = watch(&e, &arn, &mut seen, "RUNNING").await;
    let app = named(&running, "app");
    assert_eq!(app.last_status(), Some("RUNNING"));
    assert_eq!(app.exit_code(), None);
    let runtime_id = app.runtime_id().unwrap().to_owned();
    assert_eq!(runtime_id, named(&t, "app").runtime_id().unwrap(), "runtimeId is fixed at RunTask");

    // The runtime id is a container of the runtime with a running process, labelled with
    // the task.
    let tasks = e.runtime_tasks().await;
    let (pid, status) = tasks.get(&runtime_id).unwrap_or_else(|| panic!("{runtime_id} not in {tasks:?}"));
    assert_eq!(status, "RUNNING");
    let labels = e.container_config(&runtime_id).await.labels;
    assert_eq!(labels["com.amazonaws.ecs.task-arn"], arn.as_str());
    assert_eq!(labels["com.amazonaws.ecs.container-name"], "app");
    assert_eq!(labels["com.amazonaws.ecs.cluster"], "default");

    // In bridge mode the container has a network namespace of its own, with loopback up and
    // an interface on the bridge, and it runs in it.
    let netns = e.container_netns(&arn, 0);
    assert!(netns.exists(), "{} exists while RUNNING", netns.display());
    let lo = run_cmd("ip", &["-n", &e.container_netns_name(&arn, 0), "addr", "show"]).await;
    assert!(lo.contains("<LOOPBACK,UP,LOWER_UP>"), "lo is up: {lo}");
    assert!(lo.contains(&format!("inet 10.223.{}.", e.network_index)), "eth0 on the bridge: {lo}");
    assert!(lo.contains("inet 169.254.170.2/32"), "the endpoints' address is on lo: {lo}");
    // The container's memory cgroup is one of the task's: containerd's is named after the
    // runtime id, Podman's is its own container id's under that.
    let cgroup = PathBuf::from(format!("/sys/fs/cgroup/memory/ecs/{}", task_id(&arn)));
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = own.lines().find_map(|l| l.split_once(":memory:")).map(|(_, p)| p.to_owned()).unwrap();
    let want = match e.runtime {
        TestRuntime::Containerd => format!("/ecs/{}/{runtime_id}", task_id(&arn)),
        TestRuntime::Podman => format!("/ecs/{}/{runtime_id}/libpod-", task_id(&arn)),
    };
    assert!(own.starts_with(&want), "the container's memory cgroup {own} is {want}…");
    assert!(Path::new("/sys/fs/cgroup/memory").join(&own[1..]).is_dir(), "{own} exists");
    let container_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let netns_ino = std::fs::metadata(&netns).unwrap().ino();
    assert_eq!(container_net, PathBuf::from(format!("net:[{netns_ino}]")), "the container runs in its netns");

    e.wait_log(&arn, "app", "hi\n").await;
    e.signal_file("go");
    let stopped = watch(&e, &arn, &mut seen, "STOPPED").await;
    eprintln!("statuses seen: {seen:?}");
    assert_in_lifecycle_order(&seen);
    for s in ["PROVISIONING", "RUNNING", "STOPPED"] {
        assert!(seen.iter().any(|x| x == s), "{s} was seen: {seen:?}");
    }
    assert_eq!(stopped.desired_status(), Some("STOPPED"));
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    assert_eq!(stopped.stopped_reason(), Some("Essential container in task exited"));
    let app = named(&stopped, "app");
    assert_eq!((app.last_status(), app.exit_code(), app.reason()), (Some("STOPPED"), Some(3), None));
    // The image was imported and the root tests run with prefer-cached: nothing was pulled, so
    // like the agent with a cached image there are no pull timestamps (a pull's are checked in
    // tests/images_containerd.rs).
    assert_eq!((stopped.pull_started_at(), stopped.pull_stopped_at()), (None, None));
    // The exit (executionStoppedAt) may come a moment before the supervisor turns to STOPPING.
    let at = |name: &str| {
        secs(match name {
            "createdAt" => stopped.created_at(),
            "connectivityAt" => stopped.connectivity_at(),
            "startedAt" => stopped.started_at(),
            "stoppingAt" => stopped.stopping_at(),
            "executionStoppedAt" => stopped.execution_stopped_at(),
            _ => stopped.stopped_at(),
        })
    };
    for (a, b) in [
        ("createdAt", "startedAt"),
        ("connectivityAt", "startedAt"),
        ("startedAt", "stoppingAt"),
        ("startedAt", "executionStoppedAt"),
        ("stoppingAt", "stoppedAt"),
        ("executionStoppedAt", "stoppedAt"),
    ] {
        assert!(at(a) <= at(b), "{a} {} <= {b} {}", at(a), at(b));
    }

    // Everything the task held is gone; its logs stay readable with `ecsd logs`.
    assert!(!netns.exists(), "{} is gone after STOPPED", netns.display());
    assert!(!e.runtime_containers().await.contains(&runtime_id), "the runtime's container is removed");
    assert!(!cgroup.exists(), "{} is removed", cgroup.display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["logs", &task_id(&arn), "app", "--data-dir"])
        .arg(e.data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "ecsd logs: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn overrides_reach_the_process_and_user_app_gets_its_groups() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let mode = sh("app", "echo definition:$MODE")
        .environment(KeyValuePair::builder().name("MODE").value("slow").build())
        .environment(KeyValuePair::builder().name("KEPT").value("kept").build());
    e.register("mode", vec![mode.build()]).await;
    let user =
        ContainerDefinition::builder().name("who").image("busybox").memory(32).user("app").command("id");
    e.register("user", vec![user.build()]).await;

    let overrides = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name("app")
                .command("sh")
                .command("-c")
                .command("echo override:$MODE:$KEPT:$EXTRA")
                .environment(KeyValuePair::builder().name("MODE").value("fast").build())
                .environment(KeyValuePair::builder().name("EXTRA").value("x").build())
                .build(),
        )
        .build();
    let out = e.client.run_task().task_definition("mode").overrides(overrides).send().await.unwrap();
    let overridden = arn_of(&out.tasks()[0]);
    let plain = arn_of(&e.run("mode").await);
    let who = arn_of(&e.run("user").await);

    for (arn, container, want) in [
        (&overridden, "app", "override:fast:kept:x\n"),
        (&plain, "app", "definition:slow\n"),
        (&who, "who", "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)\n"),
    ] {
        let t = e.wait_status(arn, "STOPPED").await;
        assert_eq!(t.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
        assert_eq!(named(&t, container).exit_code(), Some(0), "{container} of {arn}");
        assert_eq!(e.logs(arn, container), want);
    }
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn stop_task_sends_the_stop_signal_then_sigkill_after_stop_timeout() {
    let _g = CONTAINERD.read().await;
    // The host's default stop timeout, for containers without their own stopTimeout.
    let e = Ecsd::start(&[("ECS_CONTAINER_STOP_TIMEOUT", "3s")]).await;
    // Handles SIGTERM: exits 143 at once.
    e.register("polite", vec![sh("app", "trap 'exit 143' TERM; sleep 1000 & wait").build()]).await;
    // Ignores SIGTERM (pid 1 without a handler): SIGKILL after the task definition's 2 s.
    e.register("stubborn", vec![sh("app", "exec sleep 1000").stop_timeout(2).build()]).await;
    // The same without a stopTimeout: SIGKILL after ECS_CONTAINER_STOP_TIMEOUT.
    e.register("stubborn-default", vec![sh("app", "exec sleep 1000").build()]).await;
    // The image's StopSignal is SIGUSR1, and that is what arrives first.
    let usr1 = sh(
        "app",
        "trap 'echo got USR1; exit 10' USR1; trap 'echo got TERM; exit 143' TERM; sleep 1000 & wait",
    )
    .image("busybox-stopsignal");
    e.register("stopsignal", vec![usr1.build()]).await;

    let arns: Vec<String> = vec![
        arn_of(&e.run("polite").await),
        arn_of(&e.run("stubborn").await),
        arn_of(&e.run("stopsignal").await),
        arn_of(&e.run("stubborn-default").await),
    ];
    for arn in &arns {
        e.wait_status(arn, "RUNNING").await;
    }
    e.wait_trap(&arns[0], "app", SIGTERM).await;
    e.wait_trap(&arns[2], "app", SIGUSR1).await;
    for arn in &arns {
        e.stop(arn, "test says stop").await;
    }
    let mut stopped = vec![];
    for arn in &arns {
        let t = e.wait_status(arn, "STOPPED").await;
        assert_eq!(t.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
        assert_eq!(t.stopped_reason(), Some("test says stop"));
        stopped.push(t);
    }
    let took = |t: &Task| secs(t.execution_stopped_at()) - secs(t.stopping_at());

    assert_eq!(named(&stopped[0], "app").exit_code(), Some(143));
    assert!(took(&stopped[0]) < 1.5, "SIGTERM was enough: {:.2}s", took(&stopped[0]));

    assert_eq!(named(&stopped[1], "app").exit_code(), Some(137));
    assert!(
        (1.9..4.0).contains(&took(&stopped[1])),
        "SIGKILL after stopTimeout 2s: {:.2}s",
        took(&stopped[1])
    );

    assert_eq!(named(&stopped[2], "app").exit_code(), Some(10));
    assert_eq!(e.logs(&arns[2], "app"), "got USR1\n");

    assert_eq!(named(&stopped[3], "app").exit_code(), Some(137));
    assert!(
        (2.9..5.0).contains(&took(&stopped[3])),
        "SIGKILL after ECS_CONTAINER_STOP_TIMEOUT 3s: {:.2}s",
        took(&stopped[3])
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn depends_on_gates_start_and_stop_runs_in_reverse_order() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let shared = || MountPoint::builder().source_volume("shared").container_path("/shared").build();
    let init = sh("init", "until [ -e /ctl/go ]; do sleep 0.05; done; echo init > /shared/x")
        .essential(false)
        .mount_points(shared());
    let db = sh("db", "trap 'echo db >> /ctl/order; exit 0' TERM; sleep 1000 & wait");
    // app's trap takes a second, so a db stopped at the same time would write first.
    let app =
        sh("app", "cat /shared/x; trap 'sleep 1; echo app >> /ctl/order; exit 0' TERM; sleep 1000 & wait")
            .mount_points(shared())
            .depends_on(depends("init", ContainerCondition::Success))
            .depends_on(depends("db", ContainerCondition::Start));
    e.register("deps", vec![init.build(), db.build(), app.build()]).await;
    let arn = arn_of(&e.run("deps").await);

    // init runs until told; app waits for it, so the task stays PENDING.
    let t = e.wait_container(&arn, "db", "RUNNING").await;
    let t = if named(&t, "init").last_status() == Some("RUNNING") {
        t
    } else {
        e.wait_container(&arn, "init", "RUNNING").await
    };
    assert_eq!(t.last_status(), Some("PENDING"));
    assert_eq!(named(&t, "app").last_status(), Some("PENDING"));
    e.signal_file("go");

    let t = e.wait_status(&arn, "RUNNING").await;
    let init = named(&t, "init");
    assert_eq!((init.last_status(), init.exit_code()), (Some("STOPPED"), Some(0)));
    assert_eq!(named(&t, "app").last_status(), Some("RUNNING"));
    e.wait_trap(&arn, "app", SIGTERM).await;
    e.wait_trap(&arn, "db", SIGTERM).await;
    e.wait_log(&arn, "app", "init\n").await;
    assert_eq!(e.logs(&arn, "app"), "init\n", "app read what init wrote");

    e.stop(&arn, "reverse order").await;
    let t = e.wait_status(&arn, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0));
    assert_eq!(named(&t, "db").exit_code(), Some(0));
    assert_eq!(std::fs::read_to_string(e.ctl("order")).unwrap(), "app\ndb\n", "dependents stop first");
    assert!(
        !e.data.path().join("tasks").join(task_id(&arn)).join("volumes").exists(),
        "task volumes removed"
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn health_checks_mark_containers_and_gate_healthy_dependencies() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let check = || {
        HealthCheck::builder()
            .command("CMD-SHELL")
            .command("test -f /tmp/ok")
            .interval(5)
            .retries(1)
            .build()
            .unwrap()
    };
    e.register("sick", vec![sh("app", IDLE).health_check(check()).build()]).await;
    let web = sh("web", &format!("touch /tmp/ok; {IDLE}")).health_check(check());
    let client = sh("client", IDLE).depends_on(depends("web", ContainerCondition::Healthy));
    e.register("healthy", vec![web.build(), client.build()]).await;
    let sick = arn_of(&e.run("sick").await);
    let healthy = arn_of(&e.run("healthy").await);

    // Before the first check (after one interval) web is UNKNOWN and client waits.
    let t = e.wait_container(&healthy, "web", "RUNNING").await;
    assert_eq!(named(&t, "web").health_status().map(|h| h.as_str()), Some("UNKNOWN"));
    assert_eq!(t.last_status(), Some("PENDING"));
    assert_eq!(named(&t, "client").last_status(), Some("PENDING"));
    let t = e.wait_status(&healthy, "RUNNING").await;
    assert_eq!(named(&t, "web").health_status().map(|h| h.as_str()), Some("HEALTHY"));
    assert_eq!(named(&t, "client").last_status(), Some("RUNNING"));
    assert_eq!(named(&t, "client").health_status().map(|h| h.as_str()), Some("UNKNOWN"));
    assert_eq!(t.health_status().map(|h| h.as_str()), Some("HEALTHY"));

    let t = eventually(WAIT, "sick to be UNHEALTHY", || async {
        let t = e.describe(&sick).await;
        (named(&t, "app").health_status().map(|h| h.as_str()) == Some("UNHEALTHY")).then_some(t)
    })
    .await;
    assert_eq!(t.last_status(), Some("RUNNING"), "an unhealthy container keeps running");
    assert_eq!(t.health_status().map(|h| h.as_str()), Some("UNHEALTHY"));
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn containers_of_a_task_share_its_network_namespace() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let httpd = sh(
        "httpd",
        "mkdir -p /www && echo hello-from-httpd > /www/index.html; trap 'exit 0' TERM; httpd -f -p 127.0.0.1:8080 -h /www & wait",
    )
    .essential(false);
    let get = sh(
        "get",
        "for i in $(seq 200); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.05; done; exit 1",
    )
    .depends_on(depends("httpd", ContainerCondition::Start));
    e.register_mode("pair", "awsvpc", vec![httpd.build(), get.build()]).await;
    let arn = arn_of(&e.run_awsvpc("pair", "subnet-default").await);
    let t = e.wait_status(&arn, "STOPPED").await;
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    assert_eq!(named(&t, "get").exit_code(), Some(0), "wget reached httpd: {}", e.logs(&arn, "get"));
    assert_eq!(named(&t, "httpd").exit_code(), Some(0));
    assert_eq!(e.logs(&arn, "get"), "hello-from-httpd\n");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn count_ten_runs_ten_tasks() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    e.register("ten", vec![sh("app", IDLE).build()]).await;
    let out = e.client.run_task().task_definition("ten").count(10).send().await.unwrap();
    assert_eq!(out.failures(), &[]);
    let arns: BTreeSet<String> = out.tasks().iter().map(arn_of).collect();
    assert_eq!(arns.len(), 10);
    for arn in &arns {
        e.wait_status(arn, "RUNNING").await;
        assert!(e.container_netns(arn, 0).exists());
    }
    let listed = e.client.list_tasks().desired_status(DesiredStatus::Running).send().await.unwrap();
    assert_eq!(listed.task_arns().iter().cloned().collect::<BTreeSet<_>>(), arns);
    let tasks = e.runtime_tasks().await;
    assert_eq!(tasks.values().filter(|(_, s)| s == "RUNNING").count(), 10, "{tasks:?}");
    for arn in &arns {
        e.wait_trap(arn, "app", SIGTERM).await;
        e.stop(arn, "done").await;
    }
    for arn in &arns {
        let t = e.wait_status(arn, "STOPPED").await;
        assert_eq!(named(&t, "app").exit_code(), Some(0));
    }
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_restarted_ecsd_readopts_running_tasks_and_records_exits_it_missed() {
    let _g = CONTAINERD.read().await;
    let mut e = Ecsd::start(&[]).await;
    e.register("stays", vec![sh("app", IDLE).build()]).await;
    e.register("exits", vec![sh("app", "until [ -e /ctl/go ]; do sleep 0.05; done; exit 7").build()]).await;
    let stays = arn_of(&e.run("stays").await);
    let exits = arn_of(&e.run("exits").await);
    let before = e.wait_status(&stays, "RUNNING").await;
    let stays_id = named(&before, "app").runtime_id().unwrap().to_owned();
    let exits_id = named(&e.wait_status(&exits, "RUNNING").await, "app").runtime_id().unwrap().to_owned();
    e.wait_trap(&stays, "app", SIGTERM).await;
    let pid = e.runtime_tasks().await[&stays_id].0;

    e.down().await;
    e.signal_file("go");
    eventually(WAIT, "the container to exit while ecsd is down", || async {
        (e.runtime_tasks().await.get(&exits_id).map(|(_, s)| s.as_str()) == Some("STOPPED")).then_some(())
    })
    .await;
    e.up().await;

    let t = e.describe(&stays).await;
    assert_eq!(t.last_status(), Some("RUNNING"));
    assert_eq!(named(&t, "app").runtime_id(), Some(stays_id.as_str()));
    assert_eq!(named(&t, "app").last_status(), Some("RUNNING"));
    assert_eq!(e.runtime_tasks().await[&stays_id], (pid, "RUNNING".to_owned()), "the same process runs on");
    let t = e.wait_status(&exits, "STOPPED").await;
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    assert_eq!(named(&t, "app").exit_code(), Some(7));
    assert!(!e.container_netns(&exits, 0).exists());

    e.stop(&stays, "after restart").await;
    let t = e.wait_status(&stays, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0));
    assert!(!e.container_netns(&stays, 0).exists());
    e.finish().await;
}

/// Stops the private containerd by its pid file (not `hack/containerd stop`, which would
/// kill every task) and waits for it to exit; the shims and containers keep running.
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

async fn start_containerd(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/containerd");
    run_cmd(script.to_str().unwrap(), &["start", dir.to_str().unwrap()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn tasks_survive_a_containerd_restart() {
    let _g = CONTAINERD.write().await;
    if skip_on_podman(
        "tasks_containerd::tasks_survive_a_containerd_restart",
        "restarts containerd; runtime_podman has an_exit_while_the_podman_service_is_down_is_recorded",
    ) {
        return;
    }
    let e = Ecsd::start(&[]).await;
    e.register("stays", vec![sh("app", IDLE).build()]).await;
    e.register("exits", vec![sh("app", "until [ -e /ctl/go ]; do sleep 0.05; done; exit 7").build()]).await;
    let stays = arn_of(&e.run("stays").await);
    let exits = arn_of(&e.run("exits").await);
    e.wait_status(&stays, "RUNNING").await;
    e.wait_status(&exits, "RUNNING").await;
    e.wait_trap(&stays, "app", SIGTERM).await;

    let exits_id = named(&e.describe(&exits).await, "app").runtime_id().unwrap().to_owned();
    let exits_pid = e.runtime_tasks().await[&exits_id].0;

    let dir = socket().parent().unwrap().to_owned();
    stop_containerd(&dir).await;
    // The API answers from the store meanwhile, and places no task on a runtime that is away.
    assert_eq!(e.describe(&stays).await.last_status(), Some("RUNNING"));
    let out = e.client.run_task().task_definition("stays").send().await.unwrap();
    assert_eq!(out.tasks(), &[]);
    let failure = &out.failures()[0];
    assert_eq!(failure.reason(), Some("AGENT"));
    assert!(failure.detail().unwrap().starts_with("containerd is unreachable at "), "{failure:?}");
    // An exit while containerd is down reaches nobody's event stream: it must be found later.
    e.signal_file("go");
    eventually(WAIT, "the container to exit while containerd is down", || async {
        let stat = std::fs::read_to_string(format!("/proc/{exits_pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .then_some(())
    })
    .await;
    start_containerd(&dir).await;

    let t = e.wait_status(&exits, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(7));
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    let t = e.describe(&stays).await;
    assert_eq!(t.last_status(), Some("RUNNING"));
    e.stop(&stays, "after containerd restart").await;
    let t = e.wait_status(&stays, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0));
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn init_process_enabled_runs_the_container_under_an_init() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let params = aws_sdk_ecs::types::LinuxParameters::builder().init_process_enabled(true).build();
    let app = sh("app", "tr '\\0' ' ' </proc/1/cmdline; echo; echo pid:$$").linux_parameters(params);
    e.register("init", vec![app.build()]).await;
    let arn = arn_of(&e.run("init").await);
    let t = e.wait_status(&arn, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0));
    let logs = e.logs(&arn, "app");
    assert!(logs.starts_with("/sbin/ecsd-init -- sh -c "), "PID 1 is the init: {logs}");
    assert!(!logs.contains("pid:1\n"), "the shell is not PID 1: {logs}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_missing_image_fails_the_task_to_start() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    // Not present, so pulled: from a loopback port where no registry listens.
    e.register("missing", vec![sh("app", "exit 0").image("127.0.0.1:1/nope/missing:1").build()]).await;
    let arn = arn_of(&e.run("missing").await);
    let t = e.wait_status(&arn, "STOPPED").await;
    let reason = t.stopped_reason().unwrap().to_owned();
    let want = match e.runtime {
        TestRuntime::Containerd => {
            "CannotPullContainerError: The task can\u{2019}t pull the image. Check your network configuration. \
             failed to do request: GET 127.0.0.1:1/v2/nope/missing/manifests/1: "
        }
        // libpod reports a failed pull as text only, without a cause to tell a network
        // failure by: no hint, and Podman's own words.
        TestRuntime::Podman => {
            "CannotPullContainerError: pull image failed for image 127.0.0.1:1/nope/missing:1: "
        }
    };
    assert!(reason.starts_with(want), "{reason}");
    assert!(reason.to_lowercase().contains("connection refused"), "{reason}");
    let want = reason.as_str();
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    let app = named(&t, "app");
    assert_eq!((app.last_status(), app.exit_code(), app.reason()), (Some("STOPPED"), None, Some(want)));
    assert!(t.stopped_reason().unwrap().starts_with("CannotPullContainerError:"));
    assert!(!e.netns(&arn).exists());
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn doctor_reports_this_hosts_containerd_and_whether_it_answers() {
    if skip_on_podman(
        "tasks_containerd::doctor_reports_this_hosts_containerd_and_whether_it_answers",
        "asks about containerd",
    ) {
        return;
    }
    let doctor = |socket: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .args(["doctor", "--output", "json", "--containerd-address"])
            .arg(socket)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), json)
    };
    let (code, json) = doctor(&socket());
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(json["facts"]["containerd"]["answers"], true, "{json:#}");
    assert_eq!(json["facts"]["rootless"], false);
    assert_eq!(json["canServe"], true);
    // Nothing answers there: still fine, since containerd is installed and ecsd starts its own.
    let (code, json) = doctor(std::path::Path::new("/nonexistent/containerd.sock"));
    assert_eq!(json["facts"]["containerd"]["answers"], false, "{json:#}");
    assert_eq!(code, Some(0));
    let texts = json["findings"].to_string();
    assert!(
        texts.contains("nothing answers at /nonexistent/containerd.sock: ecsd starts its own"),
        "{texts}"
    );
}
