//! State survives restarts, clean or SIGKILL, and the data dir has one owner at a time.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::types::ContainerDefinition;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::{Ecsd, client, config};

fn container() -> ContainerDefinition {
    ContainerDefinition::builder().name("c").image("busybox").memory(16).build()
}

#[tokio::test]
async fn state_survives_a_clean_restart() {
    let mut e = Ecsd::start().await;
    e.client.create_cluster().cluster_name("kept").send().await.unwrap();
    e.client
        .register_task_definition()
        .family("kept")
        .container_definitions(container())
        .send()
        .await
        .unwrap();
    e.restart().await;
    let c = e.client.describe_clusters().clusters("kept").send().await.unwrap();
    assert_eq!(c.clusters()[0].status(), Some("ACTIVE"));
    let out = e
        .client
        .register_task_definition()
        .family("kept")
        .container_definitions(container())
        .send()
        .await
        .unwrap();
    assert_eq!(out.task_definition().unwrap().revision(), 2);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let e = Ecsd::start().await;
    let second = ecsd::start(&config(e.dir.path(), &[])).await.unwrap_err();
    let text = ecsd::error_chain(&second);
    assert!(text.contains("is already in use by another ecsd"), "{text}");
    assert!(text.starts_with(&format!("cannot open ecsd's state in {}", e.dir.path().display())), "{text}");
}

/// Starts the real binary and returns it with its URL.
async fn spawn(dir: &Path) -> (Child, String) {
    spawn_with(dir, &[]).await
}

#[tokio::test]
async fn sigkill_during_a_burst_loses_no_acknowledged_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn(dir.path()).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = vec![];
    for _ in 0..4 {
        let c = client(&url);
        let acked = Arc::clone(&acked);
        writers.push(tokio::spawn(async move {
            while let Ok(out) =
                c.register_task_definition().family("burst").container_definitions(container()).send().await
            {
                acked.lock().unwrap().insert(out.task_definition().unwrap().revision());
            }
        }));
    }
    // Kill once a good number of writes have been acknowledged, mid-burst.
    for _ in 0..200 {
        if acked.lock().unwrap().len() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 10, "the burst acknowledged only {} writes", acked.len());

    let (mut child, url) = spawn(dir.path()).await;
    let c = client(&url);
    let stored: BTreeSet<i32> = c
        .list_task_definitions()
        .family_prefix("burst")
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .iter()
        .map(|arn| arn.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged revisions lost: {missing:?}");
    let max = *stored.iter().max().unwrap();
    assert_eq!(stored, (1..=max).collect(), "revisions have no gaps");
    let next =
        c.register_task_definition().family("burst").container_definitions(container()).send().await.unwrap();
    assert_eq!(next.task_definition().unwrap().revision(), max + 1, "numbering continues after the crash");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _url) = spawn(dir.path()).await;
    let pid = child.id().expect("pid") as i32;
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits").unwrap();
    assert!(exit.success(), "{exit:?}");
    // The lock is gone with it: the data dir can be opened again.
    let (mut again, _) = spawn(dir.path()).await;
    again.start_kill().unwrap();
    again.wait().await.unwrap();
}

/// `ecsd serve` on `dir` with `envs`, its stdout's first line awaited; stderr captured.
async fn spawn_with(dir: &Path, envs: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--containerd-address")
        .arg(dir.join("no-containerd.sock"))
        .env("RUST_LOG", "warn")
        .env("ECSD_INTROSPECTION_LISTEN", "127.0.0.1:0")
        // Tests run as root: no host firewall rules from these daemons.
        .env("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "true")
        .env("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "true")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ecsd");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ecsd prints its address")
        .expect("read stdout")
        .expect("a line");
    (child, line.strip_prefix("ecsd listening on ").expect("the listening line").to_owned())
}

/// SIGTERM, then the exit status.
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(child.id().expect("running") as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap()
}

#[tokio::test]
async fn systemd_hears_ready_once_the_api_answers_and_stopping_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let (child, url) =
        spawn_with(&dir.path().join("data"), &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]).await;
    let mut buf = vec![0u8; 512];
    let n =
        tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf)).await.expect("READY").unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", child.id().unwrap())), "{ready}");
    // Ready means answering: the first call after READY=1 succeeds.
    client(&url).list_clusters().send().await.expect("the API answers once READY=1 is sent");
    let exit = terminate_and_hear(child, &socket, &mut buf).await;
    assert!(exit.success());
}

