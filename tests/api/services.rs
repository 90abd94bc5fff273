//! Services through the API, on the in-memory runtime and the daemon's manual clock: the
//! shapes and errors of the service operations, and the scheduler's rules that need no real
//! container (rolling bounds, replacement, scaling, the circuit breaker and its rollback,
//! back-off, events and their 6-hour repeat, deletion, restarts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::types::{
    AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerDefinition, DeploymentCircuitBreaker,
    DeploymentConfiguration, DesiredStatus, HealthCheck, LaunchType, NetworkConfiguration, NetworkMode,
    PlacementConstraint, PlacementConstraintType, PlacementStrategy, PlacementStrategyType, PortMapping,
    PropagateTags, SchedulingStrategy, Service, ServiceDeploymentStatus, ServiceField, Tag, Task,
};
use ecsd::model::task::{TaskRecord, TaskStatus};
use ecsd::model::time::Clock;

use crate::common::{Ecsd, arn, err, eventually};

/// One step of the daemon's clock while waiting for the scheduler: under the 40 s
/// stabilisation time, so tests see the states in between.
const STEP: Duration = Duration::from_secs(5);

fn container(name: &str) -> ContainerDefinition {
    ContainerDefinition::builder().name(name).image("busybox").memory(32).build()
}

async fn register(e: &Ecsd, family: &str, containers: Vec<ContainerDefinition>) -> String {
    let out = e
        .client
        .register_task_definition()
        .family(family)
        .set_container_definitions(Some(containers))
        .send()
        .await
        .unwrap();
    out.task_definition().unwrap().task_definition_arn().unwrap().to_owned()
}

async fn register_web(e: &Ecsd) -> String {
    register(e, "web", vec![container("app")]).await
}

async fn create(e: &Ecsd, name: &str, td: &str, desired: i32) -> Service {
    let out = e
        .client
        .create_service()
        .service_name(name)
        .task_definition(td)
        .desired_count(desired)
        .send()
        .await
        .unwrap();
    out.service().unwrap().clone()
}

async fn describe(e: &Ecsd, name: &str) -> Service {
    let out = e.client.describe_services().services(name).send().await.unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.services()[0].clone()
}

/// Moves the clock in steps until `f` holds for the service.
async fn until(e: &Ecsd, name: &str, what: &str, f: impl Fn(&Service) -> bool) -> Service {
    e.advancing(STEP, 20, what, || async {
        let s = describe(e, name).await;
        f(&s).then_some(s)
    })
    .await
}

/// Waits (without moving the clock) until `f` holds for the service.
async fn until_still(e: &Ecsd, name: &str, what: &str, f: impl Fn(&Service) -> bool) -> Service {
    eventually(10, what, || async {
        let s = describe(e, name).await;
        f(&s).then_some(s)
    })
    .await
}

fn steady(s: &Service) -> bool {
    s.deployments().len() == 1
        && s.running_count() == s.desired_count()
        && s.deployments()[0].rollout_state().map(|r| r.as_str()) == Some("COMPLETED")
}

fn messages(s: &Service) -> Vec<String> {
    s.events().iter().map(|e| e.message().unwrap().to_owned()).collect()
}

/// The service's tasks (ListTasks serviceName), with their details.
async fn tasks(e: &Ecsd, name: &str, desired: DesiredStatus) -> Vec<Task> {
    let arns = e
        .client
        .list_tasks()
        .service_name(name)
        .desired_status(desired)
        .send()
        .await
        .unwrap()
        .task_arns()
        .to_vec();
    if arns.is_empty() {
        return vec![];
    }
    e.client.describe_tasks().set_tasks(Some(arns)).send().await.unwrap().tasks().to_vec()
}

