//! Services on a real containerd: rolling deployments within their bounds, the circuit
//! breaker's rollback, replacement of a killed task, scaling, deletion, a SIGKILL of ecsd in
//! the middle of a rollout, and image digests pinned per deployment.
//!
//! Set-up as in tests/tasks_containerd.rs (root, a private containerd at
//! `ECSD_TEST_CONTAINERD`, the test image at `ECSD_TEST_IMAGE`; hack/test does both). The
//! daemons run with a 1 s stabilisation time (`ECSD_SERVICE_STABILIZATION`), so rollouts
//! take seconds. While a rollout runs, a watcher takes a DescribeTasks snapshot of the
//! service's tasks every 100 ms and keeps the most live and the fewest healthy tasks it saw.

mod harness;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{
    ContainerDefinition, DeploymentCircuitBreaker, DeploymentConfiguration, DesiredStatus, Service, Task,
};
use harness::*;

const ENV: &[(&str, &str)] = &[("ECSD_SERVICE_STABILIZATION", "1s")];

/// A container that idles until SIGTERM.
fn idle() -> ContainerDefinition {
    sh("app", IDLE).build()
}

async fn register(e: &Ecsd, family: &str, c: ContainerDefinition) -> String {
    e.register(family, vec![c]).await;
    let d = e.client.describe_task_definition().task_definition(family).send().await.unwrap();
    d.task_definition().unwrap().task_definition_arn().unwrap().to_owned()
}

async fn describe(c: &Client, name: &str) -> Service {
    let out = c.describe_services().services(name).send().await.unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.services()[0].clone()
}