async fn terminate_and_hear(
    child: Child,
    socket: &tokio::net::UnixDatagram,
    buf: &mut [u8],
) -> std::process::ExitStatus {
    let exit = tokio::spawn(terminate(child));
    let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(buf)).await.expect("STOPPING").unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    exit.await.unwrap()
}

/// The data dir of tests/fixtures/datadir-format0, copied: written by the ecsd before the
/// store format was recorded.
fn format0_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-format0/state.redb");
    std::fs::copy(fixture, dir.path().join("state.redb")).unwrap();
    dir
}

#[tokio::test]
async fn a_format_0_data_dir_is_upgraded_keeping_every_record() {
    let dir = format0_copy();
    let (child, url) = spawn_with(dir.path(), &[]).await;
    let c = client(&url);
    let clusters = c.list_clusters().send().await.unwrap();
    let mut names: Vec<&str> =
        clusters.cluster_arns().iter().map(|a| a.rsplit('/').next().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["default", "prod"]);
    let prod = c
        .describe_clusters()
        .clusters("prod")
        .include(aws_sdk_ecs::types::ClusterField::Tags)
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> =
        prod.clusters()[0].tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
    assert_eq!(tags, [("team", "payments")]);
    let defs = c.list_task_definitions().send().await.unwrap();
    assert_eq!(defs.task_definition_arns().len(), 2, "{:?}", defs.task_definition_arns());
    let td = c
        .describe_task_definition()
        .task_definition("e2e-web:1")
        .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
        .send()
        .await
        .unwrap();
    assert_eq!(td.task_definition().unwrap().container_definitions().len(), 2);
    let tags: Vec<&str> = td.tags().iter().map(|t| t.key().unwrap()).collect();
    assert_eq!(tags, ["app"]);
    let svc = c.describe_services().cluster("prod").services("web").send().await.unwrap();
    let svc = &svc.services()[0];
    assert_eq!((svc.status(), svc.desired_count()), (Some("ACTIVE"), 0));
    assert!(svc.task_definition().unwrap().ends_with("task-definition/e2e-web:2"));
    let attrs = c
        .list_attributes()
        .cluster("prod")
        .target_type(aws_sdk_ecs::types::TargetType::ContainerInstance)
        .send()
        .await
        .unwrap();
    assert!(attrs.attributes().iter().any(|a| a.name() == "stack" && a.value() == Some("blue")), "{attrs:?}");
    let setting = c
        .list_account_settings()
        .name(aws_sdk_ecs::types::SettingName::ContainerInsights)
        .effective_settings(true)
        .send()
        .await
        .unwrap();
    assert_eq!(setting.settings()[0].value(), Some("enabled"));
    // A new revision continues from the fixture's last one.
    let out = c
        .register_task_definition()
        .family("e2e-web")
        .container_definitions(container())
        .send()
        .await
        .unwrap();
    assert_eq!(out.task_definition().unwrap().revision(), 3);
    assert!(terminate(child).await.success());
}

#[tokio::test]
async fn an_older_ecsd_refuses_a_newer_data_dir_with_a_clear_message() {
    let dir = format0_copy();
    let (child, _) = spawn_with(dir.path(), &[]).await;
    assert!(terminate(child).await.success());
    // What a newer ecsd would leave: a higher format.
    {
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        tx.open_table(def).unwrap().insert("store_format", br#""99""#.as_slice()).unwrap();
        tx.commit().unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--containerd-address")
        .arg(dir.path().join("no-containerd.sock"))
        .env("ECSD_INTROSPECTION_LISTEN", "127.0.0.1:0")
        // Tests run as root: no host firewall rules from these daemons.
        .env("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "true")
        .env("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "true")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "data dir {} was written by a newer ecsd (store format 99; this ecsd reads formats up to {}): run that ecsd or a newer one on it, or give this one another --data-dir",
            dir.path().display(),
            ecsd::store::STORE_FORMAT
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn version_names_the_release_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_ecsd")).arg("--version").output().await.unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rest = text.strip_prefix(&format!("ecsd {} (", env!("CARGO_PKG_VERSION"))).expect(&text);
    let commit = rest.strip_suffix(")\n").expect(&text);
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
}