fn task_id(t: &Task) -> String {
    t.task_arn().unwrap().rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn create_service_answers_as_ecs_does_and_the_scheduler_brings_it_to_a_steady_state() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    let s = create(&e, "web", &td, 2).await;
    assert_eq!(s.service_arn(), Some(arn("service/default/web").as_str()));
    assert_eq!(s.cluster_arn(), Some(arn("cluster/default").as_str()));
    assert_eq!(s.status(), Some("ACTIVE"));
    assert_eq!((s.desired_count(), s.running_count(), s.pending_count()), (2, 0, 0));
    assert!(s.events().is_empty());
    assert_eq!(s.task_definition(), Some(td.as_str()));
    assert_eq!(s.launch_type(), Some(&LaunchType::Ec2));
    assert_eq!(s.scheduling_strategy(), Some(&SchedulingStrategy::Replica));
    assert_eq!(s.propagate_tags(), Some(&PropagateTags::None));
    assert!(!s.enable_ecs_managed_tags() && !s.enable_execute_command());
    assert_eq!(s.deployment_controller().unwrap().r#type().as_str(), "ECS");
    let dc = s.deployment_configuration().unwrap();
    assert_eq!((dc.maximum_percent(), dc.minimum_healthy_percent()), (Some(200), Some(100)));
    let cb = dc.deployment_circuit_breaker().unwrap();
    assert!(!cb.enable() && !cb.rollback());
    assert_eq!(s.deployments().len(), 1);
    let d = &s.deployments()[0];
    let id = d.id().unwrap().to_owned();
    let digits = id.strip_prefix("ecs-svc/").unwrap();
    assert!(!digits.is_empty() && digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert_eq!(d.status(), Some("PRIMARY"));
    assert_eq!(d.rollout_state().map(|r| r.as_str()), Some("IN_PROGRESS"));
    assert_eq!(d.rollout_state_reason(), Some(format!("ECS deployment {id} in progress.").as_str()));
    assert!(s.current_service_deployment().unwrap().starts_with(&arn("service-deployment/default/web/")));

    // Both tasks start, as the PRIMARY deployment's, in the service's group.
    let s = until_still(&e, "web", "2 running", |s| s.running_count() == 2).await;
    let started = tasks(&e, "web", DesiredStatus::Running).await;
    assert_eq!(started.len(), 2);
    for t in &started {
        assert_eq!(t.started_by(), Some(id.as_str()));
        assert_eq!(t.group(), Some("service:web"));
        assert_eq!(t.overrides().unwrap().container_overrides()[0].name(), Some("app"));
    }
    let ids: BTreeSet<String> = started.iter().map(task_id).collect();
    let started_event = s.events().last().unwrap().message().unwrap().to_owned();
    assert!(started_event.starts_with("(service web) has started 2 tasks: (task "), "{started_event}");
    assert!(ids.iter().all(|id| started_event.contains(&format!("(task {id})"))), "{started_event}");
    assert_eq!(s.deployments()[0].rollout_state().map(|r| r.as_str()), Some("IN_PROGRESS"), "not yet stable");

    // 40 s after RUNNING (no health checks) they count as healthy: the deployment completes.
    let s = until(&e, "web", "steady", steady).await;
    assert_eq!(
        s.deployments()[0].rollout_state_reason(),
        Some(format!("ECS deployment {id} completed.").as_str())
    );
    let m = messages(&s);
    assert_eq!(m[0], "(service web) has reached a steady state.");
    assert_eq!(m[1], format!("(service web) (deployment {id}) deployment completed."));
    for ev in s.events() {
        assert!(uuid_like(ev.id().unwrap()), "{:?}", ev.id());
    }
    // Cluster counters are true at every read.
    let c = e.client.describe_clusters().clusters("default").send().await.unwrap();
    let c = &c.clusters()[0];
    assert_eq!((c.active_services_count(), c.running_tasks_count(), c.pending_tasks_count()), (1, 2, 0));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// Follows every change of a service's tasks (the engine's events) and keeps the most live
/// tasks and the fewest healthy ones seen at any change, with healthy = RUNNING, not asked to
/// stop, and RUNNING for `stabilization` seconds of the daemon's clock.
struct Bounds {
    state: Arc<Mutex<BoundsState>>,
    handle: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct BoundsState {
    tasks: BTreeMap<String, Arc<TaskRecord>>,
    max_live: usize,
    min_healthy: usize,
    /// Deployments in the order their first task appeared.
    order: Vec<(String, String)>,
}

impl Bounds {
    fn watch(e: &Ecsd, group: &str, stabilization: f64) -> Bounds {
        let engine = e.daemon.as_ref().unwrap().engine().clone();
        let mut rx = engine.subscribe();
        let mut st = BoundsState { min_healthy: usize::MAX, ..Default::default() };
        for t in engine.tasks("default", None) {
            if t.group == group {
                st.tasks.insert(t.id.clone(), t);
            }
        }
        let state = Arc::new(Mutex::new(st));
        let clock = e.clock.clone();
        let group = group.to_owned();
        let shared = Arc::clone(&state);
        let handle = tokio::spawn(async move {
            loop {
                let event = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => panic!("the watch lagged"),
                    Err(_) => return,
                };
                if event.task.group != group {
                    continue;
                }
                let mut st = shared.lock().unwrap();
                let t = event.task;
                if !st.tasks.contains_key(&t.id) {
                    let entry = (t.id.clone(), t.started_by.clone().unwrap_or_default());
                    st.order.push(entry);
                }
                st.tasks.insert(t.id.clone(), t);
                let now = clock.now();
                let live = st.tasks.values().filter(|t| t.last != TaskStatus::Stopped).count();
                let healthy = st
                    .tasks
                    .values()
                    .filter(|t| {
                        t.last == TaskStatus::Running
                            && t.desired == TaskStatus::Running
                            && t.started_at.is_some_and(|s| s + stabilization <= now)
                    })
                    .count();
                st.max_live = st.max_live.max(live);
                st.min_healthy = st.min_healthy.min(healthy);
            }
        });
        Bounds { state, handle }
    }

    fn get(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.max_live, st.min_healthy)
    }
}

impl Drop for Bounds {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn create_with(e: &Ecsd, name: &str, td: &str, desired: i32, min: i32, max: i32) -> Service {
    let out = e
        .client
        .create_service()
        .service_name(name)
        .task_definition(td)
        .desired_count(desired)
        .deployment_configuration(
            DeploymentConfiguration::builder().minimum_healthy_percent(min).maximum_percent(max).build(),
        )
        .send()
        .await
        .unwrap();
    out.service().unwrap().clone()
}

/// Registers a good revision of `web` and a bad one (an image that does not exist), and
/// creates the service `web` on the good one with the circuit breaker on; answers both ARNs.
async fn breaker_service(e: &Ecsd, desired: i32, rollback: bool) -> (String, String) {
    let good = register_web(e).await;
    let bad =
        register(e, "web", vec![ContainerDefinition::builder().name("app").image("nope").memory(32).build()])
            .await;
    e.client
        .create_service()
        .service_name("web")
        .task_definition(&good)
        .desired_count(desired)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .deployment_circuit_breaker(
                    DeploymentCircuitBreaker::builder().enable(true).rollback(rollback).build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    (good, bad)
}

async fn update_td(e: &Ecsd, name: &str, td: &str) -> Service {
    e.client
        .update_service()
        .service(name)
        .task_definition(td)
        .send()
        .await
        .unwrap()
        .service()
        .unwrap()
        .clone()
}

/// Rolls `desired` tasks from rev 1 to rev 2 at `min`/`max` and returns the most live and
/// fewest healthy tasks seen during the rollout.
async fn roll(desired: i32, min: i32, max: i32) -> (usize, usize, Service) {
    let e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    create_with(&e, "web", &v1, desired, min, max).await;
    until(&e, "web", "steady on rev 1", steady).await;
    let bounds = Bounds::watch(&e, "service:web", 40.0);
    let s = update_td(&e, "web", &v2).await;
    assert_eq!(s.deployments().len(), 2, "the UpdateService answer shows the new deployment");
    let done =
        until(&e, "web", "steady on rev 2", |s| steady(s) && s.task_definition() == Some(v2.as_str())).await;
    let running = tasks(&e, "web", DesiredStatus::Running).await;
    assert_eq!(running.len(), desired as usize);
    assert!(running.iter().all(|t| t.task_definition_arn() == Some(v2.as_str())));
    let (max_live, min_healthy) = bounds.get();
    drop(e);
    (max_live, min_healthy, done)
}

#[tokio::test]
async fn rolling_at_100_200_never_exceeds_twice_the_count_nor_drops_below_it() {
    let (max_live, min_healthy, s) = roll(4, 100, 200).await;
    assert!(max_live <= 8, "at most 8 live tasks, saw {max_live}");
    assert!(max_live > 4, "new tasks start before old ones stop (saw {max_live} live)");
    assert!(min_healthy >= 4, "never fewer than 4 healthy, saw {min_healthy}");
    let m = messages(&s);
    let stopped: usize = m
        .iter()
        .filter_map(|m| m.strip_prefix("(service web) has stopped "))
        .map(|rest| rest.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(stopped, 4, "the 4 old tasks were stopped by the scheduler: {m:#?}");
}

#[tokio::test]
async fn rolling_at_50_100_stays_within_the_count_and_keeps_half() {
    let (max_live, min_healthy, _) = roll(4, 50, 100).await;
    assert!(max_live <= 4, "at most 4 live tasks, saw {max_live}");
    assert!(min_healthy >= 2, "never fewer than 2 healthy, saw {min_healthy}");
}

#[tokio::test]
async fn rolling_at_0_100_stops_the_old_task_before_starting_the_new_one() {
    let (max_live, _, _) = roll(1, 0, 100).await;
    assert_eq!(max_live, 1, "the old task is gone before the new one starts");
}

#[tokio::test]
async fn rolling_at_100_100_stalls_and_says_so_once() {
    let e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    create_with(&e, "web", &v1, 2, 100, 100).await;
    until(&e, "web", "steady on rev 1", steady).await;
    update_td(&e, "web", &v2).await;
    let stall = "(service web) was unable to stop or start tasks during a deployment because of the service deployment configuration. Update the minimumHealthyPercent or maximumPercent value and try again.";
    let s = until(&e, "web", "the stall event", |s| messages(s).iter().any(|m| m == stall)).await;
    assert_eq!(s.deployments().len(), 2);
    for _ in 0..10 {
        e.clock.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = describe(&e, "web").await;
    assert_eq!(messages(&s).iter().filter(|m| *m == stall).count(), 1, "{:#?}", messages(&s));
    assert_eq!(s.deployments()[0].running_count(), 0, "nothing of rev 2 started");
    assert_eq!(s.deployments()[1].running_count(), 2);
}

#[tokio::test]
async fn without_health_checks_a_new_task_counts_as_healthy_only_after_the_stabilization_time() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 1).await;
    until_still(&e, "web", "running", |s| s.running_count() == 1).await;
    e.clock.advance(Duration::from_secs(39));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = describe(&e, "web").await;
    assert_eq!(s.deployments()[0].rollout_state().map(|r| r.as_str()), Some("IN_PROGRESS"), "39 s: not yet");
    e.clock.advance(Duration::from_secs(2));
    until_still(&e, "web", "completed at 40 s", steady).await;
}

#[tokio::test]
async fn the_stabilization_time_is_configurable() {
    let e = Ecsd::start_with(&[("ECSD_SERVICE_STABILIZATION", "1s")]).await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 1).await;
    until_still(&e, "web", "running", |s| s.running_count() == 1).await;
    e.clock.advance(Duration::from_secs(1));
    until_still(&e, "web", "completed after 1 s", steady).await;
}

#[tokio::test]
async fn the_steady_state_event_repeats_only_after_six_hours() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 1).await;
    until(&e, "web", "steady", steady).await;
    let count =
        |s: &Service| messages(s).iter().filter(|m| m.ends_with("has reached a steady state.")).count();
    for _ in 0..5 {
        e.clock.advance(Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(count(&describe(&e, "web").await), 1, "5 hours: once");
    e.clock.advance(Duration::from_secs(3600));
    until_still(&e, "web", "the 6-hour repeat", |s| count(s) == 2).await;
    let s = describe(&e, "web").await;
    let times: Vec<f64> = s.events().iter().map(|ev| ev.created_at().unwrap().as_secs_f64()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
}

#[tokio::test]
async fn desired_count_updates_scale_without_a_deployment_and_scale_in_says_why() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 1).await;
    let s = until(&e, "web", "steady at 1", steady).await;
    let first = s.deployments()[0].id().unwrap().to_owned();
    let s = e.client.update_service().service("web").desired_count(3).send().await.unwrap();
    let s = s.service().unwrap();
    assert_eq!(s.deployments().len(), 1, "a count change starts no deployment");
    assert_eq!(s.desired_count(), 3);
    let s = until(&e, "web", "steady at 3", |s| steady(s) && s.running_count() == 3).await;
    assert_eq!(s.deployments()[0].id(), Some(first.as_str()));
    assert!(
        messages(&s).iter().any(|m| m.starts_with("(service web) has started 2 tasks: ")),
        "{:#?}",
        messages(&s)
    );

    e.client.update_service().service("web").desired_count(0).send().await.unwrap();
    let s = until(&e, "web", "scaled to 0", |s| s.running_count() == 0 && steady(s)).await;
    let stop_event = messages(&s).into_iter().find(|m| m.contains("has stopped")).unwrap();
    assert!(stop_event.starts_with("(service web) has stopped 3 running tasks: (task "), "{stop_event}");
    let stopped = tasks(&e, "web", DesiredStatus::Stopped).await;
    assert_eq!(stopped.len(), 3);
    for t in &stopped {
        assert_eq!(t.stop_code().map(|c| c.as_str()), Some("ServiceSchedulerInitiated"));
        assert_eq!(
            t.stopped_reason(),
            Some(format!("Scaling activity initiated by (deployment {first})").as_str())
        );
        assert!(stop_event.contains(&format!("(task {})", task_id(t))));
    }
    e.client.update_service().service("web").desired_count(2).send().await.unwrap();
    until(&e, "web", "back at 2", |s| steady(s) && s.running_count() == 2).await;
}

#[tokio::test]
async fn which_updates_start_a_deployment() {
    let e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    create(&e, "web", &v1, 1).await;
    let s = until(&e, "web", "steady", steady).await;
    let first = s.deployments()[0].id().unwrap().to_owned();
    // In place: configuration, placement, grace period, exec, tags settings.
    let out = e
        .client
        .update_service()
        .service("web")
        .deployment_configuration(
            DeploymentConfiguration::builder().minimum_healthy_percent(50).maximum_percent(250).build(),
        )
        .placement_strategy(
            PlacementStrategy::builder().r#type(PlacementStrategyType::Binpack).field("memory").build(),
        )
        .health_check_grace_period_seconds(30)
        .enable_execute_command(true)
        .propagate_tags(PropagateTags::Service)
        .enable_ecs_managed_tags(true)
        .send()
        .await
        .unwrap();
    let s = out.service().unwrap();
    assert_eq!(s.deployments().len(), 1);
    assert_eq!(s.deployments()[0].id(), Some(first.as_str()));
    let dc = s.deployment_configuration().unwrap();
    assert_eq!((dc.minimum_healthy_percent(), dc.maximum_percent()), (Some(50), Some(250)));
    assert_eq!(s.health_check_grace_period_seconds(), Some(30));
    assert!(s.enable_execute_command() && s.enable_ecs_managed_tags());
    assert_eq!(s.placement_strategy()[0].field(), Some("memory"));
    // The same task definition again: nothing to deploy.
    let s = update_td(&e, "web", &v1).await;
    assert_eq!(s.deployments().len(), 1);

    // A new revision: a new PRIMARY at index 0, the old one ACTIVE and still COMPLETED.
    let s = update_td(&e, "web", "web").await;
    assert_eq!(s.task_definition(), Some(v2.as_str()), "a family resolves to its latest ACTIVE revision");
    assert_eq!(s.deployments().len(), 2);
    let (new, old) = (&s.deployments()[0], &s.deployments()[1]);
    assert_eq!((new.status(), old.status()), (Some("PRIMARY"), Some("ACTIVE")));
    assert_eq!(new.rollout_state().map(|r| r.as_str()), Some("IN_PROGRESS"));
    assert_eq!(old.id(), Some(first.as_str()));
    assert_eq!(old.rollout_state().map(|r| r.as_str()), Some("COMPLETED"));
    assert_eq!(old.rollout_state_reason(), Some(format!("ECS deployment {first} completed.").as_str()));
    // The in-flight deployment is what ListServiceDeployments shows IN_PROGRESS.
    let listed = e
        .client
        .list_service_deployments()
        .service("web")
        .status(ServiceDeploymentStatus::InProgress)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.service_deployments().len(), 1);
    let sd_arn = listed.service_deployments()[0].service_deployment_arn().unwrap().to_owned();
    assert_eq!(Some(sd_arn.as_str()), s.current_service_deployment());
    let s = until(&e, "web", "rolled", |s| steady(s) && s.task_definition() == Some(v2.as_str())).await;
    let second = s.deployments()[0].id().unwrap().to_owned();
    let d = e.client.describe_service_deployments().service_deployment_arns(&sd_arn).send().await.unwrap();
    let sd = &d.service_deployments()[0];
    assert_eq!(sd.status().map(|s| s.as_str()), Some("SUCCESSFUL"));
    assert!(sd.finished_at().is_some());
    assert_eq!(sd.target_service_revision().unwrap().running_task_count(), 1);
    assert_eq!(sd.source_service_revisions().len(), 1, "rev 1 ran when it started");

    // forceNewDeployment: a new deployment of the same revision, every task replaced.
    let before: BTreeSet<String> =
        tasks(&e, "web", DesiredStatus::Running).await.iter().map(task_id).collect();
    let out = e.client.update_service().service("web").force_new_deployment(true).send().await.unwrap();
    let s = out.service().unwrap();
    assert_eq!(s.deployments().len(), 2);
    assert_ne!(s.deployments()[0].id(), Some(second.as_str()));
    assert_eq!(s.deployments()[0].task_definition(), Some(v2.as_str()));
    until(&e, "web", "forced deployment done", |s| {
        steady(s) && s.deployments()[0].id() != Some(second.as_str())
    })
    .await;
    let after: BTreeSet<String> =
        tasks(&e, "web", DesiredStatus::Running).await.iter().map(task_id).collect();
    assert!(before.is_disjoint(&after), "every task was replaced: {before:?} {after:?}");
}

#[tokio::test]
async fn a_task_that_exits_or_is_stopped_by_a_user_is_replaced_without_a_stopped_event() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 2).await;
    until(&e, "web", "steady", steady).await;
    let running = tasks(&e, "web", DesiredStatus::Running).await;
    e.fake.exit(running[0].containers()[0].runtime_id().unwrap(), 1).await;
    e.client.stop_task().task(running[1].task_arn().unwrap()).reason("testing").send().await.unwrap();
    let gone: BTreeSet<String> = running.iter().map(task_id).collect();
    let replacements = e
        .advancing(STEP, 20, "two replacements running", || async {
            let now: BTreeSet<String> =
                tasks(&e, "web", DesiredStatus::Running).await.iter().map(task_id).collect();
            (now.len() == 2 && now.is_disjoint(&gone)).then_some(now)
        })
        .await;
    let s = until(&e, "web", "steady again", steady).await;
    // Both replacements may start in one pass ("has started 2 tasks") or in two, depending on
    // when the scheduler sees each loss; either way each is announced by a started event.
    for id in &replacements {
        assert!(
            messages(&s).iter().any(|m| m.contains("has started") && m.contains(&format!("(task {id})"))),
            "no started event names {id}: {:#?}",
            messages(&s)
        );
    }
    assert!(!messages(&s).iter().any(|m| m.contains("has stopped")), "{:#?}", messages(&s));
    let user = tasks(&e, "web", DesiredStatus::Stopped).await;
    let by_user = user.iter().find(|t| task_id(t) == task_id(&running[1])).unwrap();
    assert_eq!(by_user.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert_eq!(by_user.stopped_reason(), Some("testing"));
}

