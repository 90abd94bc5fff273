//! `ecsd deploy render` reading its template from an image label in the registry lab
//! (Debian's docker-registry on 127.0.0.1, `hack/registry`): only the manifest and the
//! config blob are fetched, never a layer; an image without the label is exit 3 listing the
//! labels it has. And `ecsd deploy` end to end on the real containerd: the labelled image,
//! moto as IAM and Secrets Manager, a service that rolls to the new revision and whose
//! container sees the overlay's value and the secret's.
//!
//! Run by the root tier with the other registry-lab tests: `flock -o /tmp/ecsd-root.lock hack/test root`.

mod harness;
mod support;

use std::process::Output;

use aws_sdk_ecs::types::{DeploymentCircuitBreaker, DeploymentConfiguration, DesiredStatus};
use harness::{CONTAINERD, Ecsd, IDLE, WAIT, arn_of, sh};
use support::registry::LabRegistry;
use support::{Moto, ecsd_deploy, eventually};

fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn render(image: &str, label: &str) -> Output {
    render_with(image, label, &[])
}

/// `ecsd deploy render` with the variables `env` and an empty docker config.
fn render_with(image: &str, label: &str, env: &[(&str, &str)]) -> Output {
    let docker_config = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["deploy", "render", "--image", image, "--template-label", label, "--set", "/cpu=\"256\""])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("DOCKER_CONFIG", docker_config.path())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root and containerd"]