/// Waits for `f` to hold for the service; on timeout, fails with the service and its tasks.
async fn until(c: &Client, name: &str, what: &str, f: impl Fn(&Service) -> bool) -> Service {
    let deadline = Instant::now() + Duration::from_secs(WAIT * 2);
    loop {
        let s = describe(c, name).await;
        if f(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let tasks: Vec<String> = service_tasks(c, name)
                .await
                .iter()
                .map(|t| {
                    format!(
                        "{} {} last {} desired {} started {:?} stop {:?} {:?}",
                        t.task_arn().unwrap_or_default().rsplit('/').next().unwrap_or_default(),
                        t.started_by().unwrap_or_default(),
                        t.last_status().unwrap_or_default(),
                        t.desired_status().unwrap_or_default(),
                        t.started_at().map(|d| d.as_secs_f64()),
                        t.stop_code().map(|c| c.as_str().to_owned()),
                        t.stopped_reason()
                    )
                })
                .collect();
            panic!("timed out after {}s waiting for {what}\nservice: {s:#?}\ntasks: {tasks:#?}", WAIT * 2);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn steady(s: &Service) -> bool {
    s.deployments().len() == 1
        && s.running_count() == s.desired_count()
        && s.deployments()[0].rollout_state().map(|r| r.as_str()) == Some("COMPLETED")
}

fn on(td: &str) -> impl Fn(&Service) -> bool + '_ {
    move |s| steady(s) && s.task_definition() == Some(td)
}

async fn create(e: &Ecsd, name: &str, td: &str, desired: i32, min: i32, max: i32) -> Service {
    e.client
        .create_service()
        .service_name(name)
        .task_definition(td)
        .desired_count(desired)
        .deployment_configuration(
            DeploymentConfiguration::builder().minimum_healthy_percent(min).maximum_percent(max).build(),
        )
        .send()
        .await
        .unwrap()
        .service()
        .unwrap()
        .clone()
}

/// Every task of the service ecsd keeps (running and stopped), described.
async fn service_tasks(c: &Client, name: &str) -> Vec<Task> {
    let mut arns = vec![];
    for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
        let out = c.list_tasks().service_name(name).desired_status(desired).send().await.unwrap();
        arns.extend(out.task_arns().iter().cloned());
    }
    arns.sort();
    arns.dedup();
    let mut tasks = vec![];
    for chunk in arns.chunks(100) {
        let out = c.describe_tasks().set_tasks(Some(chunk.to_vec())).send().await.unwrap();
        tasks.extend(out.tasks().iter().cloned());
    }
    tasks
}

async fn running(c: &Client, name: &str) -> Vec<Task> {
    service_tasks(c, name).await.into_iter().filter(|t| t.last_status() == Some("RUNNING")).collect()
}

/// Snapshots of a service's tasks every 100 ms: the most live (not STOPPED) and the fewest
/// healthy (RUNNING and not asked to stop) tasks seen.
struct Watch {
    seen: Arc<Mutex<(usize, usize, usize)>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(c: &Client, name: &str) -> Watch {
        let seen = Arc::new(Mutex::new((0, usize::MAX, 0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, name, shared, flag) = (c.clone(), name.to_owned(), Arc::clone(&seen), Arc::clone(&stop));
        let handle = tokio::spawn(async move {
            while !flag.load(Ordering::SeqCst) {
                // A snapshot that fails (ecsd being killed) is simply not counted.
                let snapshot = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut arns = vec![];
                    for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
                        let out =
                            c.list_tasks().service_name(&name).desired_status(desired).send().await.ok()?;
                        arns.extend(out.task_arns().iter().cloned());
                    }
                    arns.sort();
                    arns.dedup();
                    if arns.is_empty() {
                        return Some(vec![]);
                    }
                    let out = c.describe_tasks().set_tasks(Some(arns)).send().await.ok()?;
                    Some(out.tasks().to_vec())
                })
                .await;
                if let Ok(Some(tasks)) = snapshot {
                    let live = tasks.iter().filter(|t| t.last_status() != Some("STOPPED")).count();
                    let healthy = tasks
                        .iter()
                        .filter(|t| {
                            t.last_status() == Some("RUNNING") && t.desired_status() == Some("RUNNING")
                        })
                        .count();
                    let mut s = shared.lock().unwrap();
                    s.0 = s.0.max(live);
                    s.1 = s.1.min(healthy);
                    s.2 += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Watch { seen, stop, handle }
    }

    /// (most live, fewest healthy, snapshots).
    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.await;
        *self.seen.lock().unwrap()
    }
}

/// Deletes the services with force, waits for them to be INACTIVE, then checks that nothing
/// outlived the tasks.
async fn finish(e: Ecsd, names: &[&str]) {
    for n in names {
        e.client.delete_service().service(*n).force(true).send().await.unwrap();
    }
    for n in names {
        until(&e.client, n, "INACTIVE", |s| s.status() == Some("INACTIVE")).await;
    }
    e.finish().await;
}

/// Rolls `desired` idle tasks from rev 1 to rev 2 at `min`/`max`; returns the watch's
/// (most live, fewest healthy, snapshots).
async fn roll(desired: i32, min: i32, max: i32) -> (usize, usize, usize) {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(ENV).await;
    let v1 = register(&e, "roll", idle()).await;
    let v2 = register(&e, "roll", idle()).await;
    create(&e, "roll", &v1, desired, min, max).await;
    until(&e.client, "roll", "steady on rev 1", on(&v1)).await;
    let watch = Watch::start(&e.client, "roll");
    let started = Instant::now();
    let s = e.client.update_service().service("roll").task_definition(&v2).send().await.unwrap();
    assert_eq!(s.service().unwrap().deployments().len(), 2);
    until(&e.client, "roll", "steady on rev 2", on(&v2)).await;
    let seen = watch.finish().await;
    eprintln!(
        "{desired} tasks at {min}/{max}: rolled in {:?}; (max live, min healthy, snapshots) = {seen:?}",
        started.elapsed()
    );
    let tasks = running(&e.client, "roll").await;
    assert_eq!(tasks.len(), desired as usize);
    assert!(tasks.iter().all(|t| t.task_definition_arn() == Some(v2.as_str())));
    finish(e, &["roll"]).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn three_tasks_roll_at_100_200_without_dropping_below_three_or_exceeding_six() {
    let (max_live, min_healthy, snapshots) = roll(3, 100, 200).await;
    assert!(snapshots > 5, "the watch took {snapshots} snapshots");
    assert!(max_live <= 6, "never more than 6 live, saw {max_live}");
    assert!(min_healthy >= 3, "never fewer than 3 healthy, saw {min_healthy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn three_tasks_roll_at_50_100_without_exceeding_three() {
    let (max_live, min_healthy, _) = roll(3, 50, 100).await;
    assert!(max_live <= 3, "never more than 3 live, saw {max_live}");
    assert!(min_healthy >= 2, "never fewer than 2 healthy, saw {min_healthy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn one_task_rolls_at_0_100_by_stopping_first() {
    let (max_live, _, _) = roll(1, 0, 100).await;
    assert_eq!(max_live, 1, "the old task stops before the new one starts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_revision_that_exits_trips_the_circuit_breaker_and_rolls_back() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(ENV).await;
    let good = register(&e, "cb", idle()).await;
    let bad = register(&e, "cb", sh("app", "exit 1").build()).await;
    e.client
        .create_service()
        .service_name("cb")
        .task_definition(&good)
        .desired_count(3)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .deployment_circuit_breaker(
                    DeploymentCircuitBreaker::builder().enable(true).rollback(true).build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let s = until(&e.client, "cb", "steady on the good revision", on(&good)).await;
    let first = s.deployments()[0].id().unwrap().to_owned();
    let s = e.client.update_service().service("cb").task_definition(&bad).send().await.unwrap();
    let failed = s.service().unwrap().deployments()[0].id().unwrap().to_owned();
    let s = until(&e.client, "cb", "rolled back and steady", |s| {
        on(&good)(s) && s.deployments()[0].id() != Some(failed.as_str())
    })
    .await;
    let events: Vec<&str> = s.events().iter().map(|e| e.message().unwrap()).collect();
    assert!(
        events.contains(
            &format!("(service cb) (deployment {failed}) deployment failed: tasks failed to start.").as_str()
        ),
        "{events:#?}"
    );
    assert!(
        events.contains(&format!("(service cb) rolling back to deployment {first}.").as_str()),
        "{events:#?}"
    );
    let tasks = running(&e.client, "cb").await;
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t.task_definition_arn() == Some(good.as_str())));
    finish(e, &["cb"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_killed_task_is_replaced_and_the_service_scales_3_0_2() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(ENV).await;
    let td = register(&e, "scale", idle()).await;
    create(&e, "scale", &td, 3, 100, 200).await;
    until(&e.client, "scale", "3 running", steady).await;
    let victim = running(&e.client, "scale").await.remove(0);
    let runtime_id = victim.containers()[0].runtime_id().unwrap().to_owned();
    e.ctr(&["tasks", "kill", "--signal", "SIGKILL", &runtime_id]).await;
    let replaced = eventually(WAIT, "a replacement RUNNING", || async {
        let now = running(&e.client, "scale").await;
        (now.len() == 3 && now.iter().all(|t| t.task_arn() != victim.task_arn())).then_some(now)
    })
    .await;
    assert_eq!(replaced.len(), 3);
    let gone = e.describe(victim.task_arn().unwrap()).await;
    assert_eq!(gone.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));

    e.client.update_service().service("scale").desired_count(0).send().await.unwrap();
    until(&e.client, "scale", "0 running", |s| steady(s) && s.running_count() == 0).await;
    assert!(running(&e.client, "scale").await.is_empty());
    e.client.update_service().service("scale").desired_count(2).send().await.unwrap();
    until(&e.client, "scale", "2 running", |s| steady(s) && s.running_count() == 2).await;
    assert_eq!(running(&e.client, "scale").await.len(), 2);
    assert_eq!(describe(&e.client, "scale").await.deployments().len(), 1, "no deployment for counts");
    finish(e, &["scale"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn delete_service_with_force_stops_every_task_and_ends_inactive() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(ENV).await;
    let td = register(&e, "gone", idle()).await;
    create(&e, "gone", &td, 2, 100, 200).await;
    until(&e.client, "gone", "2 running", steady).await;
    let out = e.client.delete_service().service("gone").force(true).send().await.unwrap();
    assert_eq!(out.service().unwrap().status(), Some("DRAINING"));
    let s = until(&e.client, "gone", "INACTIVE", |s| s.status() == Some("INACTIVE")).await;
    assert_eq!((s.running_count(), s.pending_count()), (0, 0));
    for t in service_tasks(&e.client, "gone").await {
        assert_eq!(t.last_status(), Some("STOPPED"));
        assert_eq!(t.stop_code().map(|c| c.as_str()), Some("ServiceSchedulerInitiated"));
    }
    assert!(e.runtime_tasks().await.is_empty(), "no container left running");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_sigkill_of_ecsd_mid_rollout_converges_after_the_restart() {
    let _g = CONTAINERD.read().await;
    // A longer stabilisation keeps the rollout going while ecsd dies.
    let env = [("ECSD_SERVICE_STABILIZATION", "4s")];
    let mut e = Ecsd::start(&env).await;
    let v1 = register(&e, "kill", idle()).await;
    let v2 = register(&e, "kill", idle()).await;
    create(&e, "kill", &v1, 3, 100, 200).await;
    until(&e.client, "kill", "steady on rev 1", on(&v1)).await;
    e.down().await;

    let mut spawned = e.spawn_binary();
    let c = client(&spawned.url);
    let watch = Watch::start(&c, "kill");
    let s = c.update_service().service("kill").task_definition(&v2).send().await.unwrap();
    let ids: Vec<String> =
        s.service().unwrap().deployments().iter().map(|d| d.id().unwrap().to_owned()).collect();
    // Mid-rollout: the new tasks run, the old ones still do.
    until(&c, "kill", "new tasks running", |s| {
        s.deployments().len() == 2 && s.deployments()[0].running_count() >= 1
    })
    .await;
    spawned.kill();
    let (max_before, min_before, _) = watch.finish().await;

    e.up().await;
    let after: Vec<String> =
        describe(&e.client, "kill").await.deployments().iter().map(|d| d.id().unwrap().to_owned()).collect();
    assert_eq!(after, ids, "no spurious deployment after the restart");
    let watch = Watch::start(&e.client, "kill");
    until(&e.client, "kill", "steady on rev 2 after the restart", on(&v2)).await;
    let (max_after, min_after, _) = watch.finish().await;
    eprintln!(
        "before the kill: max live {max_before}, min healthy {min_before}; after: {max_after}, {min_after}"
    );
    assert!(max_before.max(max_after) <= 6, "never more than maximumPercent");
    assert!(min_before.min(min_after) >= 3, "never fewer than minimumHealthyPercent");
    let tasks = running(&e.client, "kill").await;
    assert_eq!(tasks.len(), 3, "no duplicates");
    assert!(
        tasks
            .iter()
            .all(|t| t.task_definition_arn() == Some(v2.as_str()) && t.started_by() == Some(ids[0].as_str()))
    );
    finish(e, &["kill"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_deployment_pins_image_digests_and_a_forced_one_resolves_them_again() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(ENV).await;
    // `pinned:v` is busybox; `pinned:keep` keeps that digest in the repository after `v`
    // moves on, as a registry keeps old manifests.
    let (busybox, other) =
        ("docker.io/library/busybox:latest", "docker.io/library/busybox-stopsignal:latest");
    e.ctr(&["images", "tag", busybox, "docker.io/library/pinned:v", "docker.io/library/pinned:keep"]).await;
    let td = register(
        &e,
        "pin",
        ContainerDefinition::builder()
            .image("pinned:v")
            .name("app")
            .memory(32)
            .command("sh")
            .command("-c")
            .command(IDLE)
            .build(),
    )
    .await;
    create(&e, "pin", &td, 1, 100, 200).await;
    until(&e.client, "pin", "steady", steady).await;
    let first = running(&e.client, "pin").await.remove(0);
    let d1 = first.containers()[0].image_digest().unwrap().to_owned();
    e.ctr(&["images", "tag", "--force", other, "docker.io/library/pinned:v"]).await;

    // Scaling out: the new task runs the deployment's digest, not what the tag names now.
    e.client.update_service().service("pin").desired_count(2).send().await.unwrap();
    until(&e.client, "pin", "2 running", |s| steady(s) && s.running_count() == 2).await;
    let tasks = running(&e.client, "pin").await;
    assert!(tasks.iter().all(|t| t.containers()[0].image_digest() == Some(d1.as_str())), "{tasks:#?}");
    let s = describe(&e.client, "pin").await;
    let rev = s.current_service_revisions()[0].arn().unwrap().to_owned();
    let r = e.client.describe_service_revisions().service_revision_arns(&rev).send().await.unwrap();
    assert_eq!(r.service_revisions()[0].container_images()[0].image_digest(), Some(d1.as_str()));

    // forceNewDeployment resolves the tag again.
    e.client.update_service().service("pin").force_new_deployment(true).send().await.unwrap();
    let s = until(&e.client, "pin", "the forced deployment", |s| {
        steady(s) && s.deployments()[0].id() != tasks[0].started_by()
    })
    .await;
    assert_eq!(s.running_count(), 2);
    let tasks = running(&e.client, "pin").await;
    assert!(tasks.iter().all(|t| t.containers()[0].image_digest().is_some_and(|d| d != d1)), "{tasks:#?}");
    e.client.delete_service().service("pin").force(true).send().await.unwrap();
    until(&e.client, "pin", "INACTIVE", |s| s.status() == Some("INACTIVE")).await;
    // The harness removes its own images with the namespace; these tags are the test's.
    e.ctr(&["images", "rm", "--sync", "docker.io/library/pinned:v", "docker.io/library/pinned:keep"]).await;
    e.finish().await;
}