fn health_checked(name: &str) -> ContainerDefinition {
    ContainerDefinition::builder()
        .name(name)
        .image("busybox")
        .memory(32)
        .health_check(
            HealthCheck::builder()
                .command("CMD-SHELL")
                .command("true")
                .interval(5)
                .retries(1)
                .timeout(2)
                .build()
                .unwrap(),
        )
        .build()
}

#[tokio::test]
async fn health_checks_decide_health_and_an_unhealthy_task_is_replaced_start_first() {
    let e = Ecsd::start().await;
    let td = register(&e, "hc", vec![health_checked("app")]).await;
    create(&e, "hc", &td, 1).await;
    let s = until_still(&e, "hc", "running", |s| s.running_count() == 1).await;
    assert_eq!(
        s.deployments()[0].rollout_state().map(|r| r.as_str()),
        Some("IN_PROGRESS"),
        "UNKNOWN is not healthy"
    );
    let s = until(&e, "hc", "steady once HEALTHY", steady).await;
    let first = tasks(&e, "hc", DesiredStatus::Running).await.remove(0);
    assert_eq!(first.health_status().map(|h| h.as_str()), Some("HEALTHY"));
    let n = s.events().len();

    e.fake.set_health(first.containers()[0].runtime_id().unwrap(), 1);
    let s = until(&e, "hc", "the unhealthy task replaced", |s| {
        s.running_count() == 1
            && messages(s).iter().any(|m| m.contains("failed container health checks"))
            && steady(s)
    })
    .await;
    let m: Vec<String> = messages(&s)[..s.events().len() - n].to_vec();
    let id = task_id(&first);
    let started = m
        .iter()
        .position(|m| m.ends_with("Amazon ECS replaced 1 tasks due to an unhealthy status."))
        .unwrap();
    let failed = m
        .iter()
        .position(|m| *m == format!("(service hc) (task {id}) failed container health checks."))
        .unwrap();
    let stopped = m
        .iter()
        .position(|m| *m == format!("(service hc) has stopped 1 running tasks: (task {id})."))
        .unwrap();
    // Newest first: the replacement started before the unhealthy task was stopped.
    assert!(stopped < failed && failed < started, "{m:#?}");
    let gone = tasks(&e, "hc", DesiredStatus::Stopped).await;
    let gone = gone.iter().find(|t| task_id(t) == id).unwrap();
    assert_eq!(gone.stop_code().map(|c| c.as_str()), Some("ServiceSchedulerInitiated"));
    assert_eq!(gone.stopped_reason(), Some("Task failed container health checks"));
}

