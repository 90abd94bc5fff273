use aws_sdk_ecs::types::{ClusterField, ClusterSetting, ClusterSettingName, Tag};

use crate::common::{Ecsd, arn, err};

#[tokio::test]
async fn the_default_cluster_exists_from_the_start() {
    let e = Ecsd::start().await;
    let out = e.client.describe_clusters().send().await.unwrap();
    let c = &out.clusters()[0];
    assert_eq!(c.cluster_name(), Some("default"));
    assert_eq!(c.cluster_arn(), Some(arn("cluster/default").as_str()));
    assert_eq!(c.status(), Some("ACTIVE"));
    assert!(out.failures().is_empty());
    let list = e.client.list_clusters().send().await.unwrap();
    assert_eq!(list.cluster_arns(), [arn("cluster/default")]);
}

#[tokio::test]
async fn ecs_cluster_is_created_at_start_beside_default() {
    let e = Ecsd::start_with(&[("ECS_CLUSTER", "prod")]).await;
    let list = e.client.list_clusters().send().await.unwrap();
    let mut arns = list.cluster_arns().to_vec();
    arns.sort();
    assert_eq!(arns, [arn("cluster/default"), arn("cluster/prod")]);
    let out = e.client.describe_clusters().clusters("prod").send().await.unwrap();
    assert_eq!(out.clusters()[0].status(), Some("ACTIVE"));
    // Deleted, it comes back with the next start, as the agent's registration brings it.
    e.client.delete_cluster().cluster("prod").send().await.unwrap();
    let mut e = e;
    e.restart().await;
    let out = e.client.describe_clusters().clusters("prod").send().await.unwrap();
    assert_eq!(out.clusters()[0].status(), Some("ACTIVE"));
}

#[tokio::test]
async fn create_is_idempotent_by_name_and_describe_includes_what_is_asked() {
    let e = Ecsd::start().await;
    let tag = Tag::builder().key("team").value("core").build();
    let created = e
        .client
        .create_cluster()
        .cluster_name("prod")
        .tags(tag.clone())
        .settings(
            ClusterSetting::builder().name(ClusterSettingName::ContainerInsights).value("enabled").build(),
        )
        .send()
        .await
        .unwrap();
    let c = created.cluster().unwrap();
    assert_eq!(c.cluster_arn(), Some(arn("cluster/prod").as_str()));
    assert_eq!(c.status(), Some("ACTIVE"));
    assert_eq!(c.tags(), std::slice::from_ref(&tag));
    assert_eq!(c.settings()[0].value(), Some("enabled"));
    assert_eq!((c.running_tasks_count(), c.pending_tasks_count(), c.active_services_count()), (0, 0, 0));

    let again = e.client.create_cluster().cluster_name("prod").send().await.unwrap();
    assert_eq!(again.cluster().unwrap().cluster_arn(), c.cluster_arn());
    assert_eq!(
        again.cluster().unwrap().tags(),
        std::slice::from_ref(&tag),
        "the existing cluster comes back unchanged"
    );

    let plain = e.client.describe_clusters().clusters("prod").send().await.unwrap();
    let p = &plain.clusters()[0];
    assert!(p.tags().is_empty() && p.settings().is_empty() && p.statistics().is_empty());

    let full = e
        .client
        .describe_clusters()
        .clusters(arn("cluster/prod"))
        .include(ClusterField::Tags)
        .include(ClusterField::Settings)
        .include(ClusterField::Statistics)
        .send()
        .await
        .unwrap();
    let f = &full.clusters()[0];
    assert_eq!(f.tags(), [tag]);
    assert_eq!(f.settings().len(), 1);
    assert!(
        f.statistics().iter().any(|s| s.name() == Some("runningEC2TasksCount") && s.value() == Some("0"))
    );
}

#[tokio::test]
async fn describe_reports_unknown_clusters_as_missing() {
    let e = Ecsd::start().await;
    let out = e.client.describe_clusters().clusters("default").clusters("nope").send().await.unwrap();
    assert_eq!(out.clusters().len(), 1);
    let f = &out.failures()[0];
    assert_eq!(f.arn(), Some(arn("cluster/nope").as_str()));
    assert_eq!(f.reason(), Some("MISSING"));
}

