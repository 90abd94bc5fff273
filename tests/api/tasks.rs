//! The task lifecycle through the API, on the in-memory runtime: what ECS shows at each
//! step, essential and non-essential exits, StopTask and stop timeouts, dependsOn, health
//! checks, failures to start, restarts, and the listing and filtering of tasks.

use aws_sdk_ecs::types::{
    ContainerCondition, ContainerDefinition, ContainerDependency, ContainerOverride, DesiredStatus,
    HealthCheck, KeyValuePair, LaunchType, NetworkMode, PropagateTags, Tag, TaskOverride,
};

use crate::common::{Ecsd, arn, err, eventually};
use ecsd::runtime::ProcessStatus;

fn container(name: &str) -> ContainerDefinition {
    ContainerDefinition::builder().name(name).image("busybox").memory(32).build()
}

async fn register(e: &Ecsd, family: &str, containers: Vec<ContainerDefinition>) {
    e.client
        .register_task_definition()
        .family(family)
        .set_container_definitions(Some(containers))
        .send()
        .await
        .unwrap();
}

async fn describe(e: &Ecsd, task_arn: &str) -> aws_sdk_ecs::types::Task {
    let out = e.client.describe_tasks().tasks(task_arn).send().await.unwrap();
    out.tasks()[0].clone()
}

async fn wait_status(e: &Ecsd, task_arn: &str, status: &str) -> aws_sdk_ecs::types::Task {
    eventually(10, &format!("task {status}"), || async {
        let t = describe(e, task_arn).await;
        (t.last_status() == Some(status)).then_some(t)
    })
    .await
}

async fn run(e: &Ecsd, family: &str) -> aws_sdk_ecs::types::Task {
    let out = e.client.run_task().task_definition(family).send().await.unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.tasks()[0].clone()
}

fn runtime_id(t: &aws_sdk_ecs::types::Task, name: &str) -> String {
    t.containers().iter().find(|c| c.name() == Some(name)).unwrap().runtime_id().unwrap().to_owned()
}

#[tokio::test]
async fn run_task_walks_the_lifecycle_and_reports_what_ecs_reports() {
    let e = Ecsd::start().await;
    register(&e, "web", vec![container("app")]).await;
    let out = e.client.run_task().task_definition("web").started_by("me").send().await.unwrap();
    let t = &out.tasks()[0];
    assert_eq!(t.last_status(), Some("PROVISIONING"));
    assert_eq!(t.desired_status(), Some("RUNNING"));
    assert_eq!(t.group(), Some("family:web"));
    assert_eq!(t.started_by(), Some("me"));
    assert_eq!(t.launch_type(), Some(&LaunchType::Ec2));
    assert_eq!(t.task_definition_arn(), Some(arn("task-definition/web:1").as_str()));
    assert_eq!(t.cluster_arn(), Some(arn("cluster/default").as_str()));
    assert!(t.task_arn().unwrap().starts_with(&arn("task/default/")));
    assert!(t.container_instance_arn().unwrap().starts_with(&arn("container-instance/default/")));
    let c = &t.containers()[0];
    assert_eq!(c.runtime_id().unwrap().len(), 64);
    assert!(c.container_arn().unwrap().starts_with(&arn("container/default/")));
    assert_eq!((c.last_status(), c.memory()), (Some("PENDING"), Some("32")));

    let running = wait_status(&e, t.task_arn().unwrap(), "RUNNING").await;
    for (what, ts) in [
        ("createdAt", running.created_at()),
        ("pullStartedAt", running.pull_started_at()),
        ("pullStoppedAt", running.pull_stopped_at()),
        ("connectivityAt", running.connectivity_at()),
        ("startedAt", running.started_at()),
    ] {
        assert!(ts.is_some(), "{what} is set once RUNNING");
    }
    assert!(running.version() > t.version(), "version is bumped on every change");
    assert_eq!(running.containers()[0].last_status(), Some("RUNNING"));
    assert_eq!(running.containers()[0].image_digest().map(|d| d.starts_with("sha256:")), Some(true));
    assert_eq!(running.health_status().map(|h| h.as_str()), Some("UNKNOWN"));
    assert!(running.stopped_at().is_none() && running.stop_code().is_none());
}