#[tokio::test]
async fn tasks_that_never_start_are_retried_with_a_growing_back_off_until_a_new_deployment() {
    let e = Ecsd::start().await;
    let bad = register(
        &e,
        "bad",
        vec![ContainerDefinition::builder().name("app").image("nope").memory(32).build()],
    )
    .await;
    create(&e, "bad", &bad, 1).await;
    let engine = e.daemon.as_ref().unwrap().engine().clone();
    let of_service = move || -> Vec<Arc<TaskRecord>> {
        engine.tasks("default", None).into_iter().filter(|t| t.group == "service:bad").collect()
    };
    // `n` attempts, all of them failed and stopped (so the clock moves only after each
    // failure is on record).
    let failed = |n: usize| {
        let of_service = of_service.clone();
        async move {
            eventually(10, &format!("{n} failed attempts"), || async {
                let all = of_service();
                (all.len() == n && all.iter().all(|t| t.last == TaskStatus::Stopped)).then_some(())
            })
            .await
        }
    };
    let quiet = || async { tokio::time::sleep(Duration::from_millis(300)).await };
    // The first failure is retried at once; the second waits 10 s.
    failed(2).await;
    quiet().await;
    assert_eq!(of_service().len(), 2, "no third attempt before the back-off ends");
    let s = describe(&e, "bad").await;
    assert!(
        messages(&s)
            .contains(&"(service bad) is unable to consistently start tasks successfully.".to_owned())
    );
    e.clock.advance(Duration::from_secs(10));
    failed(3).await;
    e.clock.advance(Duration::from_secs(10));
    quiet().await;
    assert_eq!(of_service().len(), 3, "the third failure waits 20 s");
    e.clock.advance(Duration::from_secs(10));
    failed(4).await;
    for t in of_service() {
        assert_eq!(t.stop_code, Some(ecsd::model::task::StopCode::TaskFailedToStart));
    }
    // Far into the back-off, a new deployment starts at once.
    let good = register(&e, "bad", vec![container("app")]).await;
    update_td(&e, "bad", &good).await;
    until_still(&e, "bad", "the new deployment's task runs at once", |s| s.running_count() == 1).await;
}

#[tokio::test]
async fn the_circuit_breaker_fails_a_deployment_and_rolls_back_to_the_last_completed_one() {
    let e = Ecsd::start().await;
    let (good, bad) = breaker_service(&e, 3, true).await;
    let s = until(&e, "web", "steady", steady).await;
    let first = s.deployments()[0].id().unwrap().to_owned();
    let s = update_td(&e, "web", &bad).await;
    let failed = s.deployments()[0].id().unwrap().to_owned();
    let sd_arn = s.current_service_deployment().unwrap().to_owned();
    let s = until(&e, "web", "rolled back and steady", |s| {
        steady(s) && s.deployments()[0].id() != Some(failed.as_str())
    })
    .await;
    assert_eq!(
        s.task_definition(),
        Some(good.as_str()),
        "the service's task definition follows the rollback"
    );
    let rollback = s.deployments()[0].id().unwrap().to_owned();
    assert_ne!(rollback, first, "the rollback is a new deployment");
    let m = messages(&s);
    let failed_at = m
        .iter()
        .position(|m| {
            *m == format!("(service web) (deployment {failed}) deployment failed: tasks failed to start.")
        })
        .unwrap_or_else(|| panic!("{m:#?}"));
    let back_at =
        m.iter().position(|m| *m == format!("(service web) rolling back to deployment {first}.")).unwrap();
    assert!(back_at < failed_at, "{m:#?}");
    let running = tasks(&e, "web", DesiredStatus::Running).await;
    assert_eq!(running.len(), 3);
    assert!(
        running
            .iter()
            .all(|t| t.task_definition_arn() == Some(good.as_str())
                && t.started_by() == Some(rollback.as_str()))
    );
    let d = e.client.describe_service_deployments().service_deployment_arns(&sd_arn).send().await.unwrap();
    let sd = &d.service_deployments()[0];
    assert_eq!(sd.status().map(|s| s.as_str()), Some("ROLLBACK_SUCCESSFUL"));
    let cb = sd.deployment_circuit_breaker().unwrap();
    assert_eq!((cb.status().map(|s| s.as_str()), cb.threshold()), (Some("TRIGGERED"), 3));
    assert!(cb.failure_count() >= 3);
    assert!(
        sd.rollback()
            .unwrap()
            .service_revision_arn()
            .unwrap()
            .starts_with(&arn("service-revision/default/web/"))
    );
}

