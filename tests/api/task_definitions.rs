use aws_sdk_ecs::types::{
    ContainerDefinition, PortMapping, SortOrder, TaskDefinitionFamilyStatus, TaskDefinitionStatus,
};

use crate::common::{Ecsd, arn, err};

fn web() -> ContainerDefinition {
    ContainerDefinition::builder()
        .name("web")
        .image("busybox")
        .memory(64)
        .port_mappings(PortMapping::builder().container_port(8080).build())
        .build()
}

async fn register(e: &Ecsd, family: &str) -> i32 {
    let out =
        e.client.register_task_definition().family(family).container_definitions(web()).send().await.unwrap();
    out.task_definition().unwrap().revision()
}

#[tokio::test]
async fn register_numbers_revisions_and_echoes_ecs_defaults() {
    let e = Ecsd::start().await;
    let out = e
        .client
        .register_task_definition()
        .family("web")
        .container_definitions(web())
        .container_definitions(
            ContainerDefinition::builder()
                .name("side")
                .image("busybox")
                .memory_reservation(16)
                .essential(false)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let td = out.task_definition().unwrap();
    assert_eq!(td.family(), Some("web"));
    assert_eq!(td.revision(), 1);
    assert_eq!(td.task_definition_arn(), Some(arn("task-definition/web:1").as_str()));
    assert_eq!(td.status(), Some(&TaskDefinitionStatus::Active));
    assert!(td.registered_at().is_some());
    assert_eq!(td.registered_by(), Some("arn:aws:iam::000000000000:root"));
    assert!(td.volumes().is_empty() && td.placement_constraints().is_empty());
    assert!(!td.compatibilities().is_empty());
    let c = &td.container_definitions()[0];
    assert_eq!((c.essential(), c.cpu()), (Some(true), 0));
    assert!(c.mount_points().is_empty() && c.volumes_from().is_empty() && c.environment().is_empty());
    assert_eq!(c.port_mappings()[0].protocol().map(|p| p.as_str()), Some("tcp"));
    assert_eq!(td.container_definitions()[1].essential(), Some(false));

    assert_eq!(register(&e, "web").await, 2);
    assert_eq!(register(&e, "other").await, 1);
}

#[tokio::test]
async fn describe_by_family_revision_and_arn() {
    let e = Ecsd::start().await;
    for _ in 0..3 {
        register(&e, "app").await;
    }
    for (reference, want) in [("app", 3), ("app:2", 2), (arn("task-definition/app:1").as_str(), 1)] {
        let out = e.client.describe_task_definition().task_definition(reference).send().await.unwrap();
        assert_eq!(out.task_definition().unwrap().revision(), want, "{reference}");
        assert!(out.tags().is_empty());
    }
    e.client.deregister_task_definition().task_definition("app:3").send().await.unwrap();
    let out = e.client.describe_task_definition().task_definition("app").send().await.unwrap();
    assert_eq!(
        out.task_definition().unwrap().revision(),
        2,
        "the family resolves to the latest ACTIVE revision"
    );
    let out = e.client.describe_task_definition().task_definition("app:3").send().await.unwrap();
    assert_eq!(out.task_definition().unwrap().status(), Some(&TaskDefinitionStatus::Inactive));
    assert!(out.task_definition().unwrap().deregistered_at().is_some());

    for (missing, message) in [
        ("nope", "Unable to describe task definition. Family 'nope' has no ACTIVE revision."),
        ("app:9", "Unable to describe task definition. Revision app:9 does not exist."),
        ("arn:aws:ecs:eu-west-1:000000000000:task-definition/app:1", "Unable to describe task definition."),
    ] {
        let (code, msg) =
            err(e.client.describe_task_definition().task_definition(missing).send().await.unwrap_err());
        assert_eq!((code.as_str(), msg.as_str()), ("ClientException", message), "{missing}");
    }
    let (code, msg) =
        err(e.client.describe_task_definition().task_definition("app:x").send().await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(msg, "taskDefinition: 'app:x' has an invalid revision: a revision is a whole number from 1");
}

#[tokio::test]
async fn list_filters_sorts_and_pages() {
    let e = Ecsd::start().await;
    for _ in 0..3 {
        register(&e, "a").await;
    }
    register(&e, "a-b").await;
    register(&e, "b").await;
    e.client.deregister_task_definition().task_definition("a:2").send().await.unwrap();

    let all = e.client.list_task_definitions().send().await.unwrap();
    let names: Vec<&str> = all.task_definition_arns().iter().map(|a| a.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["a:1", "a:3", "a-b:1", "b:1"]);

    let only_a =
        e.client.list_task_definitions().family_prefix("a").sort(SortOrder::Desc).send().await.unwrap();
    assert_eq!(only_a.task_definition_arns(), [arn("task-definition/a:3"), arn("task-definition/a:1")]);

    let inactive =
        e.client.list_task_definitions().status(TaskDefinitionStatus::Inactive).send().await.unwrap();
    assert_eq!(inactive.task_definition_arns(), [arn("task-definition/a:2")]);

    let pages: Vec<String> = e
        .client
        .list_task_definitions()
        .max_results(1)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(pages.len(), 4);
}

#[tokio::test]
async fn families_filter_by_prefix_and_status() {
    let e = Ecsd::start().await;
    register(&e, "api").await;
    register(&e, "api-worker").await;
    register(&e, "batch").await;
    e.client.deregister_task_definition().task_definition("batch:1").send().await.unwrap();

    let all = e.client.list_task_definition_families().send().await.unwrap();
    assert_eq!(all.families(), ["api", "api-worker", "batch"]);
    let api = e.client.list_task_definition_families().family_prefix("api").send().await.unwrap();
    assert_eq!(api.families(), ["api", "api-worker"]);
    let active = e
        .client
        .list_task_definition_families()
        .status(TaskDefinitionFamilyStatus::Active)
        .send()
        .await
        .unwrap();
    assert_eq!(active.families(), ["api", "api-worker"]);
    let inactive = e
        .client
        .list_task_definition_families()
        .status(TaskDefinitionFamilyStatus::Inactive)
        .send()
        .await
        .unwrap();
    assert_eq!(inactive.families(), ["batch"]);
}

#[tokio::test]
async fn deregister_needs_a_revision_and_delete_needs_inactive() {
    let e = Ecsd::start().await;
    register(&e, "d").await;
    register(&e, "d").await;
    let (code, msg) =
        err(e.client.deregister_task_definition().task_definition("d").send().await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(
        msg,
        "The task definition 'd' has no revision: name one revision as family:revision or with its full ARN"
    );
    let (code, msg) =
        err(e.client.deregister_task_definition().task_definition("d:7").send().await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ClientException", "The task definition 'd:7' does not exist.")
    );

    let out = e.client.deregister_task_definition().task_definition("d:1").send().await.unwrap();
    assert_eq!(out.task_definition().unwrap().status(), Some(&TaskDefinitionStatus::Inactive));

    let out = e
        .client
        .delete_task_definitions()
        .task_definitions("d:1")
        .task_definitions(arn("task-definition/d:2"))
        .task_definitions("d:9")
        .send()
        .await
        .unwrap();
    let deleted = out.task_definitions();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].status(), Some(&TaskDefinitionStatus::DeleteInProgress));
    assert!(deleted[0].delete_requested_at().is_some());
    let reasons: Vec<(&str, &str)> =
        out.failures().iter().map(|f| (f.arn().unwrap(), f.reason().unwrap())).collect();
    let active_arn = arn("task-definition/d:2");
    assert_eq!(
        reasons,
        [
            (
                active_arn.as_str(),
                "The specified task definition is still in ACTIVE status. Please deregister the target and try again."
            ),
            ("d:9", "The specified task definition does not exist."),
        ]
    );
    // Revisions are never reused, even after deletion.
    assert_eq!(register(&e, "d").await, 3);
}

#[tokio::test]
async fn invalid_definitions_are_client_exceptions() {
    let e = Ecsd::start().await;
    let register = |family: &str, c: ContainerDefinition| {
        e.client.register_task_definition().family(family).container_definitions(c).send()
    };
    let (code, msg) = err(register("bad family", web()).await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(
        msg,
        "Family contains invalid characters. family 'bad family' must be 1 to 255 letters, numbers, hyphens and underscores."
    );
    let no_image = ContainerDefinition::builder().name("x").memory(32).build();
    let (code, msg) = err(register("f", no_image).await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(
        msg,
        "Container.image should not be null or empty. containerDefinitions[0] ('x').image must name the image to run, e.g. 'nginx:latest'."
    );
    let no_memory = ContainerDefinition::builder().name("m").image("busybox").build();
    let (code, msg) = err(register("f", no_memory).await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(
        msg,
        "Invalid setting for container 'm'. At least one of 'memory' or 'memoryReservation' must be specified."
    );
    // Nothing was registered by the failed calls.
    let families = e.client.list_task_definition_families().send().await.unwrap();
    assert!(families.families().is_empty());
}

#[tokio::test]
async fn deleted_revisions_go_once_no_task_uses_them() {
    let e = Ecsd::start().await;
    register(&e, "gone").await;
    register(&e, "gone").await;
    e.client.deregister_task_definition().task_definition("gone:1").send().await.unwrap();
    e.client.delete_task_definitions().task_definitions("gone:1").send().await.unwrap();
    // The sweeper runs once a minute on the daemon's clock.
    e.advancing(std::time::Duration::from_secs(30), 10, "revision 1 to be deleted", || async {
        e.client.describe_task_definition().task_definition("gone:1").send().await.is_err().then_some(())
    })
    .await;
    let left = e.client.list_task_definitions().family_prefix("gone").send().await.unwrap();
    assert_eq!(left.task_definition_arns(), [arn("task-definition/gone:2")]);
    assert_eq!(register(&e, "gone").await, 3, "a deleted revision's number is never reused");
}

/// Log drivers other than awslogs and json-file are refused at registration, by name, as are
/// awslogs options ecsd does not honour.
#[tokio::test]
async fn unsupported_log_drivers_and_awslogs_options_are_refused_at_registration() {
    use aws_sdk_ecs::types::{LogConfiguration, LogDriver};
    let e = Ecsd::start().await;
    let with_log = |log: LogConfiguration| {
        ContainerDefinition::builder().name("app").image("busybox").memory(32).log_configuration(log).build()
    };
    let fluentd = LogConfiguration::builder().log_driver(LogDriver::Fluentd).build().unwrap();
    let (code, message) = err(e
        .client
        .register_task_definition()
        .family("f")
        .container_definitions(with_log(fluentd))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "ClientException");
    assert_eq!(
        message,
        "fluentd is not a valid log driver. Must be one of [awslogs,json-file]. containerDefinitions[0] ('app').logConfiguration.logDriver: ecsd ships container output to CloudWatch Logs (awslogs) or keeps it on the host (json-file)."
    );
    let awslogs = |extra: (&str, &str)| {
        LogConfiguration::builder()
            .log_driver(LogDriver::Awslogs)
            .options("awslogs-group", "/ecs/app")
            .options("awslogs-region", "us-east-1")
            .options(extra.0, extra.1)
            .build()
            .unwrap()
    };
    let (code, message) = err(e
        .client
        .register_task_definition()
        .family("f")
        .container_definitions(with_log(awslogs(("awslogs-multiline-pattern", "("))))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "ClientException");
    assert!(
        message.starts_with("Log driver awslogs option awslogs-multiline-pattern '(' is not a valid regular expression. containerDefinitions[0] ('app').logConfiguration.options may set only"),
        "{message}"
    );
    // The positive control: json-file, and awslogs with the options ecsd honours.
    let json_file = LogConfiguration::builder().log_driver(LogDriver::JsonFile).build().unwrap();
    e.client
        .register_task_definition()
        .family("f")
        .container_definitions(with_log(json_file))
        .send()
        .await
        .unwrap();
    e.client
        .register_task_definition()
        .family("f")
        .container_definitions(with_log(awslogs(("mode", "non-blocking"))))
        .send()
        .await
        .unwrap();
}