#[tokio::test]
async fn an_essential_exit_stops_the_task_and_a_non_essential_one_does_not() {
    let e = Ecsd::start().await;
    let side =
        ContainerDefinition::builder().name("side").image("busybox").memory(16).essential(false).build();
    register(&e, "pair", vec![container("main"), side]).await;
    let t = run(&e, "pair").await;
    let arn = t.task_arn().unwrap();
    wait_status(&e, arn, "RUNNING").await;

    e.fake.exit(&runtime_id(&t, "side"), 0).await;
    let t2 = eventually(5, "side stops", || async {
        let t = describe(&e, arn).await;
        (t.containers()[1].last_status() == Some("STOPPED")).then_some(t)
    })
    .await;
    assert_eq!(t2.last_status(), Some("RUNNING"));
    assert_eq!(t2.containers()[1].exit_code(), Some(0));

    e.fake.exit(&runtime_id(&t, "main"), 3).await;
    let stopped = wait_status(&e, arn, "STOPPED").await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    assert_eq!(stopped.stopped_reason(), Some("Essential container in task exited"));
    assert_eq!(stopped.desired_status(), Some("STOPPED"));
    assert_eq!(stopped.containers()[0].exit_code(), Some(3));
    assert!(
        stopped.stopping_at().is_some()
            && stopped.execution_stopped_at().is_some()
            && stopped.stopped_at().is_some()
    );
}

#[tokio::test]
async fn stop_task_signals_then_kills_after_the_stop_timeout() {
    let e = Ecsd::start().await;
    let stubborn =
        ContainerDefinition::builder().name("stubborn").image("busybox").memory(16).stop_timeout(1).build();
    register(&e, "polite", vec![container("app")]).await;
    register(&e, "stubborn", vec![stubborn]).await;

    let t = run(&e, "polite").await;
    let arn = t.task_arn().unwrap();
    wait_status(&e, arn, "RUNNING").await;
    let out = e.client.stop_task().task(arn).reason("maintenance window").send().await.unwrap();
    let s = out.task().unwrap();
    assert_eq!(s.desired_status(), Some("STOPPED"));
    assert_eq!(s.stopped_reason(), Some("maintenance window"));
    let stopped = wait_status(&e, arn, "STOPPED").await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("UserInitiated"));
    assert_eq!(stopped.stopped_reason(), Some("maintenance window"));
    assert_eq!(stopped.containers()[0].exit_code(), Some(143));

    let t = run(&e, "stubborn").await;
    let arn = t.task_arn().unwrap();
    wait_status(&e, arn, "RUNNING").await;
    let id = runtime_id(&t, "stubborn");
    e.fake.ignore_signal(&id, 15);
    e.client.stop_task().task(arn).send().await.unwrap();
    let sent = |e: &Ecsd| -> Vec<i32> {
        e.fake.signals().into_iter().filter(|(c, _)| c == &id).map(|(_, s)| s).collect()
    };
    eventually(10, "SIGTERM", || async { (sent(&e) == [15]).then_some(()) }).await;
    // Until the stop timeout passes on the daemon's clock, no SIGKILL follows.
    e.clock.advance(std::time::Duration::from_millis(900));
    assert_eq!(describe(&e, arn).await.last_status(), Some("STOPPING"));
    assert_eq!(sent(&e), [15]);
    let stopped = e
        .advancing(std::time::Duration::from_millis(100), 10, "SIGKILL after the stop timeout", || async {
            let t = describe(&e, arn).await;
            (t.last_status() == Some("STOPPED")).then_some(t)
        })
        .await;
    assert_eq!(stopped.containers()[0].exit_code(), Some(137));
    assert_eq!(sent(&e), [15, 9]);
}

#[tokio::test]
async fn a_missing_image_fails_the_task_cleanly() {
    let e = Ecsd::start().await;
    let c = ContainerDefinition::builder().name("app").image("nope/missing:1.0").memory(16).build();
    register(&e, "ghost", vec![c]).await;
    let out = e.client.run_task().task_definition("ghost").send().await.unwrap();
    assert!(out.failures().is_empty(), "a missing image is not a placement failure");
    let arn = out.tasks()[0].task_arn().unwrap();
    let stopped = wait_status(&e, arn, "STOPPED").await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    let reason = stopped.stopped_reason().unwrap();
    assert_eq!(
        reason,
        "CannotPullContainerError: The task can\u{2019}t pull the image. Check whether the image exists. \
         failed to resolve reference \"docker.io/nope/missing:1.0\": docker.io/nope/missing:1.0: not found: \
         manifest unknown: manifest unknown"
    );
    assert_eq!(stopped.containers()[0].reason(), Some(reason));
    assert!(stopped.containers()[0].exit_code().is_none());
}