#[tokio::test]
async fn without_rollback_a_tripped_deployment_stays_failed_and_launches_no_more() {
    let e = Ecsd::start().await;
    let (_, bad) = breaker_service(&e, 1, false).await;
    until(&e, "web", "steady", steady).await;
    let s = update_td(&e, "web", &bad).await;
    let sd_arn = s.current_service_deployment().unwrap().to_owned();
    // Threshold 3 with desired 1: three failed starts (with the back-off between them).
    let s = until(&e, "web", "FAILED", |s| {
        s.deployments()[0].rollout_state().map(|r| r.as_str()) == Some("FAILED")
    })
    .await;
    assert_eq!(s.deployments()[0].failed_tasks(), 3);
    assert_eq!(
        s.deployments()[0].rollout_state_reason(),
        Some("ECS deployment circuit breaker: tasks failed to start.")
    );
    assert_eq!(s.deployments().len(), 2, "the old deployment keeps running");
    assert_eq!(s.deployments()[1].running_count(), 1);
    let engine = e.daemon.as_ref().unwrap().engine().clone();
    let count = || {
        engine
            .tasks("default", None)
            .iter()
            .filter(|t| t.definition.task_definition_arn.as_deref() == Some(bad.as_str()))
            .count()
    };
    let n = count();
    for _ in 0..10 {
        e.clock.advance(Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(), n, "a FAILED deployment starts nothing");
    let d = e.client.describe_service_deployments().service_deployment_arns(&sd_arn).send().await.unwrap();
    assert_eq!(d.service_deployments()[0].status().map(|s| s.as_str()), Some("STOPPED"));
}

#[tokio::test]
async fn create_service_refuses_what_ecs_refuses_with_its_exception_and_message() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    let awsvpc = e
        .client
        .register_task_definition()
        .family("vpc")
        .network_mode(NetworkMode::Awsvpc)
        .container_definitions(container("app"))
        .send()
        .await
        .unwrap();
    let awsvpc = awsvpc.task_definition().unwrap().task_definition_arn().unwrap().to_owned();
    let c = &e.client;
    let cases: Vec<(
        &str,
        aws_sdk_ecs::operation::create_service::builders::CreateServiceFluentBuilder,
        &str,
        &str,
    )> = vec![
        (
            "awsvpc without a network configuration",
            c.create_service().service_name("a").task_definition(&awsvpc).desired_count(1),
            "InvalidParameterException",
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
        ),
        (
            "an unknown cluster",
            c.create_service().cluster("nope").service_name("a").task_definition(&td).desired_count(1),
            "ClusterNotFoundException",
            "Cluster not found.",
        ),
        (
            "an unknown task definition",
            c.create_service().service_name("a").task_definition("missing:1").desired_count(1),
            "ClientException",
            "TaskDefinition not found.",
        ),
        (
            "a daemon with a desired count",
            c.create_service()
                .service_name("a")
                .task_definition(&td)
                .scheduling_strategy(SchedulingStrategy::Daemon)
                .desired_count(1),
            "InvalidParameterException",
            "The daemon scheduling strategy does not support a desired count for services.",
        ),
        (
            "a daemon above 100 %",
            c.create_service()
                .service_name("a")
                .task_definition(&td)
                .scheduling_strategy(SchedulingStrategy::Daemon)
                .deployment_configuration(DeploymentConfiguration::builder().maximum_percent(200).build()),
            "InvalidParameterException",
            "The daemon scheduling strategy does not support values above 100 for maximumPercent.",
        ),
        (
            "a launch type and a capacity provider strategy",
            c.create_service()
                .service_name("a")
                .task_definition(&td)
                .desired_count(1)
                .launch_type(LaunchType::Ec2)
                .capacity_provider_strategy(
                    CapacityProviderStrategyItem::builder().capacity_provider("FARGATE").build().unwrap(),
                ),
            "InvalidParameterException",
            "Specifying both a launch type and capacity provider strategy is not supported.",
        ),
        (
            "a distinctInstance constraint with an expression",
            c.create_service().service_name("a").task_definition(&td).desired_count(1).placement_constraints(
                PlacementConstraint::builder()
                    .r#type(PlacementConstraintType::DistinctInstance)
                    .expression("attribute:x == y")
                    .build(),
            ),
            "InvalidParameterException",
            "A placement constraint of type distinctInstance cannot have an expression.",
        ),
    ];
    for (what, call, exception, message) in cases {
        let (code, msg) = err(call.send().await.unwrap_err());
        assert_eq!((code.as_str(), msg.as_str()), (exception, message), "{what}");
    }
    let (code, msg) = err(c
        .create_service()
        .service_name("a")
        .task_definition(&td)
        .desired_count(-1)
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException", "{msg}");
}

#[tokio::test]
async fn names_are_unique_while_active_or_draining_and_free_again_once_inactive() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    let first = e
        .client
        .create_service()
        .service_name("web")
        .task_definition(&td)
        .desired_count(1)
        .client_token("token-1")
        .send()
        .await
        .unwrap();
    let arn_1 = first.service().unwrap().service_arn().unwrap().to_owned();
    // A retry of the same request with the same token is the same service.
    let again = e
        .client
        .create_service()
        .service_name("web")
        .task_definition(&td)
        .desired_count(1)
        .client_token("token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.service().unwrap().created_at(), first.service().unwrap().created_at());
    let (code, msg) = err(create_err(&e, "web", &td, 2).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "Creation of service was not idempotent.")
    );

    until(&e, "web", "steady", steady).await;
    let deleted = e.client.delete_service().service("web").force(true).send().await.unwrap();
    assert_eq!(deleted.service().unwrap().status(), Some("DRAINING"));
    let (code, msg) = err(create_err(&e, "web", &td, 1).await);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "Unable to Start a service that is still Draining.")
    );
    until(&e, "web", "INACTIVE", |s| s.status() == Some("INACTIVE")).await;
    let fresh = create(&e, "web", &td, 1).await;
    assert_eq!(fresh.service_arn(), Some(arn_1.as_str()));
    assert_eq!(fresh.status(), Some("ACTIVE"));
    assert!(fresh.created_at() > first.service().unwrap().created_at(), "a fresh service");
    assert!(fresh.events().is_empty());
    let listed = e.client.list_service_deployments().service("web").send().await.unwrap();
    assert_eq!(listed.service_deployments().len(), 1, "the old service's deployments are gone");
}

async fn create_err(
    e: &Ecsd,
    name: &str,
    td: &str,
    desired: i32,
) -> aws_sdk_ecs::error::SdkError<
    aws_sdk_ecs::operation::create_service::CreateServiceError,
    aws_sdk_ecs::config::http::HttpResponse,
