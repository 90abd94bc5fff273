//! The ECS agent's introspection API and /metrics beside the ECS API: what `curl
//! 127.0.0.1:51678/v1/...` shows for the tasks ecsd runs.

use aws_sdk_ecs::types::ContainerDefinition;
use serde_json::Value;

use crate::common::{Ecsd, arn, eventually};

async fn get(base: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn metadata_tasks_and_metrics_answer_as_the_agent_does() {
    let e = Ecsd::start_with(&[("ECS_CLUSTER", "prod")]).await;
    let base = format!("http://{}", e.daemon.as_ref().unwrap().introspection_addr().expect("served"));

    let (status, body) = get(&base, "/v1/metadata").await;
    assert_eq!(status, 200);
    let m = json(&body);
    assert_eq!(m["Cluster"], "prod");
    assert!(m["ContainerInstanceArn"].as_str().unwrap().starts_with(&arn("container-instance/prod/")));
    assert!(m["Version"].as_str().unwrap().starts_with(&format!("ecsd - v{}", env!("CARGO_PKG_VERSION"))));

    let (status, body) = get(&base, "/v1/tasks").await;
    assert_eq!((status, body.as_str()), (200, r#"{"Tasks":[]}"#));

    let c = ContainerDefinition::builder().name("app").image("busybox").memory(32).build();
    e.client.register_task_definition().family("web").container_definitions(c).send().await.unwrap();
    let out = e.client.run_task().cluster("prod").task_definition("web").send().await.unwrap();
    let task_arn = out.tasks()[0].task_arn().unwrap().to_owned();
    let runtime_id = out.tasks()[0].containers()[0].runtime_id().unwrap().to_owned();
    let listed = eventually(10, "the task RUNNING in /v1/tasks", || async {
        let (_, body) = get(&base, "/v1/tasks").await;
        let v = json(&body);
        (v["Tasks"][0]["KnownStatus"] == "RUNNING").then_some(v)
    })
    .await;
    let t = &listed["Tasks"][0];
    assert_eq!(t["Arn"], task_arn.as_str());
    assert_eq!(t["DesiredStatus"], "RUNNING");
    assert_eq!((t["Family"].as_str(), t["Version"].as_str()), (Some("web"), Some("1")));
    assert_eq!(t["Containers"][0]["DockerId"], runtime_id.as_str());
    assert_eq!(t["Containers"][0]["Name"], "app");
    assert!(t["Containers"][0]["DockerName"].as_str().unwrap().starts_with("ecs-web-1-app-"));

    // One task by its ARN, by its full runtime id and by the short one.
    for query in [
        format!("?taskarn={task_arn}"),
        format!("?dockerid={runtime_id}"),
        format!("?dockerid={}", &runtime_id[..12]),
    ] {
        let (status, body) = get(&base, &format!("/v1/tasks{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(json(&body)["Arn"], task_arn.as_str(), "{query}");
    }
    let empty = r#"{"Arn":"","KnownStatus":"","Family":"","Version":"","Containers":null}"#;
    let (status, body) = get(&base, "/v1/tasks?dockerid=000000000000").await;
    assert_eq!((status, body.as_str()), (404, empty));
    let (status, body) = get(&base, &format!("/v1/tasks?taskarn={task_arn}&dockerid={runtime_id}")).await;
    assert_eq!((status, body.as_str()), (400, empty));

    let (status, body) = get(&base, "/nothing-here").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["AvailableCommands"][0], "/v1/metadata");

    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = r.text().await.unwrap();
    assert!(text.contains("ecsd_tasks{status=\"RUNNING\"} 1\n"), "{text}");
    assert!(text.contains("ecsd_api_requests_total{operation=\"RunTask\",outcome=\"ok\"} 1\n"), "{text}");
    assert!(text.contains("ecsd_exec_sessions 0\n"), "{text}");

    // A bad call is counted under its exception; an unknown operation does not add a series.
    let bad = e.client.describe_tasks().cluster("nope").tasks("x").send().await;
    assert!(bad.is_err());
    let raw = reqwest::Client::new()
        .post(&e.url)
        .header("x-amz-target", "AmazonEC2ContainerServiceV20141113.NoSuchCall")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let (_, text) = get(&base, "/metrics").await;
    assert!(
        text.contains(
            "ecsd_api_requests_total{operation=\"DescribeTasks\",outcome=\"ClusterNotFoundException\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "ecsd_api_requests_total{operation=\"unknown\",outcome=\"UnknownOperationException\"} 1\n"
        ),
        "{text}"
    );
    assert!(!text.contains("NoSuchCall"), "{text}");
}

#[tokio::test]
async fn requests_with_a_body_are_refused_and_off_turns_it_off() {
    let e = Ecsd::start().await;
    let base = format!("http://{}", e.daemon.as_ref().unwrap().introspection_addr().unwrap());
    let r = reqwest::Client::new().post(format!("{base}/v1/tasks")).body(vec![b'x'; 1 << 20]).send().await;
    // Refused before the body is read: a 413, or the connection closed under the upload.
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    let off = Ecsd::start_with(&[("ECSD_INTROSPECTION_LISTEN", "off")]).await;
    assert_eq!(off.daemon.as_ref().unwrap().introspection_addr(), None);
}