#[tokio::test]
async fn depends_on_orders_start_and_stop() {
    let e = Ecsd::start().await;
    let init =
        ContainerDefinition::builder().name("init").image("busybox").memory(16).essential(false).build();
    let after_init = ContainerDependency::builder()
        .container_name("init")
        .condition(ContainerCondition::Success)
        .build()
        .unwrap();
    let app =
        ContainerDefinition::builder().name("app").image("busybox").memory(16).depends_on(after_init).build();
    let after_app = ContainerDependency::builder()
        .container_name("app")
        .condition(ContainerCondition::Start)
        .build()
        .unwrap();
    let logger = ContainerDefinition::builder()
        .name("logger")
        .image("busybox")
        .memory(16)
        .essential(false)
        .depends_on(after_app)
        .build();
    register(&e, "ordered", vec![logger, app, init]).await;
    let t = run(&e, "ordered").await;
    let arn = t.task_arn().unwrap();
    let pending = eventually(5, "init running", || async {
        let t = describe(&e, arn).await;
        (t.containers()[2].last_status() == Some("RUNNING")).then_some(t)
    })
    .await;
    assert_eq!(pending.last_status(), Some("PENDING"), "the task waits for its dependencies");
    assert_eq!(pending.containers()[1].last_status(), Some("PENDING"));
    assert_eq!(pending.containers()[0].last_status(), Some("PENDING"));

    e.fake.exit(&runtime_id(&t, "init"), 0).await;
    let running = wait_status(&e, arn, "RUNNING").await;
    assert_eq!(running.containers()[1].last_status(), Some("RUNNING"));
    assert_eq!(running.containers()[0].last_status(), Some("RUNNING"));

    e.client.stop_task().task(arn).send().await.unwrap();
    wait_status(&e, arn, "STOPPED").await;
    let order: Vec<String> = e.fake.signals().into_iter().map(|(c, _)| c).collect();
    assert_eq!(order, [runtime_id(&t, "logger"), runtime_id(&t, "app")], "dependents stop first");
}

#[tokio::test]
async fn a_failed_success_dependency_fails_the_task() {
    let e = Ecsd::start().await;
    let init =
        ContainerDefinition::builder().name("init").image("busybox").memory(16).essential(false).build();
    let dep = ContainerDependency::builder()
        .container_name("init")
        .condition(ContainerCondition::Success)
        .build()
        .unwrap();
    let app = ContainerDefinition::builder().name("app").image("busybox").memory(16).depends_on(dep).build();
    register(&e, "broken", vec![init, app]).await;
    let t = run(&e, "broken").await;
    let arn = t.task_arn().unwrap();
    eventually(5, "init running", || async {
        (describe(&e, arn).await.containers()[0].last_status() == Some("RUNNING")).then_some(())
    })
    .await;
    e.fake.exit(&runtime_id(&t, "init"), 2).await;
    let stopped = wait_status(&e, arn, "STOPPED").await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    assert_eq!(
        stopped.stopped_reason(),
        Some(
            "CannotStartContainerError: container 'app' depends on 'init' exiting successfully, but it exited with code 2"
        )
    );
}

#[tokio::test]
async fn health_checks_turn_unhealthy_and_gate_healthy_dependencies() {
    let e = Ecsd::start().await;
    let check =
        HealthCheck::builder().command("CMD-SHELL").command("exit 0").interval(5).retries(1).build().unwrap();
    let db =
        ContainerDefinition::builder().name("db").image("busybox").memory(16).health_check(check).build();
    let dep = ContainerDependency::builder()
        .container_name("db")
        .condition(ContainerCondition::Healthy)
        .build()
        .unwrap();
    let api = ContainerDefinition::builder().name("api").image("busybox").memory(16).depends_on(dep).build();
    register(&e, "healthy", vec![db, api]).await;
    let t = run(&e, "healthy").await;
    let arn = t.task_arn().unwrap();
    let before = eventually(5, "db running", || async {
        let t = describe(&e, arn).await;
        (t.containers()[0].last_status() == Some("RUNNING")).then_some(t)
    })
    .await;
    assert_eq!(before.containers()[0].health_status().map(|h| h.as_str()), Some("UNKNOWN"));
    assert_eq!(before.containers()[1].last_status(), Some("PENDING"), "api waits for db to be HEALTHY");

    let running = e
        .advancing(std::time::Duration::from_secs(1), 15, "healthy and running", || async {
            let t = describe(&e, arn).await;
            (t.last_status() == Some("RUNNING")).then_some(t)
        })
        .await;
    assert_eq!(running.containers()[0].health_status().map(|h| h.as_str()), Some("HEALTHY"));
    assert_eq!(running.health_status().map(|h| h.as_str()), Some("HEALTHY"));

    e.fake.set_health(&runtime_id(&t, "db"), 1);
    let unhealthy = e
        .advancing(std::time::Duration::from_secs(1), 15, "unhealthy", || async {
            let t = describe(&e, arn).await;
            (t.health_status().map(|h| h.as_str()) == Some("UNHEALTHY")).then_some(t)
        })
        .await;
    assert_eq!(unhealthy.last_status(), Some("RUNNING"), "a standalone task keeps running when unhealthy");
}