> {
    e.client
        .create_service()
        .service_name(name)
        .task_definition(td)
        .desired_count(desired)
        .send()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn delete_service_needs_force_or_zero_then_drains_to_inactive_which_stays_describable() {
    let e = Ecsd::start_with(&[("ECSD_SERVICE_RETENTION", "2h")]).await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 2).await;
    until(&e, "web", "steady", steady).await;
    let (code, msg) = err(e.client.delete_service().service("web").send().await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "The service cannot be stopped while it is scaled above 0.")
    );
    let (code, _) = err(e.client.delete_cluster().cluster("default").send().await.unwrap_err());
    assert_eq!(code, "ClusterContainsServicesException");

    let out = e.client.delete_service().service("web").force(true).send().await.unwrap();
    let s = out.service().unwrap();
    assert_eq!((s.status(), s.desired_count()), (Some("DRAINING"), 0));
    let listed = e.client.list_services().send().await.unwrap();
    assert!(listed.service_arns().is_empty(), "DRAINING services are not listed");
    let (code, msg) =
        err(e.client.update_service().service("web").desired_count(1).send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ServiceNotActiveException", "Service was not ACTIVE."));
    let s = until(&e, "web", "INACTIVE", |s| s.status() == Some("INACTIVE")).await;
    assert_eq!(s.running_count(), 0);
    let stopped = tasks(&e, "web", DesiredStatus::Stopped).await;
    assert_eq!(stopped.len(), 2);
    assert!(stopped.iter().all(|t| t.stop_code().map(|c| c.as_str()) == Some("ServiceSchedulerInitiated")));
    let c = e.client.describe_clusters().clusters("default").send().await.unwrap();
    assert_eq!(c.clusters()[0].active_services_count(), 0);
    let (code, msg) =
        err(e.client.update_service().service("web").desired_count(1).send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ServiceNotActiveException", "Service was not ACTIVE."));

    // Still describable an hour later; forgotten after the retention time.
    e.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(describe(&e, "web").await.status(), Some("INACTIVE"));
    e.clock.advance(Duration::from_secs(3600 + 120));
    eventually(10, "forgotten", || async {
        let out = e.client.describe_services().services("web").send().await.unwrap();
        (out.failures().len() == 1).then_some(())
    })
    .await;
    e.client.delete_cluster().cluster("default").send().await.unwrap();
}

#[tokio::test]
async fn unknown_services_are_not_found_and_describe_reports_them_missing() {
    let e = Ecsd::start().await;
    let (code, msg) =
        err(e.client.update_service().service("nope").desired_count(1).send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ServiceNotFoundException", "Service not found."));
    let (code, _) = err(e.client.delete_service().service("nope").send().await.unwrap_err());
    assert_eq!(code, "ServiceNotFoundException");
    let (code, _) = err(e.client.list_tasks().service_name("nope").send().await.unwrap_err());
    assert_eq!(code, "ServiceNotFoundException");
    let out = e
        .client
        .describe_services()
        .services("nope")
        .services(arn("service/default/gone"))
        .send()
        .await
        .unwrap();
    assert!(out.services().is_empty());
    let failures: Vec<(Option<&str>, Option<&str>)> =
        out.failures().iter().map(|f| (f.arn(), f.reason())).collect();
    assert_eq!(
        failures,
        vec![
            (Some(arn("service/default/nope").as_str()), Some("MISSING")),
            (Some(arn("service/default/gone").as_str()), Some("MISSING")),
        ]
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("s{i}")).collect();
    let (code, _) = err(e.client.describe_services().set_services(Some(eleven)).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    let out = e.client.list_services_by_namespace().namespace("local").send().await.unwrap();
    assert!(out.service_arns().is_empty());
}

#[tokio::test]
async fn list_services_pages_and_filters() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    for i in 0..12 {
        create(&e, &format!("s{i:02}"), &td, 0).await;
    }
    e.client
        .create_service()
        .service_name("daemon")
        .task_definition(&td)
        .scheduling_strategy(SchedulingStrategy::Daemon)
        .send()
        .await
        .unwrap();
    let first = e.client.list_services().send().await.unwrap();
    assert_eq!(first.service_arns().len(), 10, "10 per page by default");
    let rest = e.client.list_services().next_token(first.next_token().unwrap()).send().await.unwrap();
    assert_eq!(rest.service_arns().len(), 3);
    assert!(rest.next_token().is_none());
    let all: BTreeSet<&str> =
        first.service_arns().iter().chain(rest.service_arns()).map(String::as_str).collect();
    assert_eq!(all.len(), 13);
    let five = e.client.list_services().max_results(5).send().await.unwrap();
    assert_eq!(five.service_arns().len(), 5);
    let daemons =
        e.client.list_services().scheduling_strategy(SchedulingStrategy::Daemon).send().await.unwrap();
    assert_eq!(daemons.service_arns(), [arn("service/default/daemon")]);
    let fargate = e.client.list_services().launch_type(LaunchType::Fargate).send().await.unwrap();
    assert!(fargate.service_arns().is_empty());
    let ec2 = e.client.list_services().launch_type(LaunchType::Ec2).max_results(100).send().await.unwrap();
    assert_eq!(ec2.service_arns().len(), 13);
    let (code, _) = err(e.client.list_services().max_results(101).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
}

#[tokio::test]
async fn a_capacity_provider_strategy_means_no_launch_type() {
    let e = Ecsd::start().await;
    let out = e
        .client
        .register_task_definition()
        .family("fg")
        .network_mode(NetworkMode::Awsvpc)
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(container("app"))
        .send()
        .await
        .unwrap();
    let td = out.task_definition().unwrap().task_definition_arn().unwrap().to_owned();
    let out = e
        .client
        .create_service()
        .service_name("cp")
        .task_definition(&td)
        .desired_count(0)
        .capacity_provider_strategy(
            CapacityProviderStrategyItem::builder().capacity_provider("FARGATE").weight(1).build().unwrap(),
        )
        .network_configuration(
            NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder().subnets("subnet-default").build().unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let s = out.service().unwrap();
    assert!(s.launch_type().is_none());
    assert_eq!(s.capacity_provider_strategy()[0].capacity_provider(), "FARGATE");
    assert_eq!(s.platform_version(), Some("LATEST"));
    let vpc = s.network_configuration().unwrap().awsvpc_configuration().unwrap();
    assert_eq!(vpc.assign_public_ip().map(|a| a.as_str()), Some("DISABLED"), "defaulted as ECS echoes it");
    assert!(s.role_arn().unwrap().ends_with(":role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS"));
}

#[tokio::test]
async fn tags_managed_and_propagated_reach_new_tasks_and_describe_includes_them_on_request() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    e.client
        .create_service()
        .service_name("web")
        .task_definition(&td)
        .desired_count(1)
        .enable_ecs_managed_tags(true)
        .propagate_tags(PropagateTags::Service)
        .tags(Tag::builder().key("team").value("a").build())
        .send()
        .await
        .unwrap();
    let without = describe(&e, "web").await;
    assert!(without.tags().is_empty(), "no tags without include TAGS");
    let with = e.client.describe_services().services("web").include(ServiceField::Tags).send().await.unwrap();
    assert_eq!(with.services()[0].tags()[0].key(), Some("team"));
    let service_arn = arn("service/default/web");
    e.client
        .tag_resource()
        .resource_arn(&service_arn)
        .tags(Tag::builder().key("env").value("dev").build())
        .send()
        .await
        .unwrap();
    let listed = e.client.list_tags_for_resource().resource_arn(&service_arn).send().await.unwrap();
    assert_eq!(listed.tags().len(), 2);
    until_still(&e, "web", "the first task", |s| s.running_count() == 1).await;
    let first = task_id(&tasks(&e, "web", DesiredStatus::Running).await[0]);
    e.client.update_service().service("web").desired_count(2).send().await.unwrap();
    until_still(&e, "web", "running", |s| s.running_count() == 2).await;
    // The second task was launched after the service got its second tag.
    let t = tasks(&e, "web", DesiredStatus::Running).await.into_iter().find(|t| task_id(t) != first).unwrap();
    let d = e
        .client
        .describe_tasks()
        .tasks(t.task_arn().unwrap())
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .unwrap();
    let tags: BTreeMap<String, String> = d.tasks()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(tags.get("aws:ecs:clusterName").map(String::as_str), Some("default"));
    assert_eq!(tags.get("aws:ecs:serviceName").map(String::as_str), Some("web"));
    assert_eq!(tags.get("team").map(String::as_str), Some("a"));
    assert_eq!(tags.get("env").map(String::as_str), Some("dev"));
}

#[tokio::test]
async fn list_tasks_by_service_name_lists_only_that_services_tasks() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "a", &td, 2).await;
    create(&e, "b", &td, 1).await;
    e.client.run_task().task_definition(&td).send().await.unwrap();
    until_still(&e, "a", "a running", |s| s.running_count() == 2).await;
    until_still(&e, "b", "b running", |s| s.running_count() == 1).await;
    let a = tasks(&e, "a", DesiredStatus::Running).await;
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|t| t.group() == Some("service:a")));
    let one = e.client.list_tasks().service_name("b").max_results(1).send().await.unwrap();
    assert_eq!(one.task_arns().len(), 1);
    assert!(tasks(&e, "a", DesiredStatus::Stopped).await.is_empty());
}

