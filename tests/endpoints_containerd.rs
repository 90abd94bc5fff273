//! The task metadata and credentials endpoints at 169.254.170.2, seen from inside running
//! tasks (their own network namespaces), with moto_server as STS, IAM, Secrets Manager and SSM.
//!
//! Same set-up as tests/tasks_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`),
//! plus the `.venv` of hack/setup (moto_server, the aws CLI and boto3). Every request to
//! 169.254.170.2 is made inside a task's namespace (`ip netns exec`), never from the host's.

mod harness;
mod support;

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_ecs::types::{KeyValuePair, Secret, Task};
use harness::*;
use support::Moto;

/// A container that prints its environment, then idles until /ctl/fill appears, fills 32 MiB
/// of /dev/shm (memory of its cgroup), and idles again.
const APP: &str = "env | sort; trap 'exit 0' TERM; \
                   until [ -e /ctl/fill ]; do sleep 0.05; done; \
                   dd if=/dev/zero of=/dev/shm/fill bs=1M count=32 2>/dev/null; echo filled; \
                   sleep 1000 & wait";

/// The environment a container was created with (from the runtime's copy of its spec).
async fn container_env(e: &Ecsd, runtime_id: &str) -> BTreeMap<String, String> {
    e.container_config(runtime_id).await.env
}

/// GET `url` from inside the namespace with the host's static busybox wget.
async fn get_in(netns: &str, url: &str) -> (i32, String) {
    let (code, out, err) = in_netns(netns, &[], &["busybox", "wget", "-qO-", url]).await;
    (code, if code == 0 { out } else { err })
}