fn the_template_comes_from_the_image_label_without_a_layer_download() {
    let registry = LabRegistry::start("none");
    let image = format!("{}/labelled:latest", registry.addr);
    let out = render(&image, "com.example.ecs.task-definition");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{{\n  \"family\": \"from-label\",\n  \"containerDefinitions\": [\n    {{\n      \"name\": \"app\",\n      \
             \"image\": \"{image}\",\n      \"memory\": 32\n    }}\n  ],\n  \"cpu\": \"256\"\n}}\n"
        )
    );
    let log = registry.log();
    assert!(log.contains("\"GET /v2/labelled/manifests/latest "), "the manifest was read: {log}");
    let blob_gets = log.lines().filter(|l| l.contains("\"GET /v2/labelled/blobs/")).count();
    assert_eq!(blob_gets, 1, "only the config blob is fetched: {log}");

    // --pin-digest: the image by the digest the registry gives for the tag.
    let digest_of = |name: &str| {
        let accept = "Accept: application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let url = format!("http://{}/v2/{name}/manifests/latest", registry.addr);
        let headers = run("curl", &["-sfI", "-H", accept, &url]);
        let digest = headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("docker-content-digest: ").map(|d| d.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no digest in {headers}"));
        assert!(digest.starts_with("sha256:"), "{digest}");
        digest
    };
    let out = render_with(&image, "com.example.ecs.task-definition", &[]);
    let pinned = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args([
            "deploy",
            "render",
            "--image",
            &image,
            "--template-label",
            "com.example.ecs.task-definition",
            "--pin-digest",
        ])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert_eq!(pinned.status.code(), Some(0), "{}", String::from_utf8_lossy(&pinned.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&pinned.stdout).unwrap();
    let want = format!("{}/labelled@{}", registry.addr, digest_of("labelled"));
    assert_eq!(doc["containerDefinitions"][0]["image"], want.as_str());
    // Control: without the flag the tag stays.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["containerDefinitions"][0]["image"], image.as_str());
    // With a template file the tag is resolved on its own.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.json"),
        r#"{"family":"f","containerDefinitions":[{"name":"app","memory":32}]}"#,
    )
    .unwrap();
    let busybox = format!("{}/busybox:latest", registry.addr);
    let pinned = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["deploy", "render", "--template", "t.json", "--image", &busybox, "--pin-digest"])
        .current_dir(dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert_eq!(pinned.status.code(), Some(0), "{}", String::from_utf8_lossy(&pinned.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&pinned.stdout).unwrap();
    let want = format!("{}/busybox@{}", registry.addr, digest_of("busybox"));
    assert_eq!(doc["containerDefinitions"][0]["image"], want.as_str());

    // The same image, a label it does not have: exit 3 listing the labels it has.
    let out = render(&image, "ECS_TASK_TEMPLATE");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: image {image} has no label 'ECS_TASK_TEMPLATE' (labels: com.example.ecs.task-definition); build \
             with --build-arg ECS_TASK_TEMPLATE=\"$(cat ecs_task_template.json)\" and LABEL \
             ECS_TASK_TEMPLATE=$ECS_TASK_TEMPLATE, or pass --template\n"
        )
    );
    let out = render(&format!("{}/busybox:latest", registry.addr), "ECS_TASK_TEMPLATE");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no label 'ECS_TASK_TEMPLATE' (labels: ecsd.test.image)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn the_label_is_read_with_the_registry_credentials_a_pull_would_use() {
    const LABEL: &str = "com.example.ecs.task-definition";
    let family = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["family"].as_str().unwrap_or_default().to_owned()
    };
    let refused = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.starts_with("error: cannot read the template label of "), "{stderr}");
    };
    // Basic auth (htpasswd): ECS_ENGINE_AUTH_DATA, as for a pull.
    let basic = LabRegistry::start("basic");
    let image = format!("{}/labelled:latest", basic.addr);
    let login =
        |password: &str| format!(r#"{{"{}":{{"username":"ecsuser","password":"{password}"}}}}"#, basic.addr);
    refused(&render_with(&image, LABEL, &[]));
    let wrong = login("wrong");
    refused(&render_with(
        &image,
        LABEL,
        &[("ECS_ENGINE_AUTH_TYPE", "docker"), ("ECS_ENGINE_AUTH_DATA", &wrong)],
    ));
    let right = login("s3cret!");
    let out =
        render_with(&image, LABEL, &[("ECS_ENGINE_AUTH_TYPE", "docker"), ("ECS_ENGINE_AUTH_DATA", &right)]);
    assert_eq!(family(&out), "from-label");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"), "a password was printed");
    // The same from the docker config (`docker login`'s file).
    let docker = tempfile::tempdir().unwrap();
    let auth = run("sh", &["-c", "printf %s 'ecsuser:s3cret!' | base64 -w0"]);
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, basic.addr),
    )
    .unwrap();
    let out = render_with(&image, LABEL, &[("DOCKER_CONFIG", docker.path().to_str().unwrap())]);
    assert_eq!(family(&out), "from-label");

    // ECR: moto's GetAuthorizationToken gives AWS:123456789012-auth-token, which this
    // registry takes; it is ECR because ECSD_ECR_REGISTRIES names it.
    let moto = Moto::start();
    let ecr = LabRegistry::start_with(
        "basic",
        &[("ECSD_LAB_USER", "AWS"), ("ECSD_LAB_PASSWORD", "123456789012-auth-token")],
    );
    let image = format!("{}/labelled:latest", ecr.addr);
    refused(&render_with(&image, LABEL, &[("AWS_ENDPOINT_URL_ECR", &moto.url)]));
    let out = render_with(
        &image,
        LABEL,
        &[("AWS_ENDPOINT_URL_ECR", &moto.url), ("ECSD_ECR_REGISTRIES", &ecr.addr)],
    );
    assert_eq!(family(&out), "from-label");
    // An ECR login that fails is its own error (exit 3), naming the registry.
    let out = render_with(
        &image,
        LABEL,
        &[("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:9"), ("ECSD_ECR_REGISTRIES", &ecr.addr)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.starts_with("error: cannot get credentials for the registry of "), "{stderr}");
}