#[tokio::test]
async fn a_daemon_service_runs_one_task_here_and_replaces_it_stop_first() {
    let e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    let out = e
        .client
        .create_service()
        .service_name("d")
        .task_definition(&v1)
        .scheduling_strategy(SchedulingStrategy::Daemon)
        .send()
        .await
        .unwrap();
    let s = out.service().unwrap();
    assert_eq!(s.desired_count(), 1, "one container instance: one daemon task");
    let dc = s.deployment_configuration().unwrap();
    assert_eq!((dc.maximum_percent(), dc.minimum_healthy_percent()), (Some(100), Some(0)));
    until(&e, "d", "steady", steady).await;
    let (code, _) = err(e.client.update_service().service("d").desired_count(2).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    let bounds = Bounds::watch(&e, "service:d", 40.0);
    update_td(&e, "d", &v2).await;
    until(&e, "d", "rolled", |s| steady(s) && s.task_definition() == Some(v2.as_str())).await;
    assert_eq!(bounds.get().0, 1, "the old task stops before the new one starts");
}

#[tokio::test]
async fn distinct_instance_places_one_task_and_says_why_not_more() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    let out = e
        .client
        .create_service()
        .service_name("one")
        .task_definition(&td)
        .desired_count(2)
        .placement_constraints(
            PlacementConstraint::builder().r#type(PlacementConstraintType::DistinctInstance).build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.service().unwrap().placement_constraints()[0].r#type(),
        Some(&PlacementConstraintType::DistinctInstance)
    );
    let s = until(&e, "one", "the placement event", |s| {
        s.running_count() == 1
            && messages(s).iter().any(|m| m.starts_with("(service one) was unable to place a task because no container instance met all of its requirements."))
    })
    .await;
    assert_eq!(s.running_count(), 1);
    let placement = messages(&s).into_iter().filter(|m| m.contains("unable to place")).count();
    for _ in 0..5 {
        e.clock.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = describe(&e, "one").await;
    assert_eq!(
        messages(&s).into_iter().filter(|m| m.contains("unable to place")).count(),
        placement,
        "said once"
    );
    assert_eq!(s.running_count(), 1);
}

#[tokio::test]
async fn a_fixed_host_port_cannot_roll_at_100_200_on_one_host() {
    let e = Ecsd::start().await;
    let web = |family: &'static str| {
        e.client
            .register_task_definition()
            .family(family)
            .network_mode(NetworkMode::Bridge)
            .container_definitions(
                ContainerDefinition::builder()
                    .name("app")
                    .image("busybox")
                    .memory(32)
                    .port_mappings(PortMapping::builder().container_port(80).host_port(18080).build())
                    .build(),
            )
            .send()
    };
    let v1 = web("port").await.unwrap().task_definition().unwrap().task_definition_arn().unwrap().to_owned();
    let v2 = web("port").await.unwrap().task_definition().unwrap().task_definition_arn().unwrap().to_owned();
    create(&e, "port", &v1, 1).await;
    until(&e, "port", "steady", steady).await;
    update_td(&e, "port", &v2).await;
    let s = until(&e, "port", "the port event", |s| {
        messages(s).iter().any(|m| m.ends_with("is already using a port required by your task. For more information, see the Troubleshooting section of the Amazon ECS Developer Guide."))
    })
    .await;
    assert_eq!(s.deployments().len(), 2);
    assert_eq!(s.deployments()[1].running_count(), 1, "the old task keeps running");
}

#[tokio::test]
async fn tasks_that_crash_after_running_are_replaced_at_once() {
    let e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 1).await;
    for round in 0..4 {
        let t = eventually(10, "a running task", || async {
            let t = tasks(&e, "web", DesiredStatus::Running).await;
            t.into_iter().find(|t| t.last_status() == Some("RUNNING"))
        })
        .await;
        e.fake.exit(t.containers()[0].runtime_id().unwrap(), 1).await;
        // No clock movement: the replacement must not wait.
        eventually(10, &format!("replacement {round}"), || async {
            let now = tasks(&e, "web", DesiredStatus::Running).await;
            now.iter().any(|n| task_id(n) != task_id(&t)).then_some(())
        })
        .await;
    }
    let s = describe(&e, "web").await;
    assert!(!messages(&s).iter().any(|m| m.contains("unable to consistently start")), "{:#?}", messages(&s));
}

