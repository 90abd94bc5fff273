//! The awslogs log driver with real tasks: a container's output reaches moto_server's
//! CloudWatch Logs with the task's execution role, in order, its last line included, before
//! the task is STOPPED; and `ecsd logs` still has it.
//!
//! Same set-up as tests/tasks_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`),
//! plus the `.venv` of hack/setup (moto_server and the aws CLI).

mod harness;
mod support;

use aws_sdk_ecs::types::LogConfiguration;
use harness::*;
use support::Moto;

/// 300 numbered lines on stdout and stderr, then a last line without a newline, then exit.
const CHATTY: &str = "i=0; while [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); done; \
                      echo 'to stderr' >&2; printf 'the very last line'";

fn awslogs(group: &str) -> LogConfiguration {
    LogConfiguration::builder()
        .log_driver(aws_sdk_ecs::types::LogDriver::Awslogs)
        .options("awslogs-group", group)
        .options("awslogs-region", "us-east-1")
        .options("awslogs-stream-prefix", "app")
        .options("awslogs-create-group", "true")
        .options("mode", "non-blocking")
        .options("max-buffer-size", "4m")
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and moto_server"]
async fn awslogs_ships_every_line_to_cloudwatch_logs_before_the_task_is_stopped() {
    let _g = CONTAINERD.read().await;
    let moto = Moto::start();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let exec = moto
        .aws(&["iam", "create-role", "--role-name", "exec-role", "--assume-role-policy-document", trust])
        .await;
    let exec_arn = exec["Role"]["Arn"].as_str().unwrap().to_owned();
    let mut env: Vec<(&str, String)> = moto.env();
    env.push(("AWS_ENDPOINT_URL_LOGS", moto.url.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = Ecsd::start(&env).await;

    e.client
        .register_task_definition()
        .family("chatty")
        .execution_role_arn(&exec_arn)
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("busybox")
                .memory(32)
                .command("sh")
                .command("-c")
                .command(CHATTY)
                .log_configuration(awslogs("/ecs/chatty"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let arn = arn_of(&e.run("chatty").await);
    let t = e.wait_status(&arn, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0));

    // Already there when STOPPED is reported: no waiting.
    let stream = format!("app/app/{}", task_id(&arn));
    let out = moto
        .aws(&[
            "logs",
            "get-log-events",
            "--log-group-name",
            "/ecs/chatty",
            "--log-stream-name",
            &stream,
            "--start-from-head",
        ])
        .await;
    let got: Vec<&str> =
        out["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    // stdout and stderr are separate pipes: the stderr line is there once, anywhere.
    assert_eq!(got.iter().filter(|m| **m == "to stderr").count(), 1, "{got:?}");
    let stdout: Vec<&str> = got.iter().copied().filter(|m| *m != "to stderr").collect();
    let mut want: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    want.push("the very last line".into());
    assert_eq!(stdout, want, "the tail of what arrived: {:?}", &got[got.len().saturating_sub(5)..]);

    // The same output stays on the host for `ecsd logs` (stderr's line anywhere in it).
    let local = e.logs(&arn, "app");
    assert!(local.contains("to stderr\n"), "{local}");
    let stdout: String = (0..300).map(|i| format!("line {i}\n")).collect::<String>() + "the very last line";
    assert_eq!(local.replacen("to stderr\n", "", 1), stdout);
}