/// What the overlay gives the label's container `app`: a command that prints the two
/// variables and idles, a variable, and a secret named by name only.
const STAGING: &str = r#"{"containerDefinitions":[{"name":"app",
  "command":["sh","-c","echo ROOT_URL=$ROOT_URL MONGO_URL=$MONGO_URL; trap 'exit 0' TERM; sleep 1000 & wait"],
  "environment":[{"name":"ROOT_URL","value":"https://staging.example.com"}],
  "secrets":[{"name":"MONGO_URL"}]}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn deploy_rolls_a_service_to_the_labelled_image_with_overlay_and_secret() {
    let _g = CONTAINERD.read().await;
    let registry = LabRegistry::start("none");
    let moto = Moto::start();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    moto.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "ecsTaskExecutionRole",
        "--assume-role-policy-document",
        trust,
    ])
    .await;
    moto.aws(&[
        "secretsmanager",
        "create-secret",
        "--name",
        "staging/MONGO_URL",
        "--secret-string",
        "mongodb://db:s3cr3t@m",
    ])
    .await;
    let mut env: Vec<(&str, String)> = moto.env();
    env.extend([
        ("AWS_ENDPOINT_URL_IAM", moto.url.clone()),
        ("ECSD_SERVICE_STABILIZATION", "1s".into()),
        ("ECS_IMAGE_PULL_BEHAVIOR", "default".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = Ecsd::start(&env).await;
    let url = format!("http://{}", e.daemon.as_ref().unwrap().addr());

    // The service runs revision 1 of the label's family: an idle busybox.
    e.register("from-label", vec![sh("app", IDLE).build()]).await;
    e.client
        .create_service()
        .service_name("web")
        .task_definition("from-label")
        .desired_count(1)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .deployment_circuit_breaker(
                    DeploymentCircuitBreaker::builder().enable(true).rollback(true).build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("staging.json"), STAGING).unwrap();
    let image = format!("{}/labelled:latest", registry.addr);
    let deploy = || {
        let mut cmd = ecsd_deploy(dir.path(), &moto);
        cmd.args(["--endpoint-url", &url, "--service", "web", "--image", &image])
            .args(["--template-label", "com.example.ecs.task-definition", "--env", "staging.json"])
            .args([
                "--execution-role",
                "ecsTaskExecutionRole",
                "--secret-prefix",
                "staging/",
                "--timeout",
                "3m",
            ]);
        cmd
    };
    let out = deploy().output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("registered from-label:2\n"), "{stderr}");
    assert!(stderr.contains("deployed from-label:2 to default/web in "), "{stderr}");

    // The running task is of revision 2 and its container saw the overlay's value and the secret's.
    let live = e
        .client
        .list_tasks()
        .service_name("web")
        .desired_status(DesiredStatus::Running)
        .send()
        .await
        .unwrap();
    assert_eq!(live.task_arns().len(), 1, "{live:?}");
    let t = e.describe(&live.task_arns()[0]).await;
    assert!(t.task_definition_arn().unwrap().ends_with("task-definition/from-label:2"), "{t:?}");
    assert_eq!(t.containers()[0].image(), Some(image.as_str()));
    let arn = arn_of(&t);
    e.wait_log(&arn, "app", "MONGO_URL=").await;
    assert_eq!(e.logs(&arn, "app"), "ROOT_URL=https://staging.example.com MONGO_URL=mongodb://db:s3cr3t@m\n");

    // The same inputs again: nothing to deploy, nothing registered.
    let out = deploy().output().await.unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()),
        (Some(0), "task definition unchanged (matches from-label:2); nothing to deploy\n".to_owned())
    );
    let revisions = e.client.list_task_definitions().family_prefix("from-label").send().await.unwrap();
    assert_eq!(revisions.task_definition_arns().len(), 2);

    // A revision whose container exits: the circuit breaker rolls it back, exit 5 naming
    // the revision the service still runs.
    let out = deploy()
        .arg("--set")
        .arg(r#"/containerDefinitions/0/command=["sh","-c","exit 3"]"#)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("registered from-label:3\n"), "{stderr}");
    assert!(stderr.contains("app: exit 3"), "stopped tasks with their exit codes: {stderr}");
    let last = stderr.lines().rfind(|l| l.starts_with("error: ")).unwrap_or_default();
    assert!(last.ends_with("; service runs from-label:2"), "{stderr}");

    e.client.delete_service().service("web").force(true).send().await.unwrap();
    eventually(WAIT * 2, "the service to be INACTIVE", || async {
        let out = e.client.describe_services().services("web").send().await.unwrap();
        (out.services()[0].status() == Some("INACTIVE")).then_some(())
    })
    .await;
    e.finish().await;
}