#[tokio::test]
async fn list_pages_with_max_results() {
    let e = Ecsd::start().await;
    for i in 0..6 {
        e.client.create_cluster().cluster_name(format!("c{i}")).send().await.unwrap();
    }
    let first = e.client.list_clusters().max_results(4).send().await.unwrap();
    assert_eq!(first.cluster_arns().len(), 4);
    let token = first.next_token().expect("a second page").to_owned();
    let second = e.client.list_clusters().max_results(4).next_token(token).send().await.unwrap();
    assert_eq!(second.cluster_arns().len(), 3);
    assert!(second.next_token().is_none());

    let all: Vec<String> = e
        .client
        .list_clusters()
        .max_results(2)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[0], arn("cluster/c0"));

    let (code, msg) = err(e.client.list_clusters().max_results(101).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "maxResults must be between 1 and 100; it was 101");
    let (code, msg) = err(e.client.list_clusters().next_token("garbage!").send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "The nextToken is not valid: pass the nextToken of the previous response unchanged");
}

#[tokio::test]
async fn update_changes_settings_and_configuration() {
    let e = Ecsd::start().await;
    e.client.create_cluster().cluster_name("u").send().await.unwrap();
    let setting =
        ClusterSetting::builder().name(ClusterSettingName::ContainerInsights).value("enhanced").build();
    let out = e.client.update_cluster_settings().cluster("u").settings(setting.clone()).send().await.unwrap();
    assert_eq!(out.cluster().unwrap().settings(), std::slice::from_ref(&setting));
    let out = e.client.update_cluster().cluster(arn("cluster/u")).settings(setting).send().await.unwrap();
    assert_eq!(out.cluster().unwrap().settings()[0].value(), Some("enhanced"));

    let bad =
        ClusterSetting::builder().name(ClusterSettingName::ContainerInsights).value("sometimes").build();
    let (code, msg) =
        err(e.client.update_cluster_settings().cluster("u").settings(bad).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "settings[0].value 'sometimes' is not valid for containerInsights: use enabled, disabled or enhanced"
    );

    let (code, msg) = err(e.client.update_cluster().cluster("ghost").send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ClusterNotFoundException", "Cluster not found."));
}

#[tokio::test]
async fn delete_makes_a_cluster_inactive_and_it_can_come_back() {
    let e = Ecsd::start().await;
    e.client
        .create_cluster()
        .cluster_name("gone")
        .tags(Tag::builder().key("k").value("v").build())
        .send()
        .await
        .unwrap();
    let out = e.client.delete_cluster().cluster("gone").send().await.unwrap();
    assert_eq!(out.cluster().unwrap().status(), Some("INACTIVE"));

    let d = e.client.describe_clusters().clusters("gone").send().await.unwrap();
    assert_eq!(d.clusters()[0].status(), Some("INACTIVE"));
    let list = e.client.list_clusters().send().await.unwrap();
    assert!(!list.cluster_arns().contains(&arn("cluster/gone")));

    let (code, msg) = err(e.client.delete_cluster().cluster("gone").send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ClusterNotFoundException", "Cluster not found."));

    let back = e.client.create_cluster().cluster_name("gone").send().await.unwrap();
    assert_eq!(back.cluster().unwrap().status(), Some("ACTIVE"));
    assert!(back.cluster().unwrap().tags().is_empty(), "a re-created cluster does not inherit old tags");
}

#[tokio::test]
async fn bad_cluster_names_are_refused() {
    let e = Ecsd::start().await;
    let (code, msg) = err(e.client.create_cluster().cluster_name("has space").send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "Cluster name 'has space' is invalid: up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed"
    );
    let (code, _) = err(e.client.create_cluster().cluster_name("x".repeat(256)).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    let (code, msg) = err(e
        .client
        .create_cluster()
        .cluster_name("cp")
        .capacity_providers("MY_CP")
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "The specified capacity provider 'MY_CP' does not exist: ecsd offers FARGATE and FARGATE_SPOT"
    );
}