async fn get_json(netns: &str, url: &str) -> serde_json::Value {
    let (code, body) = get_in(netns, url).await;
    assert_eq!(code, 0, "GET {url} in {netns}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// The status line and body of a request that may fail (busybox wget prints no body then).
async fn status_in(netns: &str, url: &str) -> String {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = "import sys, urllib.request, urllib.error\n\
                  try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status, r.read().decode())\n\
                  except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n";
    let (_, out, err) = in_netns(netns, &[], &[py.to_str().unwrap(), "-c", script, url]).await;
    format!("{out}{err}").trim().to_owned()
}

async fn setup_aws(moto: &Moto) -> (String, String, String) {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let role = moto
        .aws(&["iam", "create-role", "--role-name", "app-role", "--assume-role-policy-document", trust])
        .await;
    let role_arn = role["Role"]["Arn"].as_str().unwrap().to_owned();
    let exec = moto
        .aws(&["iam", "create-role", "--role-name", "exec-role", "--assume-role-policy-document", trust])
        .await;
    let exec_arn = exec["Role"]["Arn"].as_str().unwrap().to_owned();
    let plain = moto
        .aws(&["secretsmanager", "create-secret", "--name", "db-password", "--secret-string", "s3cr3t"])
        .await;
    let json = moto
        .aws(&[
            "secretsmanager",
            "create-secret",
            "--name",
            "db-json",
            "--secret-string",
            r#"{"user":"admin","port":"5432"}"#,
        ])
        .await;
    moto.aws(&["ssm", "put-parameter", "--name", "/app/mode", "--value", "fast", "--type", "String"]).await;
    moto.aws(&[
        "ssm",
        "put-parameter",
        "--name",
        "/app/token",
        "--value",
        "tok-123",
        "--type",
        "SecureString",
    ])
    .await;
    let _ = plain;
    (role_arn, exec_arn, json["ARN"].as_str().unwrap().to_owned())
}

fn secret(name: &str, from: &str) -> Secret {
    Secret::builder().name(name).value_from(from).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd, netavark and moto_server"]
async fn a_task_reads_its_metadata_stats_credentials_and_secrets_from_inside() {
    let _g = CONTAINERD.read().await;
    let moto = Moto::start();
    let (role_arn, exec_arn, json_arn) = setup_aws(&moto).await;
    let plain_arn =
        moto.aws(&["secretsmanager", "describe-secret", "--secret-id", "db-password"]).await["ARN"]
            .as_str()
            .unwrap()
            .to_owned();
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = Ecsd::start(&env).await;

    let app = sh("app", APP)
        .environment(KeyValuePair::builder().name("AWS_REGION").value("eu-west-1").build())
        .secrets(secret("DB_PASSWORD", &plain_arn))
        .secrets(secret("DB_USER", &format!("{json_arn}:user::")))
        .secrets(secret("APP_MODE", "/app/mode"))
        .secrets(secret("APP_TOKEN", "arn:aws:ssm:us-east-1:123456789012:parameter/app/token"))
        .build();
    e.client
        .register_task_definition()
        .family("meta")
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .task_role_arn(&role_arn)
        .execution_role_arn(&exec_arn)
        .cpu("256")
        .memory("512")
        .container_definitions(app)
        .volumes(
            aws_sdk_ecs::types::Volume::builder()
                .name("ctl")
                .host(
                    aws_sdk_ecs::types::HostVolumeProperties::builder()
                        .source_path(e.ctl.path().to_str().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let arn = arn_of(&e.run_awsvpc("meta", "subnet-default").await);
    let t: Task = e.wait_status(&arn, "RUNNING").await;
    let netns = e.netns_name(&arn);
    let c = named(&t, "app");
    let runtime_id = c.runtime_id().unwrap().to_owned();

    // The injected environment; the definition's AWS_REGION wins over ecsd's.
    let cenv = container_env(&e, &runtime_id).await;
    let v4 = cenv["ECS_CONTAINER_METADATA_URI_V4"].clone();
    assert!(v4.starts_with("http://169.254.170.2/v4/"), "{v4}");
    let id = v4.rsplit('/').next().unwrap().to_owned();
    assert_eq!(cenv["ECS_CONTAINER_METADATA_URI"], format!("http://169.254.170.2/v3/{id}"));
    assert_eq!(cenv["ECS_AGENT_URI"], format!("http://169.254.170.2/api/{id}"));
    assert_eq!(cenv["AWS_EXECUTION_ENV"], "AWS_ECS_EC2");
    assert_eq!(cenv["AWS_REGION"], "eu-west-1");
    assert!(!cenv.contains_key("AWS_DEFAULT_REGION"), "set only when neither is: {cenv:?}");
    let creds_uri = cenv["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"].clone();
    assert!(creds_uri.starts_with("/v2/credentials/"), "{creds_uri}");

    // Secrets: plain, json-key, SSM by name and by ARN.
    e.wait_log(&arn, "app", "PATH=").await;
    let logs = e.logs(&arn, "app");
    for want in ["DB_PASSWORD=s3cr3t\n", "DB_USER=admin\n", "APP_MODE=fast\n", "APP_TOKEN=tok-123\n"] {
        assert!(logs.contains(want), "{want:?} in the container's environment:\n{logs}");
    }

    // v4 container and task metadata match DescribeTasks.
    let meta = get_json(&netns, &v4).await;
    assert_eq!(meta["DockerId"], runtime_id.as_str());
    assert_eq!(meta["Name"], "app");
    assert_eq!(meta["KnownStatus"], "RUNNING");
    assert_eq!(meta["ContainerARN"], c.container_arn().unwrap());
    let ip = t.attachments()[0]
        .details()
        .iter()
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .unwrap()
        .to_owned();
    assert_eq!(meta["Networks"][0]["NetworkMode"], "awsvpc");
    assert_eq!(meta["Networks"][0]["IPv4Addresses"][0], ip.as_str());
    let task = get_json(&netns, &format!("{v4}/task")).await;
    assert_eq!(task["TaskARN"], arn.as_str());
    assert_eq!(task["Family"], "meta");
    assert_eq!(task["Revision"], "1");
    assert_eq!(task["DesiredStatus"], "RUNNING");
    assert_eq!(task["KnownStatus"], "RUNNING");
    assert_eq!(task["Limits"]["CPU"], 0.25);
    assert_eq!(task["Limits"]["Memory"], 512);
    assert_eq!(task["LaunchType"], "EC2");
    assert_eq!(task["Containers"][0]["DockerId"], runtime_id.as_str());
    assert_eq!(task["AvailabilityZone"], t.availability_zone().unwrap());
    let v3 = get_json(&netns, &cenv["ECS_CONTAINER_METADATA_URI"]).await;
    assert_eq!(v3["DockerId"], runtime_id.as_str());
    assert!(v3.get("ContainerARN").is_none(), "v3 has no ContainerARN");

    // Stats change as the container uses memory.
    let before = get_json(&netns, &format!("{v4}/stats")).await;
    let used = |s: &serde_json::Value| s["memory_stats"]["usage"].as_u64().unwrap();
    e.signal_file("fill");
    e.wait_log(&arn, "app", "filled").await;
    let after = get_json(&netns, &format!("{v4}/stats")).await;
    assert!(used(&after) >= used(&before) + 30 * 1024 * 1024, "usage {} -> {}", used(&before), used(&after));
    assert!(after["networks"]["eth0"]["rx_bytes"].is_u64(), "{after}");
    let all = get_json(&netns, &format!("{v4}/task/stats")).await;
    assert!(all[runtime_id.as_str()]["memory_stats"]["usage"].is_u64());

    // Credentials: what moto's STS issued for the task role, with the task id as session.
    let creds = get_json(&netns, &format!("http://169.254.170.2{creds_uri}")).await;
    assert_eq!(creds["RoleArn"], role_arn.as_str());
    let caller = tokio::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws"))
        .args([
            "--endpoint-url",
            &moto.url,
            "--region",
            "us-east-1",
            "sts",
            "get-caller-identity",
            "--output",
            "json",
        ])
        .env("AWS_ACCESS_KEY_ID", creds["AccessKeyId"].as_str().unwrap())
        .env("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"].as_str().unwrap())
        .env("AWS_SESSION_TOKEN", creds["Token"].as_str().unwrap())
        .output()
        .await
        .unwrap();
    let caller: serde_json::Value = serde_json::from_slice(&caller.stdout).unwrap();
    let caller_arn = caller["Arn"].as_str().unwrap();
    assert!(
        caller_arn.contains(":assumed-role/app-role/") && caller_arn.ends_with(&task_id(&arn)),
        "the keys are the task role's session: {caller_arn}"
    );

    // boto3's container provider finds them with nothing but the injected variable.
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let (code, out, err) = in_netns(
        &netns,
        &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".to_owned(), creds_uri.clone())],
        &[
            py.to_str().unwrap(),
            "-c",
            "import boto3; c = boto3.Session(region_name='us-east-1').get_credentials(); \
             print(c.method, c.get_frozen_credentials().access_key)",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("container-role {}", creds["AccessKeyId"].as_str().unwrap()));

    // Another task cannot read them, even with the id; it has its own.
    e.register_mode("other", "awsvpc", vec![sh("app", IDLE).build()]).await;
    let other = arn_of(&e.run_awsvpc("other", "subnet-default").await);
    e.wait_status(&other, "RUNNING").await;
    let other_ns = e.netns_name(&other);
    let stolen = status_in(&other_ns, &format!("http://169.254.170.2{creds_uri}")).await;
    assert!(stolen.starts_with("400 "), "{stolen}");
    assert!(stolen.contains("\"code\":\"InvalidIdInRequest\""), "{stolen}");
    let foreign = status_in(&other_ns, &v4).await;
    assert!(foreign.starts_with("404 "), "another task's metadata id: {foreign}");

    // Rate limit: a burst beyond 60 requests gets 429s.
    let py_burst = "import sys, urllib.request, urllib.error\n\
                    codes = []\n\
                    for _ in range(80):\n    try:\n        codes.append(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n    except urllib.error.HTTPError as e:\n        codes.append(e.code)\n\
                    print(codes.count(200), codes.count(429))\n";
    let (_, out, err) = in_netns(&netns, &[], &[py.to_str().unwrap(), "-c", py_burst, &v4]).await;
    let counts: Vec<u32> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(
        counts.len() == 2 && counts[1] > 0 && counts[0] >= 50,
        "200s and 429s of 80 requests: {out}{err}"
    );

    e.stop(&arn, "done").await;
    e.wait_status(&arn, "STOPPED").await;
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd, netavark and moto_server"]
async fn an_unresolvable_secret_fails_the_task_to_start() {
    let _g = CONTAINERD.read().await;
    let moto = Moto::start();
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = Ecsd::start(&env).await;
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf";
    e.register("bad", vec![sh("app", "exit 0").secrets(secret("NOPE", missing)).build()]).await;
    let arn = arn_of(&e.run("bad").await);
    let t = e.wait_status(&arn, "STOPPED").await;
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    let reason = t.stopped_reason().unwrap();
    assert!(reason.starts_with("ResourceInitializationError: "), "{reason}");
    assert!(reason.contains(missing), "the reason names the secret: {reason}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd, netavark and moto_server"]
async fn offline_credentials_host_mode_and_a_restart() {
    let _g = CONTAINERD.read().await;
    // No STS anywhere: the documented offline mode hands out the configured static keys.
    let mut e = Ecsd::start(&[
        ("ECSD_STATIC_ACCESS_KEY_ID", "AKIDLOCAL"),
        ("ECSD_STATIC_SECRET_ACCESS_KEY", "local-secret"),
    ])
    .await;
    let role = "arn:aws:iam::000000000000:role/local";
    for (family, mode) in [("vpc", "awsvpc"), ("hostnet", "host")] {
        e.client
            .register_task_definition()
            .family(family)
            .network_mode(aws_sdk_ecs::types::NetworkMode::from(mode))
            .task_role_arn(role)
            .container_definitions(
                aws_sdk_ecs::types::ContainerDefinition::builder()
                    .name("app")
                    .image("busybox")
                    .memory(32)
                    .command("sh")
                    .command("-c")
                    .command(IDLE)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let vpc = arn_of(&e.run_awsvpc("vpc", "subnet-default").await);
    let host = arn_of(&e.client.run_task().task_definition("hostnet").send().await.unwrap().tasks()[0]);
    let vpc_task = e.wait_status(&vpc, "RUNNING").await;
    let host_task = e.wait_status(&host, "RUNNING").await;
    let netns = e.netns_name(&vpc);
    let vpc_env = container_env(&e, named(&vpc_task, "app").runtime_id().unwrap()).await;
    let creds_uri = format!("http://169.254.170.2{}", vpc_env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]);
    let creds = get_json(&netns, &creds_uri).await;
    assert_eq!(
        (creds["AccessKeyId"].as_str(), creds["SecretAccessKey"].as_str()),
        (Some("AKIDLOCAL"), Some("local-secret"))
    );
    assert_eq!(creds["RoleArn"], role);

    // Host networking has no namespace of its own: the endpoints are on the host's loopback,
    // the credentials at a full URI, found by their unguessable ids.
    let host_env = container_env(&e, named(&host_task, "app").runtime_id().unwrap()).await;
    let v4 = host_env["ECS_CONTAINER_METADATA_URI_V4"].clone();
    assert!(v4.starts_with("http://127.0.0.1:"), "{v4}");
    let full = host_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].clone();
    assert!(full.starts_with("http://127.0.0.1:") && full.contains("/v2/credentials/"), "{full}");
    assert!(!host_env.contains_key("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"));
    let meta: serde_json::Value =
        serde_json::from_str(&reqwest::get(&v4).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(meta["DockerId"], named(&host_task, "app").runtime_id().unwrap());
    assert_eq!(meta["Networks"][0]["NetworkMode"], "host");
    let host_creds: serde_json::Value =
        serde_json::from_str(&reqwest::get(&full).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(host_creds["AccessKeyId"], "AKIDLOCAL");
    let base = v4.split("/v4/").next().unwrap().to_owned();
    let guess = reqwest::get(format!("{base}/v4/{}", uuid::Uuid::new_v4())).await.unwrap();
    assert_eq!(guess.status(), 404);

    // A restarted ecsd opens the listeners again; the ids stay what the containers have.
    e.down().await;
    e.up().await;
    let again = eventually(WAIT, "the endpoint after a restart", || async {
        let (code, body) = get_in(&netns, &creds_uri).await;
        (code == 0).then_some(body)
    })
    .await;
    assert!(again.contains("AKIDLOCAL"), "{again}");
    let v4_after = container_env(&e, named(&host_task, "app").runtime_id().unwrap()).await;
    eventually(WAIT, "the host endpoint after a restart", || async {
        let r = reqwest::get(&v4_after["ECS_CONTAINER_METADATA_URI_V4"]).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // Stopped: the credentials are revoked.
    e.stop(&host, "done").await;
    e.wait_status(&host, "STOPPED").await;
    let gone = reqwest::get(&full).await.unwrap();
    assert_eq!(gone.status(), 400);
    e.finish().await;
}
