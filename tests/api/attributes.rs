use aws_sdk_ecs::types::{Attribute, TargetType};

use crate::common::{Ecsd, err};

async fn instance(e: &Ecsd) -> String {
    e.client.list_container_instances().send().await.unwrap().container_instance_arns()[0].clone()
}

fn attr(name: &str, value: &str, target: &str) -> Attribute {
    Attribute::builder()
        .name(name)
        .value(value)
        .target_type(TargetType::ContainerInstance)
        .target_id(target)
        .build()
        .unwrap()
}

#[tokio::test]
async fn custom_attributes_are_put_listed_and_deleted() {
    let e = Ecsd::start().await;
    let ci = instance(&e).await;
    let id = ci.rsplit('/').next().unwrap().to_owned();
    let out = e.client.put_attributes().attributes(attr("stack", "prod", &id)).send().await.unwrap();
    assert_eq!(out.attributes()[0].target_id(), Some(ci.as_str()), "a bare id comes back as the ARN");

    let list = e
        .client
        .list_attributes()
        .target_type(TargetType::ContainerInstance)
        .attribute_name("stack")
        .send()
        .await
        .unwrap();
    assert_eq!(list.attributes().len(), 1);
    assert_eq!(list.attributes()[0].value(), Some("prod"));
    let builtin = e
        .client
        .list_attributes()
        .target_type(TargetType::ContainerInstance)
        .attribute_name("ecs.os-type")
        .attribute_value("linux")
        .send()
        .await
        .unwrap();
    assert_eq!(builtin.attributes().len(), 1, "ECS's own attributes are listed too");

    let d = e.client.describe_container_instances().container_instances(&ci).send().await.unwrap();
    assert!(d.container_instances()[0].attributes().iter().any(|a| a.name() == "stack"));

    let gone = Attribute::builder().name("stack").target_id(&ci).build().unwrap();
    e.client.delete_attributes().attributes(gone).send().await.unwrap();
    let list = e
        .client
        .list_attributes()
        .target_type(TargetType::ContainerInstance)
        .attribute_name("stack")
        .send()
        .await
        .unwrap();
    assert!(list.attributes().is_empty());
}

#[tokio::test]
async fn attributes_are_checked() {
    let e = Ecsd::start().await;
    let ci = instance(&e).await;
    let (code, msg) =
        err(e.client.put_attributes().attributes(attr("x", "y", "nope")).send().await.unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("TargetNotFoundException", "Could not find nope."));
    let (code, msg) =
        err(e.client.put_attributes().attributes(attr("bad name!", "y", &ci)).send().await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "attributes[0].name 'bad name!' is not valid: 1 to 128 letters, numbers, hyphens, underscores, slashes, backslashes or periods"
    );
    for i in 0..10 {
        e.client.put_attributes().attributes(attr(&format!("a{i}"), "v", &ci)).send().await.unwrap();
    }
    let (code, msg) =
        err(e.client.put_attributes().attributes(attr("a10", "v", &ci)).send().await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("ClientException", "A container instance can have at most 10 custom attributes")
    );
    let (code, _) = err(e
        .client
        .list_attributes()
        .target_type(TargetType::ContainerInstance)
        .cluster("ghost")
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "ClusterNotFoundException");
}

#[tokio::test]
async fn the_agents_reserved_memory_and_instance_attributes_shape_the_container_instance() {
    let memory = |e: &Ecsd| {
        let e = e.client.clone();
        async move {
            let ci = e.list_container_instances().send().await.unwrap().container_instance_arns()[0].clone();
            let d = e.describe_container_instances().container_instances(ci).send().await.unwrap();
            let i = d.container_instances()[0].clone();
            let reg =
                i.registered_resources().iter().find(|r| r.name() == Some("MEMORY")).unwrap().integer_value();
            let attrs: Vec<(String, Option<String>)> =
                i.attributes().iter().map(|a| (a.name().to_owned(), a.value().map(str::to_owned))).collect();
            (reg, attrs)
        }
    };
    // Positive control: without the variables, the whole memory and no custom attribute.
    let plain = Ecsd::start().await;
    let (all, attrs) = memory(&plain).await;
    assert!(!attrs.iter().any(|(n, _)| n == "stack"), "{attrs:?}");
    let e = Ecsd::start_with(&[
        ("ECS_RESERVED_MEMORY", "256"),
        ("ECS_INSTANCE_ATTRIBUTES", r#"{"stack":"prod"}"#),
    ])
    .await;
    let (reserved, attrs) = memory(&e).await;
    assert_eq!(all - reserved, 256, "ECS_RESERVED_MEMORY is kept back from tasks");
    assert!(attrs.contains(&("stack".to_owned(), Some("prod".to_owned()))), "{attrs:?}");
    // ListAttributes finds the instance by it, as ECS does the agent's registered attributes.
    let listed = e
        .client
        .list_attributes()
        .target_type(TargetType::ContainerInstance)
        .attribute_name("stack")
        .attribute_value("prod")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.attributes().len(), 1, "{listed:?}");
}