#[tokio::test]
async fn stop_service_deployment_rolls_back_to_the_previous_revision() {
    let e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    create(&e, "web", &v1, 1).await;
    until(&e, "web", "steady", steady).await;
    let s = update_td(&e, "web", &v2).await;
    let sd = s.current_service_deployment().unwrap().to_owned();
    let out = e
        .client
        .stop_service_deployment()
        .service_deployment_arn(&sd)
        .stop_type(aws_sdk_ecs::types::StopServiceDeploymentStopType::Rollback)
        .send()
        .await
        .unwrap();
    assert_eq!(out.service_deployment_arn(), Some(sd.as_str()));
    let s = until(&e, "web", "rolled back", |s| steady(s) && s.task_definition() == Some(v1.as_str())).await;
    assert_eq!(s.deployments()[0].task_definition(), Some(v1.as_str()));
    let d = e.client.describe_service_deployments().service_deployment_arns(&sd).send().await.unwrap();
    assert_eq!(d.service_deployments()[0].status().map(|s| s.as_str()), Some("ROLLBACK_SUCCESSFUL"));
    let (code, _) =
        err(e.client.stop_service_deployment().service_deployment_arn(&sd).send().await.unwrap_err());
    assert_eq!(code, "ConflictException");
    let missing = arn("service-deployment/default/web/nope");
    let (code, _) =
        err(e.client.stop_service_deployment().service_deployment_arn(&missing).send().await.unwrap_err());
    assert_eq!(code, "ServiceDeploymentNotFoundException");
    let d = e.client.describe_service_deployments().service_deployment_arns(&missing).send().await.unwrap();
    assert_eq!(d.failures()[0].reason(), Some("MISSING"));
    // The revisions are describable.
    let rev = s.current_service_revisions()[0].arn().unwrap().to_owned();
    let r = e
        .client
        .describe_service_revisions()
        .service_revision_arns(&rev)
        .service_revision_arns(arn("service-revision/default/web/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.service_revisions()[0].task_definition(), Some(v1.as_str()));
    assert_eq!(r.service_revisions()[0].container_images()[0].container_name(), Some("app"));
    assert_eq!(r.failures()[0].reason(), Some("MISSING"));
}

#[tokio::test]
async fn after_a_restart_services_resume_without_new_deployments_or_duplicate_tasks() {
    let mut e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    create(&e, "web", &v1, 3).await;
    until(&e, "web", "steady", steady).await;
    let s = update_td(&e, "web", &v2).await;
    let ids: Vec<String> = s.deployments().iter().map(|d| d.id().unwrap().to_owned()).collect();
    until_still(&e, "web", "new tasks started", |s| s.deployments()[0].running_count() == 3).await;
    e.restart().await;
    let s = describe(&e, "web").await;
    let after: Vec<String> = s.deployments().iter().map(|d| d.id().unwrap().to_owned()).collect();
    assert_eq!(after, ids, "no spurious deployment");
    let bounds = Bounds::watch(&e, "service:web", 40.0);
    let s =
        until(&e, "web", "steady on rev 2", |s| steady(s) && s.task_definition() == Some(v2.as_str())).await;
    assert_eq!(s.deployments()[0].id(), Some(ids[0].as_str()));
    assert!(bounds.get().0 <= 6);
    assert_eq!(tasks(&e, "web", DesiredStatus::Running).await.len(), 3, "no duplicates");

    // A task lost with the runtime while ecsd was down is STOPPED and replaced.
    let lost = tasks(&e, "web", DesiredStatus::Running).await.remove(0);
    e.daemon.take().unwrap().shutdown().await.unwrap();
    e.fake.forget(lost.containers()[0].runtime_id().unwrap());
    e.restart().await;
    e.advancing(STEP, 20, "the lost task replaced", || async {
        let running = tasks(&e, "web", DesiredStatus::Running).await;
        (running.len() == 3 && running.iter().all(|t| task_id(t) != task_id(&lost))).then_some(())
    })
    .await;
    assert_eq!(describe(&e, "web").await.deployments().len(), 1);
}

#[tokio::test]
async fn ecsd_services_shows_each_deployment_and_the_last_event() {
    use ecsd::cli::services::{Query, fetch, json, table};
    let e = Ecsd::start().await;
    let v1 = register_web(&e).await;
    let v2 = register_web(&e).await;
    create(&e, "web", &v1, 2).await;
    until(&e, "web", "steady", steady).await;
    update_td(&e, "web", &v2).await;
    until_still(&e, "web", "both deployments running", |s| s.running_count() == 4).await;
    let q = Query { endpoint: e.url.clone(), cluster: None, services: vec![] };
    let services = fetch(&q).await.unwrap();
    let t = table(&services);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[1].starts_with("web "), "{t}");
    assert!(lines[1].contains(" web:2 ") && lines[1].contains("has started 2 tasks"), "{t}");
    assert!(
        lines[2].starts_with("  PRIMARY ecs-svc/") && lines[2].contains("web:2  desired 2 running 2"),
        "{t}"
    );
    assert!(lines[3].starts_with("  ACTIVE  ecs-svc/") && lines[3].ends_with("COMPLETED"), "{t}");
    let j: serde_json::Value = serde_json::from_str(&json(&services)).unwrap();
    assert_eq!(j["services"][0]["deployments"].as_array().unwrap().len(), 2);
    let missing = Query { endpoint: e.url.clone(), cluster: Some("nope".into()), services: vec![] };
    let err = fetch(&missing).await.unwrap_err();
    assert_eq!(err.to_string(), "ClusterNotFoundException: Cluster not found.");
}

/// UpdateTaskProtection / GetTaskProtection with ECS's shapes and failures; a protected task
/// survives a scale-in to 0 (the service says why) until its protection is cleared, and
/// protection lapses on the daemon's clock.
#[tokio::test]
async fn protected_tasks_survive_scale_in_until_cleared_or_expired() {
    let mut e = Ecsd::start().await;
    let td = register_web(&e).await;
    create(&e, "web", &td, 2).await;
    until(&e, "web", "steady at 2", |s| steady(s) && s.running_count() == 2).await;
    let running = tasks(&e, "web", DesiredStatus::Running).await;
    let (kept, other) =
        (running[0].task_arn().unwrap().to_owned(), running[1].task_arn().unwrap().to_owned());

    // Defaults: 2 hours; the answer names the task by ARN. ids and ARNs both work.
    let before = e.clock.now();
    let out = e
        .client
        .update_task_protection()
        .cluster("default")
        .tasks(task_id(&running[0]))
        .protection_enabled(true)
        .send()
        .await
        .unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    let p = &out.protected_tasks()[0];
    assert_eq!((p.task_arn(), p.protection_enabled()), (Some(kept.as_str()), true));
    let expires = p.expiration_date().unwrap().as_secs_f64();
    assert!((expires - (before + 7200.0)).abs() < 2.0, "{expires} vs {before}");

    // Missing and standalone tasks are failures, not errors; bad expiries are errors.
    let standalone = e.client.run_task().task_definition("web").send().await.unwrap().tasks()[0].clone();
    let out = e
        .client
        .update_task_protection()
        .cluster("default")
        .tasks("0123456789abcdef0123456789abcdef")
        .tasks(standalone.task_arn().unwrap())
        .protection_enabled(true)
        .send()
        .await
        .unwrap();
    assert!(out.protected_tasks().is_empty());
    let failures: Vec<(&str, &str)> =
        out.failures().iter().map(|f| (f.arn().unwrap(), f.reason().unwrap())).collect();
    assert_eq!(
        failures,
        [
            (arn("task/default/0123456789abcdef0123456789abcdef").as_str(), "MISSING"),
            (standalone.task_arn().unwrap(), "TASK_NOT_VALID")
        ]
    );
    for minutes in [0, 2881] {
        let (code, message) = err(e
            .client
            .update_task_protection()
            .cluster("default")
            .tasks(&kept)
            .protection_enabled(true)
            .expires_in_minutes(minutes)
            .send()
            .await
            .unwrap_err());
        assert_eq!(code, "InvalidParameterException");
        assert_eq!(
            message,
            format!("expiresInMinutes must be between 1 and 2880 (48 hours); it is {minutes}.")
        );
    }

    // Scale-in to 0: the unprotected task goes, the protected one stays and the service says why.
    e.client.update_service().service("web").desired_count(0).send().await.unwrap();
    until(&e, "web", "the unprotected task stopped", |s| s.running_count() == 1).await;
    let left = tasks(&e, "web", DesiredStatus::Running).await;
    assert_eq!(left.iter().map(|t| t.task_arn().unwrap()).collect::<Vec<_>>(), [kept.as_str()]);
    let stopped = tasks(&e, "web", DesiredStatus::Stopped).await;
    assert!(stopped.iter().any(|t| t.task_arn() == Some(other.as_str())));
    let s = until(&e, "web", "the protection event", |s| {
        messages(s)
            .iter()
            .any(|m| m == "(service web) was unable to scale in due to (reason: 1 tasks under protection).")
    })
    .await;
    assert_eq!(s.running_count(), 1);
    let got = e.client.get_task_protection().cluster("default").tasks(&kept).send().await.unwrap();
    assert!(got.protected_tasks()[0].protection_enabled());
    // Durable: a restarted ecsd keeps the protection, and the task.
    e.restart().await;
    let got = e.client.get_task_protection().cluster("default").tasks(&kept).send().await.unwrap();
    assert!(got.protected_tasks()[0].protection_enabled());
    assert_eq!(tasks(&e, "web", DesiredStatus::Running).await.len(), 1);

    // Cleared: stopped at once (no clock step needed beyond the scheduler's own pass).
    let out = e
        .client
        .update_task_protection()
        .cluster("default")
        .tasks(&kept)
        .protection_enabled(false)
        .send()
        .await
        .unwrap();
    let p = &out.protected_tasks()[0];
    assert_eq!((p.protection_enabled(), p.expiration_date()), (false, None));
    until(&e, "web", "scaled to 0", |s| s.running_count() == 0).await;

    // Expiry: protection for 1 minute keeps a task through a scale-in until the clock passes it.
    e.client.update_service().service("web").desired_count(1).send().await.unwrap();
    until(&e, "web", "back at 1", |s| steady(s) && s.running_count() == 1).await;
    let one = tasks(&e, "web", DesiredStatus::Running).await[0].task_arn().unwrap().to_owned();
    e.client
        .update_task_protection()
        .cluster("default")
        .tasks(&one)
        .protection_enabled(true)
        .expires_in_minutes(1)
        .send()
        .await
        .unwrap();
    e.client.update_service().service("web").desired_count(0).send().await.unwrap();
    until_still(&e, "web", "the protection event", |s| {
        messages(s).iter().filter(|m| m.contains("tasks under protection")).count() == 2
    })
    .await;
    assert_eq!(describe(&e, "web").await.running_count(), 1);
    let s = until(&e, "web", "scaled to 0 after the protection lapsed", |s| s.running_count() == 0).await;
    assert_eq!(s.desired_count(), 0);
    let got = e.client.get_task_protection().cluster("default").tasks(&one).send().await.unwrap();
    assert!(got.failures().is_empty() || got.failures()[0].reason() == Some("TASK_NOT_VALID"));
}
