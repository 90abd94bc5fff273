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
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        // The control plane needs no runtime: point at a socket nobody serves.
        .arg("--containerd-address")
        .arg(dir.join("no-containerd.sock"))
        .env("RUST_LOG", "warn")
        .env("ECSD_INTROSPECTION_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ecsd");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ecsd prints its address")
        .expect("read stdout")
        .expect("a line");
    let url = line.strip_prefix("ecsd listening on ").expect("the listening line").to_owned();
    (child, url)
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
