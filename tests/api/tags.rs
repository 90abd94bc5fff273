use aws_sdk_ecs::types::{ContainerDefinition, Tag};

use crate::common::{Ecsd, arn, err};

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

async fn register(e: &Ecsd, family: &str) -> String {
    let out = e
        .client
        .register_task_definition()
        .family(family)
        .container_definitions(ContainerDefinition::builder().name("a").image("busybox").memory(32).build())
        .send()
        .await
        .unwrap();
    out.task_definition().unwrap().task_definition_arn().unwrap().to_owned()
}

#[tokio::test]
async fn tags_on_clusters_and_task_definitions() {
    let e = Ecsd::start().await;
    let cluster = arn("cluster/default");
    let td = register(&e, "tagged").await;
    for resource in [&cluster, &td] {
        e.client
            .tag_resource()
            .resource_arn(resource)
            .tags(tag("a", "1"))
            .tags(tag("b", "2"))
            .send()
            .await
            .unwrap();
        e.client.tag_resource().resource_arn(resource).tags(tag("a", "one")).send().await.unwrap();
        let out = e.client.list_tags_for_resource().resource_arn(resource).send().await.unwrap();
        assert_eq!(out.tags(), [tag("a", "one"), tag("b", "2")], "{resource}");
        e.client
            .untag_resource()
            .resource_arn(resource)
            .tag_keys("a")
            .tag_keys("absent")
            .send()
            .await
            .unwrap();
        let out = e.client.list_tags_for_resource().resource_arn(resource).send().await.unwrap();
        assert_eq!(out.tags(), [tag("b", "2")], "{resource}");
    }
    let d = e
        .client
        .describe_task_definition()
        .task_definition("tagged")
        .include("TAGS".into())
        .send()
        .await
        .unwrap();
    assert_eq!(d.tags(), [tag("b", "2")]);
}

#[tokio::test]
async fn tag_limits_are_ecs_limits() {
    let e = Ecsd::start().await;
    let cluster = arn("cluster/default");
    let many: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
    e.client.tag_resource().resource_arn(&cluster).set_tags(Some(many)).send().await.unwrap();
    let (code, msg) = err(e
        .client
        .tag_resource()
        .resource_arn(&cluster)
        .tags(tag("one-more", "v"))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "Too many tags: a resource can have at most 50 tags, and this request would leave it with 51"
    );

    let (code, msg) = err(e
        .client
        .tag_resource()
        .resource_arn(&cluster)
        .tags(tag("aws:owner", "me"))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "Tag key 'aws:owner' uses the reserved prefix 'aws:': keys starting with aws: are reserved for AWS use"
    );

    let long_key = "k".repeat(129);
    let (code, msg) = err(e
        .client
        .tag_resource()
        .resource_arn(&cluster)
        .tags(tag(&long_key, "v"))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "1 validation error detected: Value '".to_owned()
            + &long_key
            + "' at 'tags[0].key' failed to satisfy constraint: Member must have length less than or equal to 128"
    );
}

#[tokio::test]
async fn tagging_what_does_not_exist_fails() {
    let e = Ecsd::start().await;
    let (code, msg) = err(e
        .client
        .tag_resource()
        .resource_arn(arn("cluster/none"))
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ClusterNotFoundException", "Cluster not found."));
    let (code, msg) = err(e
        .client
        .list_tags_for_resource()
        .resource_arn(arn("task-definition/none:1"))
        .send()
        .await
        .unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ResourceNotFoundException", "The specified resource could not be found.")
    );
    let (code, msg) =
        err(e.client.list_tags_for_resource().resource_arn("not-an-arn").send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "resourceArn: 'not-an-arn' is not a valid ECS ARN");
}

#[tokio::test]
async fn tasks_are_tagged_listed_and_described_with_their_tags() {
    let e = Ecsd::start().await;
    register(&e, "job").await;
    let out = e.client.run_task().task_definition("job").tags(tag("run", "1")).send().await.unwrap();
    let task = out.tasks()[0].task_arn().unwrap().to_owned();
    e.client.tag_resource().resource_arn(&task).tags(tag("owner", "me")).send().await.unwrap();
    let out = e.client.list_tags_for_resource().resource_arn(&task).send().await.unwrap();
    assert_eq!(out.tags(), [tag("run", "1"), tag("owner", "me")]);
    let d = e.client.describe_tasks().tasks(&task).include("TAGS".into()).send().await.unwrap();
    assert_eq!(d.tasks()[0].tags(), [tag("run", "1"), tag("owner", "me")]);
    // A task ecsd does not have is not found (the same ARN shape, another id).
    let (code, _) = err(e
        .client
        .list_tags_for_resource()
        .resource_arn(arn("task/default/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "ResourceNotFoundException");
}
