//! Pulls as ECS_IMAGE_PULL_BEHAVIOR decides them, on the in-memory runtime (whose fake
//! registry serves the images the test adds): what is pulled, the task's pull timestamps,
//! `imageDigest`, and what a failed pull does to the task. The real pulls, registries and
//! containerd are in tests/images_containerd.rs.

use aws_sdk_ecs::types::{ContainerDefinition, Task};
use ecsd::runtime::ImageConfig;
use ecsd::runtime::registry::RegistryError;

use crate::common::{Ecsd, eventually};

const BUSYBOX: &str = "docker.io/library/busybox:latest";

async fn run_until(e: &Ecsd, image: &str, status: &str) -> Task {
    let c = ContainerDefinition::builder().name("app").image(image).memory(16).build();
    let family = format!("f{}", uuid_like());
    e.client.register_task_definition().family(&family).container_definitions(c).send().await.unwrap();
    let out = e.client.run_task().task_definition(&family).send().await.unwrap();
    assert!(out.failures().is_empty());
    let arn = out.tasks()[0].task_arn().unwrap().to_owned();
    eventually(10, &format!("task to be {status}"), || async {
        let t = e.client.describe_tasks().tasks(&arn).send().await.unwrap().tasks()[0].clone();
        if t.last_status() == Some("STOPPED") && status != "STOPPED" {
            panic!("the task stopped: {:?}", t.stopped_reason());
        }
        (t.last_status() == Some(status)).then_some(t)
    })
    .await
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn runnable() -> ImageConfig {
    ImageConfig { cmd: Some(vec!["sh".into()]), ..ImageConfig::default() }
}

fn not_found(reference: &str) -> RegistryError {
    RegistryError::NotFound {
        reference: reference.into(),
        code: Some("MANIFEST_UNKNOWN".into()),
        message: None,
    }
}

#[tokio::test]
async fn default_pulls_every_time_and_reports_the_pull() {
    let e = Ecsd::start().await;
    let t = run_until(&e, "busybox", "RUNNING").await;
    assert_eq!(e.fake.pulls(), vec![BUSYBOX]);
    let (started, stopped) = (t.pull_started_at().unwrap(), t.pull_stopped_at().unwrap());
    assert!(started.as_secs_f64() <= stopped.as_secs_f64());
    assert!(t.containers()[0].image_digest().is_some_and(|d| d.starts_with("sha256:")));
    run_until(&e, "busybox:latest", "RUNNING").await;
    assert_eq!(e.fake.pulls(), vec![BUSYBOX, BUSYBOX]);
}

#[tokio::test]
async fn prefer_cached_runs_a_present_image_without_pulling() {
    let e = Ecsd::start_with(&[("ECS_IMAGE_PULL_BEHAVIOR", "prefer-cached")]).await;
    let t = run_until(&e, "busybox", "RUNNING").await;
    assert_eq!(e.fake.pulls(), Vec::<String>::new());
    assert_eq!((t.pull_started_at(), t.pull_stopped_at()), (None, None), "nothing was pulled");
    assert!(t.containers()[0].image_digest().is_some(), "the local image's digest");
    // An image that is not present is pulled.
    e.fake.add_remote_image("docker.io/library/remote:1", runnable());
    let t = run_until(&e, "remote:1", "RUNNING").await;
    assert_eq!(e.fake.pulls(), vec!["docker.io/library/remote:1"]);
    assert!(t.pull_started_at().is_some() && t.pull_stopped_at().is_some());
}

#[tokio::test]
async fn once_pulls_a_name_once() {
    let e = Ecsd::start_with(&[("ECS_IMAGE_PULL_BEHAVIOR", "once")]).await;
    // Present (imported) but never pulled by ecsd: pulled once.
    run_until(&e, "busybox", "RUNNING").await;
    let t = run_until(&e, "busybox", "RUNNING").await;
    assert_eq!(e.fake.pulls(), vec![BUSYBOX]);
    assert_eq!(t.pull_started_at(), None);
}

#[tokio::test]
async fn a_failed_pull_stops_always_and_once_but_default_runs_the_local_image() {
    for (behavior, runs) in [("default", true), ("prefer-cached", true), ("always", false), ("once", false)] {
        let e = Ecsd::start_with(&[("ECS_IMAGE_PULL_BEHAVIOR", behavior)]).await;
        e.fake.fail_pull(BUSYBOX, not_found(BUSYBOX));
        if behavior == "prefer-cached" {
            // prefer-cached does not pull a present image: make it absent-then-failing.
            e.fake.fail_pull("docker.io/library/gone:1", not_found("docker.io/library/gone:1"));
            let t = run_until(&e, "gone:1", "STOPPED").await;
            assert!(t.stopped_reason().unwrap().starts_with("CannotPullContainerError: "), "{behavior}");
            continue;
        }
        if runs {
            let t = run_until(&e, "busybox", "RUNNING").await;
            assert!(t.pull_stopped_at().is_some(), "{behavior}: the failed pull still counts");
        } else {
            let t = run_until(&e, "busybox", "STOPPED").await;
            assert_eq!(t.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"), "{behavior}");
            assert_eq!(
                t.stopped_reason(),
                Some(
                    "CannotPullContainerError: The task can\u{2019}t pull the image. Check whether the image \
                     exists. failed to resolve reference \"docker.io/library/busybox:latest\": \
                     docker.io/library/busybox:latest: not found: manifest unknown"
                ),
                "{behavior}"
            );
            assert_eq!(t.containers()[0].reason(), t.stopped_reason());
        }
    }
}

#[tokio::test]
async fn cleanup_removes_unused_images_and_keeps_used_ones() {
    let e = Ecsd::start_with(&[("ECS_IMAGE_MINIMUM_CLEANUP_AGE", "0s")]).await;
    e.fake.add_remote_image("docker.io/library/old:1", runnable());
    let old = run_until(&e, "old:1", "RUNNING").await;
    e.client.stop_task().task(old.task_arn().unwrap()).send().await.unwrap();
    run_until(&e, "busybox", "RUNNING").await;
    let engine = e.daemon.as_ref().unwrap().engine().clone();
    eventually(10, "the old task to stop", || async {
        let t =
            e.client.describe_tasks().tasks(old.task_arn().unwrap()).send().await.unwrap().tasks()[0].clone();
        (t.last_status() == Some("STOPPED")).then_some(())
    })
    .await;
    let removed = engine.clean_images().await.unwrap();
    assert_eq!(removed, vec!["docker.io/library/old:1"]);
    assert!(!e.fake.has_image("docker.io/library/old:1"));
    assert!(e.fake.has_image(BUSYBOX), "the running task's image stays");
}