#[tokio::test]
async fn count_tags_overrides_and_listing() {
    let e = Ecsd::start().await;
    register(&e, "many", vec![container("app")]).await;
    e.client
        .tag_resource()
        .resource_arn(arn("task-definition/many:1"))
        .tags(Tag::builder().key("from").value("td").build())
        .send()
        .await
        .unwrap();
    let over = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name("app")
                .command("echo")
                .environment(KeyValuePair::builder().name("MODE").value("batch").build())
                .memory(64)
                .build(),
        )
        .build();
    let out = e
        .client
        .run_task()
        .task_definition("many")
        .count(10)
        .started_by("batch-1")
        .overrides(over)
        .propagate_tags(PropagateTags::TaskDefinition)
        .tags(Tag::builder().key("run").value("1").build())
        .send()
        .await
        .unwrap();
    assert_eq!(out.tasks().len(), 10);
    let first = out.tasks()[0].task_arn().unwrap();
    assert_eq!(out.tasks()[0].containers()[0].memory(), Some("64"), "the memory override shows");
    assert_eq!(out.tasks()[0].overrides().unwrap().container_overrides()[0].command(), ["echo"]);

    let d = e.client.describe_tasks().tasks(first).include("TAGS".into()).send().await.unwrap();
    let keys: Vec<&str> = d.tasks()[0].tags().iter().filter_map(|t| t.key()).collect();
    assert_eq!(keys, ["from", "run"]);

    let all = e.client.list_tasks().send().await.unwrap();
    assert_eq!(all.task_arns().len(), 10);
    let page = e.client.list_tasks().max_results(4).send().await.unwrap();
    assert_eq!(page.task_arns().len(), 4);
    let rest: Vec<String> = e
        .client
        .list_tasks()
        .max_results(4)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(rest.len(), 10);
    assert_eq!(e.client.list_tasks().started_by("batch-1").send().await.unwrap().task_arns().len(), 10);
    assert!(e.client.list_tasks().started_by("other").send().await.unwrap().task_arns().is_empty());
    assert_eq!(e.client.list_tasks().family("many").send().await.unwrap().task_arns().len(), 10);

    e.client.stop_task().task(first).send().await.unwrap();
    wait_status(&e, first, "STOPPED").await;
    let stopped = e.client.list_tasks().desired_status(DesiredStatus::Stopped).send().await.unwrap();
    assert_eq!(stopped.task_arns(), [first.to_owned()]);
    assert_eq!(e.client.list_tasks().send().await.unwrap().task_arns().len(), 9);

    let missing = e.client.describe_tasks().tasks("0123").tasks(first).send().await.unwrap();
    assert_eq!(missing.tasks().len(), 1);
    assert_eq!(missing.failures()[0].arn(), Some(arn("task/default/0123").as_str()));
    assert_eq!(missing.failures()[0].reason(), Some("MISSING"));
}

#[tokio::test]
async fn run_task_refuses_what_ecs_refuses() {
    let e = Ecsd::start().await;
    register(&e, "plain", vec![container("app")]).await;
    let (code, msg) = err(e.client.run_task().task_definition("plain").count(11).send().await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "count must be between 1 and 10; it was 11")
    );
    let (code, msg) = err(e.client.run_task().task_definition("nope").send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ClientException", "TaskDefinition not found."));
    let (code, _) =
        err(e.client.run_task().cluster("ghost").task_definition("plain").send().await.unwrap_err());
    assert_eq!(code, "ClusterNotFoundException");
    let o = TaskOverride::builder()
        .container_overrides(ContainerOverride::builder().name("other").build())
        .build();
    let (code, msg) =
        err(e.client.run_task().task_definition("plain").overrides(o).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "Override for container named other is not a container in the TaskDefinition.");
    let (code, msg) = err(e
        .client
        .run_task()
        .task_definition("plain")
        .launch_type(LaunchType::Fargate)
        .send()
        .await
        .unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ClientException", "Task definition does not support launch_type FARGATE.")
    );

    e.client
        .register_task_definition()
        .family("vpc")
        .network_mode(NetworkMode::Awsvpc)
        .container_definitions(container("app"))
        .send()
        .await
        .unwrap();
    let (code, msg) = err(e.client.run_task().task_definition("vpc").send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "Network Configuration must be provided when networkMode 'awsvpc' is specified.");

    e.client
        .register_task_definition()
        .family("pid")
        .pid_mode(aws_sdk_ecs::types::PidMode::Task)
        .container_definitions(container("app"))
        .send()
        .await
        .unwrap();
    let (code, msg) = err(e.client.run_task().task_definition("pid").send().await.unwrap_err());
    assert_eq!(code, "UnsupportedFeatureException");
    assert_eq!(
        msg,
        "pidMode 'task' is not supported by ecsd yet: use 'host', or leave pidMode out for a namespace per container"
    );

    e.client.deregister_task_definition().task_definition("plain:1").send().await.unwrap();
    let (code, msg) = err(e.client.run_task().task_definition("plain:1").send().await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(
        msg,
        "TaskDefinition is inactive: plain:1 is no longer ACTIVE; register or name an ACTIVE revision"
    );

    let (code, msg) = err(e.client.stop_task().task("0123").send().await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "The referenced task was not found.")
    );
}

