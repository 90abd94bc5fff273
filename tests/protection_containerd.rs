//! Task scale-in protection set from inside a real task, through the agent API at
//! `$ECS_AGENT_URI/task-protection/v1/state` in the task's own network namespace: it keeps
//! the task alive through a scale-in to 0 until it is cleared.
//!
//! Same set-up as tests/tasks_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`),
//! plus the `.venv` of hack/setup (its python makes the PUT requests busybox cannot).

mod harness;
mod support;

use std::path::Path;

use aws_sdk_ecs::types::{AwsVpcConfiguration, DesiredStatus, NetworkConfiguration, NetworkMode};
use harness::*;

/// `METHOD url [body]` from inside the namespace; the status and the body.
async fn call_in(netns: &str, method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = "import sys, urllib.request, urllib.error\n\
                  data = sys.argv[3].encode() if len(sys.argv) > 3 else None\n\
                  req = urllib.request.Request(sys.argv[2], data=data, method=sys.argv[1])\n\
                  try:\n    r = urllib.request.urlopen(req, timeout=5); print(r.status); print(r.read().decode())\n\
                  except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
    let mut argv = vec![py.to_str().unwrap(), "-c", script, method, url];
    argv.extend(body);
    let (code, out, err) = in_netns(netns, &[], &argv).await;
    assert_eq!(code, 0, "{method} {url}: {err}");
    let (status, body) = out.split_once('\n').unwrap_or_else(|| panic!("{method} {url}: {out}"));
    (status.trim().parse().unwrap(), serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null))
}

/// The `ECS_AGENT_URI` a container was started with.
async fn agent_uri(e: &Ecsd, runtime_id: &str) -> String {
    let info: serde_json::Value =
        serde_json::from_str(&e.ctr(&["containers", "info", runtime_id]).await).unwrap();
    info["Spec"]["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str()?.strip_prefix("ECS_AGENT_URI="))
        .next()
        .expect("ECS_AGENT_URI in the container's environment")
        .to_owned()
}

async fn running(e: &Ecsd, service: &str) -> Vec<String> {
    let out = e
        .client
        .list_tasks()
        .service_name(service)
        .desired_status(DesiredStatus::Running)
        .send()
        .await
        .unwrap();
    out.task_arns().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn protection_set_inside_a_task_keeps_it_through_a_scale_in_until_cleared() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    e.client
        .register_task_definition()
        .family("worker")
        .network_mode(NetworkMode::Awsvpc)
        .task_role_arn("app-role")
        .container_definitions(sh("app", IDLE).build())
        .volumes(e.ctl_volume())
        .send()
        .await
        .unwrap();
    let nc = NetworkConfiguration::builder()
        .awsvpc_configuration(AwsVpcConfiguration::builder().subnets("subnet-default").build().unwrap())
        .build();
    e.client
        .create_service()
        .service_name("workers")
        .task_definition("worker")
        .desired_count(1)
        .network_configuration(nc)
        .send()
        .await
        .unwrap();
    let arn =
        eventually(WAIT, "the service's task", || async { running(&e, "workers").await.into_iter().next() })
            .await;
    let t = e.wait_status(&arn, "RUNNING").await;
    let netns = e.netns_name(&arn);
    let state =
        format!("{}/task-protection/v1/state", agent_uri(&e, named(&t, "app").runtime_id().unwrap()).await);
    assert!(state.starts_with("http://169.254.170.2/api/"), "{state}");

    // Not protected yet (the positive control of the GET).
    let (status, body) = call_in(&netns, "GET", &state, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"protection": {"ExpirationDate": null, "ProtectionEnabled": false, "TaskArn": arn}})
    );
    // A request without ProtectionEnabled is refused as the agent refuses it.
    let (status, body) = call_in(&netns, "PUT", &state, Some("{}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["Code"], "InvalidParameterException");
    assert_eq!(body["error"]["Message"], "Invalid request: does not contain 'ProtectionEnabled' field");

    let (status, body) =
        call_in(&netns, "PUT", &state, Some(r#"{"ProtectionEnabled":true,"ExpiresInMinutes":60}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["protection"]["ProtectionEnabled"], true);
    assert_eq!(body["protection"]["TaskArn"], arn.as_str());
    assert!(body["protection"]["ExpirationDate"].as_str().is_some_and(|d| d.ends_with('Z')), "{body}");
    let got = e.client.get_task_protection().cluster("default").tasks(&arn).send().await.unwrap();
    assert!(got.protected_tasks()[0].protection_enabled());

    // Scale-in to 0: the task stays while protected, and the service says why.
    e.client.update_service().service("workers").desired_count(0).send().await.unwrap();
    eventually(WAIT, "the protection event", || async {
        let s = e.client.describe_services().services("workers").send().await.unwrap();
        s.services()[0]
            .events()
            .iter()
            .any(|ev| ev.message().is_some_and(|m| m.contains("1 tasks under protection")))
            .then_some(())
    })
    .await;
    assert_eq!(e.describe(&arn).await.desired_status(), Some("RUNNING"));
    assert_eq!(running(&e, "workers").await, std::slice::from_ref(&arn));

    // Cleared from inside: the scale-in proceeds.
    let (status, body) = call_in(&netns, "PUT", &state, Some(r#"{"ProtectionEnabled":false}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["protection"]["ProtectionEnabled"], false);
    let t = e.wait_status(&arn, "STOPPED").await;
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("ServiceSchedulerInitiated"));
    e.client.delete_service().service("workers").send().await.unwrap();
}
