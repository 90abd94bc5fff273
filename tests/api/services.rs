//! Services through the API, on the in-memory runtime and the daemon's manual clock: the
//! shapes and errors of the service operations, and the scheduler's rules that need no real
//! container (rolling bounds, replacement, scaling, the circuit breaker and its rollback,
//! back-off, events and their 6-hour repeat, deletion, restarts).

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ecs::types::{
    ContainerDefinition, DesiredStatus, LaunchType, PropagateTags, SchedulingStrategy, Service, Task,
};

use crate::common::{Ecsd, arn, eventually};

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