#[tokio::test]
async fn an_unreachable_runtime_is_a_placement_failure() {
    let e = Ecsd::start().await;
    register(&e, "x", vec![container("app")]).await;
    e.fake.set_unavailable(true);
    let out = e.client.run_task().task_definition("x").send().await.unwrap();
    assert!(out.tasks().is_empty());
    let f = &out.failures()[0];
    assert_eq!(f.reason(), Some("AGENT"));
    assert!(f.arn().unwrap().starts_with(&arn("container-instance/default/")));
    assert_eq!(f.detail(), Some("the fake runtime is unreachable at fake: set unavailable by the test"));
    let ci = e.client.list_container_instances().send().await.unwrap().container_instance_arns()[0].clone();
    let d = e.client.describe_container_instances().container_instances(ci).send().await.unwrap();
    assert!(!d.container_instances()[0].agent_connected(), "ecsd is cut off from its runtime");
}

#[tokio::test]
async fn tasks_are_re_adopted_after_a_restart_and_exits_while_down_count() {
    let mut e = Ecsd::start().await;
    register(&e, "durable", vec![container("a")]).await;
    let t1 = run(&e, "durable").await;
    let t2 = run(&e, "durable").await;
    wait_status(&e, t1.task_arn().unwrap(), "RUNNING").await;
    wait_status(&e, t2.task_arn().unwrap(), "RUNNING").await;

    let daemon = e.daemon.take().unwrap();
    daemon.shutdown().await.unwrap();
    e.fake.exit(&runtime_id(&t1, "a"), 7).await;
    e.restart().await;

    let gone = wait_status(&e, t1.task_arn().unwrap(), "STOPPED").await;
    assert_eq!(gone.containers()[0].exit_code(), Some(7));
    assert_eq!(gone.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    let kept = describe(&e, t2.task_arn().unwrap()).await;
    assert_eq!(kept.last_status(), Some("RUNNING"));
    // The re-adopted task still answers to its runtime's exits.
    e.fake.exit(&runtime_id(&t2, "a"), 0).await;
    wait_status(&e, t2.task_arn().unwrap(), "STOPPED").await;
}

#[tokio::test]
async fn a_container_left_half_started_is_started_again_and_its_late_exit_ignored() {
    let mut e = Ecsd::start().await;
    register(&e, "half", vec![container("a")]).await;
    // The daemon goes away between creating the container and starting it.
    e.fake.hold_starts(true);
    let t = run(&e, "half").await;
    let id = runtime_id(&t, "a");
    eventually(10, "the container created", || async {
        (e.fake.status(&id) == Some(ProcessStatus::Created)).then_some(())
    })
    .await;
    e.daemon.take().unwrap().shutdown().await.unwrap();
    e.fake.hold_starts(false);
    e.restart().await;

    let running = wait_status(&e, t.task_arn().unwrap(), "RUNNING").await;
    assert_eq!(running.containers()[0].last_status(), Some("RUNNING"));
    let Some(ProcessStatus::Running { pid }) = e.fake.status(&id) else {
        panic!("the container runs again: {:?}", e.fake.status(&id));
    };
    // containerd reports the end of the removed, never-started process late, under the
    // same container id: it is not this process's exit.
    e.fake.report_exit(&id, pid + 1000, 137, 0.0).await;
    // The real exit, reported after it, is the one the task records.
    e.fake.exit(&id, 3).await;
    let stopped = wait_status(&e, t.task_arn().unwrap(), "STOPPED").await;
    assert_eq!(stopped.containers()[0].exit_code(), Some(3));
}

#[tokio::test]
async fn clusters_with_tasks_cannot_be_deleted_and_the_host_is_a_container_instance() {
    let e = Ecsd::start().await;
    register(&e, "busy", vec![container("a")]).await;
    let t = run(&e, "busy").await;
    wait_status(&e, t.task_arn().unwrap(), "RUNNING").await;
    let (code, msg) = err(e.client.delete_cluster().cluster("default").send().await.unwrap_err());
    assert_eq!(code, "ClusterContainsTasksException");
    assert_eq!(msg, "The Cluster cannot be deleted while Tasks are active.");
    let c = e.client.describe_clusters().send().await.unwrap();
    assert_eq!(c.clusters()[0].running_tasks_count(), 1);
    assert_eq!(c.clusters()[0].registered_container_instances_count(), 1);

    let list = e.client.list_container_instances().send().await.unwrap();
    let ci = list.container_instance_arns()[0].clone();
    assert_eq!(t.container_instance_arn(), Some(ci.as_str()));
    let d = e
        .client
        .describe_container_instances()
        .container_instances(&ci)
        .container_instances("nope")
        .send()
        .await
        .unwrap();
    let i = &d.container_instances()[0];
    assert!(i.agent_connected());
    assert_eq!(i.running_tasks_count(), 1);
    let value = |v: &[aws_sdk_ecs::types::Resource], n: &str| {
        v.iter().find(|r| r.name() == Some(n)).unwrap().integer_value()
    };
    assert_eq!(value(i.registered_resources(), "MEMORY") - value(i.remaining_resources(), "MEMORY"), 32);
    assert_eq!(d.failures()[0].reason(), Some("MISSING"));
    let tasks_here = e.client.list_tasks().container_instance(&ci).send().await.unwrap();
    assert_eq!(tasks_here.task_arns().len(), 1);
}

#[tokio::test]
async fn stopped_tasks_expire_after_the_retention() {
    let e = Ecsd::start_with(&[("ECSD_TASK_RETENTION", "1h")]).await;
    register(&e, "brief", vec![container("a")]).await;
    let t = run(&e, "brief").await;
    let arn = t.task_arn().unwrap().to_owned();
    wait_status(&e, &arn, "RUNNING").await;
    e.fake.exit(&runtime_id(&t, "a"), 0).await;
    wait_status(&e, &arn, "STOPPED").await;
    let gone = || async {
        let out = e.client.describe_tasks().tasks(&arn).send().await.unwrap();
        (!out.failures().is_empty()).then_some(())
    };
    // Kept for the retention: 59 minutes later it is still described.
    e.clock.advance(std::time::Duration::from_secs(59 * 60));
    assert_eq!(describe(&e, &arn).await.last_status(), Some("STOPPED"));
    assert!(gone().await.is_none());
    e.advancing(std::time::Duration::from_secs(30), 10, "the stopped task to expire", gone).await;
}

#[tokio::test]
async fn stop_task_while_a_dependent_waits_still_reaches_stopped() {
    let e = Ecsd::start().await;
    let init =
        ContainerDefinition::builder().name("init").image("busybox").memory(16).essential(false).build();
    let dep = ContainerDependency::builder()
        .container_name("init")
        .condition(ContainerCondition::Success)
        .build()
        .unwrap();
    let app = ContainerDefinition::builder().name("app").image("busybox").memory(16).depends_on(dep).build();
    register(&e, "waiting", vec![init, app]).await;
    let t = run(&e, "waiting").await;
    let arn = t.task_arn().unwrap();
    eventually(5, "init running", || async {
        (describe(&e, arn).await.containers()[0].last_status() == Some("RUNNING")).then_some(())
    })
    .await;
    e.client.stop_task().task(arn).send().await.unwrap();
    let stopped = wait_status(&e, arn, "STOPPED").await;
    assert_eq!(stopped.containers()[0].exit_code(), Some(143));
    assert_eq!(stopped.containers()[1].exit_code(), None, "app never started");
}

#[tokio::test]
async fn a_stop_signal_that_cannot_be_delivered_is_tried_again() {
    let e = Ecsd::start().await;
    register(&e, "retry", vec![container("app")]).await;
    let t = run(&e, "retry").await;
    let arn = t.task_arn().unwrap();
    wait_status(&e, arn, "RUNNING").await;
    e.fake.set_unavailable(true);
    let refused = e.fake.refused();
    e.client.stop_task().task(arn).send().await.unwrap();
    eventually(10, "the stop signal refused", || async { (e.fake.refused() > refused).then_some(()) }).await;
    // The retry waits on the daemon's clock: without it moving, the task stays STOPPING.
    e.fake.set_unavailable(false);
    assert_eq!(describe(&e, arn).await.last_status(), Some("STOPPING"));
    let stopped = e
        .advancing(std::time::Duration::from_millis(250), 10, "the signal tried again", || async {
            let t = describe(&e, arn).await;
            (t.last_status() == Some("STOPPED")).then_some(t)
        })
        .await;
    assert_eq!(stopped.containers()[0].exit_code(), Some(143));
}

#[tokio::test]
async fn containers_gone_while_ecsd_was_down_stop_their_tasks() {
    let mut e = Ecsd::start().await;
    register(&e, "vanish", vec![container("a")]).await;
    let t = run(&e, "vanish").await;
    let arn = t.task_arn().unwrap().to_owned();
    wait_status(&e, &arn, "RUNNING").await;
    let daemon = e.daemon.take().unwrap();
    daemon.shutdown().await.unwrap();
    e.fake.forget(&runtime_id(&t, "a"));
    e.restart().await;
    let stopped = wait_status(&e, &arn, "STOPPED").await;
    assert_eq!(stopped.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"));
    assert_eq!(
        stopped.containers()[0].reason(),
        Some("CannotInspectContainerError: the container was gone from the runtime when ecsd restarted")
    );
}

#[tokio::test]
async fn health_checks_resume_after_a_restart() {
    let mut e = Ecsd::start().await;
    let check = HealthCheck::builder().command("CMD").command("true").interval(5).retries(1).build().unwrap();
    let c = ContainerDefinition::builder().name("db").image("busybox").memory(16).health_check(check).build();
    register(&e, "checked", vec![c]).await;
    let t = run(&e, "checked").await;
    let arn = t.task_arn().unwrap().to_owned();
    e.advancing(std::time::Duration::from_secs(1), 15, "healthy", || async {
        (describe(&e, &arn).await.health_status().map(|h| h.as_str()) == Some("HEALTHY")).then_some(())
    })
    .await;
    // The restart also shows the health loops let go of the data dir.
    e.restart().await;
    e.fake.set_health(&runtime_id(&t, "db"), 1);
    e.advancing(std::time::Duration::from_secs(1), 15, "unhealthy after the restart", || async {
        (describe(&e, &arn).await.health_status().map(|h| h.as_str()) == Some("UNHEALTHY")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn exec_runs_in_a_running_container_as_its_process_and_refuses_otherwise() {
    use ecsd::engine::{ExecError, ExecRequest};
    use ecsd::runtime::fake::ExecScript;
    use tokio::io::AsyncReadExt;

    let e = Ecsd::start().await;
    let app = ContainerDefinition::builder()
        .name("app")
        .image("busybox")
        .memory(16)
        .environment(aws_sdk_ecs::types::KeyValuePair::builder().name("MODE").value("blue").build())
        .working_directory("/srv")
        .build();
    register(&e, "execd", vec![app]).await;
    let t = run(&e, "execd").await;
    let arn = t.task_arn().unwrap();
    let id = arn.rsplit('/').next().unwrap();
    let engine = e.daemon.as_ref().unwrap().engine().clone();
    let request = |command: &[&str]| ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        console_size: None,
        env: vec![],
    };
    wait_status(&e, arn, "RUNNING").await;
    let rt = runtime_id(&t, "app");
    e.fake.script_exec(&rt, ExecScript { stdout: b"hello\n".to_vec(), stderr: vec![], exit_code: 3 });
    let mut p = engine.exec("default", id, "app", request(&["echo", "hello"])).await.unwrap();
    let mut out = String::new();
    p.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "hello\n");
    assert_eq!(p.wait().await.unwrap(), 3);
    let (container, spec) = e.fake.execs().pop().unwrap();
    assert_eq!(container, rt);
    assert_eq!(spec.process.args().as_deref().unwrap(), ["echo", "hello"]);
    assert_eq!(spec.process.cwd().to_str(), Some("/srv"), "the container's working directory");
    assert!(spec.process.env().as_deref().unwrap().contains(&"MODE=blue".to_owned()), "its environment");

    let err = engine.exec("default", id, "ghost", request(&["true"])).await.unwrap_err();
    assert!(matches!(err, ExecError::ContainerNotFound { .. }), "{err}");
    assert_eq!(err.to_string(), format!("task {arn} has no container named ghost (it has app)"));
    let err = engine.exec("default", "nope", "app", request(&["true"])).await.unwrap_err();
    assert!(matches!(err, ExecError::TaskNotFound(_)), "{err}");
    e.client.stop_task().task(arn).send().await.unwrap();
    let err = engine.exec("default", id, "app", request(&["true"])).await.unwrap_err();
    assert!(matches!(err, ExecError::TaskNotRunning { .. }), "{err}");
}

/// A Fargate task definition (awsvpc, task size) with `storage` GiB of ephemeral storage.
async fn register_fargate(e: &Ecsd, family: &str, storage: Option<i32>) {
    e.client
        .register_task_definition()
        .family(family)
        .network_mode(NetworkMode::Awsvpc)
        .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(container("app"))
        .set_ephemeral_storage(
            storage.map(|s| aws_sdk_ecs::types::EphemeralStorage::builder().size_in_gib(s).build()),
        )
        .send()
        .await
        .unwrap();
}

fn default_subnet() -> aws_sdk_ecs::types::NetworkConfiguration {
    let vpc = aws_sdk_ecs::types::AwsVpcConfiguration::builder().subnets("subnet-default").build().unwrap();
    aws_sdk_ecs::types::NetworkConfiguration::builder().awsvpc_configuration(vpc).build()
}

#[tokio::test]
async fn fargate_tasks_show_what_fargate_tasks_show() {
    let e = Ecsd::start().await;
    register_fargate(&e, "small", None).await;
    register_fargate(&e, "big", Some(50)).await;

    let out = e
        .client
        .run_task()
        .task_definition("small")
        .launch_type(LaunchType::Fargate)
        .network_configuration(default_subnet())
        .send()
        .await
        .unwrap();
    let t = wait_status(&e, out.tasks()[0].task_arn().unwrap(), "RUNNING").await;
    assert_eq!(t.launch_type(), Some(&LaunchType::Fargate));
    assert_eq!(t.platform_version(), Some("1.4.0"), "LATEST is 1.4.0");
    assert_eq!(t.platform_family(), Some("Linux"));
    assert_eq!(t.ephemeral_storage().map(|s| s.size_in_gib()), Some(20), "Fargate's default");
    assert_eq!(t.fargate_ephemeral_storage().map(|s| s.size_in_gib()), Some(20));
    assert_eq!(t.container_instance_arn(), None, "Fargate tasks run on no container instance");
    let eni = &t.attachments()[0];
    assert_eq!(eni.r#type(), Some("ElasticNetworkInterface"));
    assert!(eni.details().iter().any(|d| d.name() == Some("privateIPv4Address")), "{eni:?}");

    // A FARGATE capacity provider, a named platform version and the definition's storage.
    let fargate = aws_sdk_ecs::types::CapacityProviderStrategyItem::builder()
        .capacity_provider("FARGATE")
        .build()
        .unwrap();
    let out = e
        .client
        .run_task()
        .task_definition("big")
        .capacity_provider_strategy(fargate)
        .platform_version("1.3.0")
        .network_configuration(default_subnet())
        .send()
        .await
        .unwrap();
    let t = describe(&e, out.tasks()[0].task_arn().unwrap()).await;
    assert_eq!(t.launch_type(), Some(&LaunchType::Fargate));
    assert_eq!(t.platform_version(), Some("1.3.0"));
    assert_eq!(t.ephemeral_storage().map(|s| s.size_in_gib()), Some(50));

    // Positive control: an EC2 task of the same definition family shows none of these.
    register(&e, "ec2", vec![container("app")]).await;
    let t = run(&e, "ec2").await;
    assert_eq!((t.platform_version(), t.ephemeral_storage()), (None, None));
    assert!(t.container_instance_arn().is_some());
}

#[tokio::test]
async fn ephemeral_storage_is_checked_at_registration() {
    let e = Ecsd::start().await;
    for size in [20, 201] {
        let storage = aws_sdk_ecs::types::EphemeralStorage::builder().size_in_gib(size).build();
        let (code, msg) = err(e
            .client
            .register_task_definition()
            .family("disk")
            .container_definitions(container("app"))
            .ephemeral_storage(storage)
            .send()
            .await
            .unwrap_err());
        assert_eq!(code, "ClientException");
        assert_eq!(
            msg,
            format!(
                "The ephemeral storage size must be between 21 and 200 GiB. ephemeralStorage.sizeInGiB is {size}; leave ephemeralStorage out for the default of 20 GiB."
            )
        );
    }
    register_fargate(&e, "disk", Some(21)).await;
}
