//! `ecsd deploy` (the binary) against an in-process ecsd on the in-memory runtime, with
//! moto_server as IAM and Secrets Manager: render and verify resolve names to the ARNs moto
//! holds and write nothing; apply registers, rolls the service and waits on its deployment;
//! an unchanged definition is not registered again; a deployment the circuit breaker rolls
//! back exits 5 naming the revision still running; each input error has its exit code.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerDefinition, DeploymentCircuitBreaker, DeploymentConfiguration};

use crate::common::Ecsd;
use crate::support::Moto;

const TEMPLATE: &str = r#"{"family":"web","containerDefinitions":[{"name":"app","image":"placeholder","memory":32,
  "command":["sh","-c","sleep 3600"],"portMappings":[{"containerPort":3000}],
  "environment":[{"name":"PORT","value":"3000"},{"name":"NODE_ENV","value":"production"}],
  "secrets":[{"name":"MONGO_URL"},{"name":"MAIL_URL"}]}]}"#;
const STAGING: &str = r#"{"containerDefinitions":[{"environment":[{"name":"ROOT_URL","value":"https://staging.example.com"}]}]}"#;

struct Lab {
    ecsd: Ecsd,
    moto: Moto,
    dir: tempfile::TempDir,
    role_arn: String,
    secret_arns: Vec<String>,
}

async fn lab() -> Lab {
    let moto = Moto::start();
    // The daemon fetches the tasks' secrets from moto as the execution role.
    let env: Vec<(&str, String)> =
        moto.env().into_iter().chain([("AWS_ENDPOINT_URL_IAM", moto.url.clone())]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ecsd = Ecsd::start_with(&env).await;
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let role = moto
        .aws(&[
            "iam",
            "create-role",
            "--role-name",
            "ecsTaskExecutionRole",
            "--path",
            "/service-role/",
            "--assume-role-policy-document",
            trust,
        ])
        .await;
    let role_arn = role["Role"]["Arn"].as_str().unwrap().to_owned();
    assert!(role_arn.ends_with(":role/service-role/ecsTaskExecutionRole"), "{role_arn}");
    let mut secret_arns = Vec::new();
    // MAIL_URL_OLD exists so that a prefix match would find the wrong secret.
    for name in ["MAIL_URL_OLD", "staging/MONGO_URL", "staging/MAIL_URL"] {
        let out = moto
            .aws(&["secretsmanager", "create-secret", "--name", name, "--secret-string", "s3cr3t-value"])
            .await;
        secret_arns.push(out["ARN"].as_str().unwrap().to_owned());
    }
    secret_arns.remove(0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("template.json"), TEMPLATE).unwrap();
    std::fs::write(dir.path().join("staging.json"), STAGING).unwrap();
    Lab { ecsd, moto, dir, role_arn, secret_arns }
}

impl Lab {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let defaults = [
            ("--image", "busybox"),
            ("--execution-role", "ecsTaskExecutionRole"),
            ("--secret-prefix", "staging/"),
        ];
        let mut cmd = crate::support::ecsd_deploy(self.dir.path(), &self.moto);
        cmd.args(args)
            .args(["--endpoint-url", &self.ecsd.url, "--template", "template.json", "--env", "staging.json"])
            .args(defaults.into_iter().filter(|(flag, _)| !args.contains(flag)).flat_map(|(f, v)| [f, v]));
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// Runs while moving the daemon's clock, so the scheduler's deployments progress. The
    /// clock moves only once the command has said something on stderr (it has read the
    /// service by then): moved earlier, a deployment could end before `wait` looks at it.
    async fn run_advancing(&self, args: &[&str]) -> Output {
        self.advancing(self.command(args)).await
    }

    /// `ecsd deploy` with only these arguments and variables (none of [`Lab::command`]'s).
    fn bare(&self, args: &[&str], vars: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = crate::support::ecsd_deploy(self.dir.path(), &self.moto);
        cmd.args(args).envs(vars.iter().copied());
        cmd
    }

    /// Runs `cmd`, moving the daemon's clock once it has said something (so that `wait`
    /// finds the deployment still in flight however long the process took to start).
    async fn advancing(&self, mut cmd: tokio::process::Command) -> Output {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut child =
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).await.unwrap();
            out
        });
        let spoke = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stderr = {
            let spoke = spoke.clone();
            let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
            tokio::spawn(async move {
                let mut text = String::new();
                while let Some(line) = lines.next_line().await.unwrap() {
                    text.push_str(&line);
                    text.push('\n');
                    spoke.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                text
            })
        };
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if spoke.load(std::sync::atomic::Ordering::SeqCst) {
                        self.ecsd.clock.advance(Duration::from_secs(5));
                    }
                }
            }
        };
        Output { status, stdout: stdout.await.unwrap(), stderr: stderr.await.unwrap().into_bytes() }
    }

    /// The service's task definition (`web:N`), desired and running counts.
    async fn service(&self) -> (String, i32, i32) {
        let out = self.ecsd.client.describe_services().services("web").send().await.unwrap();
        let s = &out.services()[0];
        let td = s.task_definition().unwrap().rsplit('/').next().unwrap().to_owned();
        (td, s.desired_count(), s.running_count())
    }

    async fn revisions(&self) -> Vec<String> {
        let out = self.ecsd.client.list_task_definitions().family_prefix("web").send().await.unwrap();
        out.task_definition_arns().to_vec()
    }

    async fn create_service(&self, image: &str) {
        self.create_service_with(image, true).await;
    }

    /// A service whose deployments fail with a circuit breaker that rolls back, or (without
    /// `breaker`) stay IN_PROGRESS for as long as their tasks keep failing.
    async fn create_service_with(&self, image: &str, breaker: bool) {
        let td = self
            .ecsd
            .client
            .register_task_definition()
            .family("web")
            .container_definitions(ContainerDefinition::builder().name("app").image(image).memory(32).build())
            .send()
            .await
            .unwrap();
        let arn = td.task_definition().unwrap().task_definition_arn().unwrap().to_owned();
        self.ecsd
            .client
            .create_service()
            .service_name("web")
            .task_definition(arn)
            .desired_count(1)
            .deployment_configuration(
                DeploymentConfiguration::builder()
                    .deployment_circuit_breaker(
                        DeploymentCircuitBreaker::builder().enable(breaker).rollback(breaker).build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
}

/// The operations the in-process daemon served, from its `api{op=…}` request spans: a
/// tracing layer on the test's thread, where a current-thread test runs the daemon too.
#[derive(Debug, Clone, Default)]
struct Served(Arc<Mutex<Vec<String>>>);

impl Served {
    /// Records from now until the guard is dropped.
    fn record() -> (Served, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        // With a single scoped dispatcher, tracing decides a callsite's interest by the
        // dispatcher of the thread that reaches it first: another test's thread, which has
        // none, would switch the `api` span off for good. A second, silent dispatcher kept
        // alive makes it ask every dispatcher.
        static SILENT: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SILENT.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let served = Served::default();
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(served.clone()));
        (served, guard)
    }

    /// The operations served since the last call, in order.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Served {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Op(Option<String>);
        impl tracing::field::Visit for Op {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "op" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if attrs.metadata().name() != "api" || !attrs.metadata().target().starts_with("ecsd") {
            return;
        }
        let mut op = Op(None);
        attrs.record(&mut op);
        if let Some(op) = op.0 {
            self.0.lock().unwrap().push(op);
        }
    }
}

/// Whether an operation only reads.
fn reads_only(op: &str) -> bool {
    op.starts_with("Describe") || op.starts_with("List")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[tokio::test]
async fn render_resolves_the_role_and_exact_secret_names_and_writes_nothing() {
    let lab = lab().await;
    let out = lab.run(&["render"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["executionRoleArn"], lab.role_arn.as_str());
    let c = &doc["containerDefinitions"][0];
    assert_eq!(c["image"], "busybox");
    assert_eq!(c["secrets"][0], serde_json::json!({"name": "MONGO_URL", "valueFrom": lab.secret_arns[0]}));
    assert_eq!(c["secrets"][1], serde_json::json!({"name": "MAIL_URL", "valueFrom": lab.secret_arns[1]}));
    // Strategic merge: the staging entry is added, PORT kept.
    let names: Vec<&str> =
        c["environment"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["PORT", "NODE_ENV", "ROOT_URL"]);
    assert!(!text(&out.stdout).contains("s3cr3t-value"), "a secret value was printed");

    let out = lab.run(&["verify"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!("executionRoleArn <- iam:GetRole ecsTaskExecutionRole: {}", lab.role_arn)),
        "{report}"
    );
    assert!(report.ends_with("verify OK: web renders and resolves; nothing was written\n"), "{report}");
    assert!(lab.revisions().await.is_empty(), "render and verify registered a revision");
}

#[tokio::test]
async fn unresolvable_names_and_bad_inputs_exit_with_their_codes() {
    let lab = lab().await;
    let out = lab.run(&["render", "--secret-prefix", "prod/"]).await;
    assert_eq!(code(&out), 3);
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        "error: containerDefinitions[0] ('app').secrets[0] 'MONGO_URL': no Secrets Manager secret named 'prod/MONGO_URL' \
         in us-east-1 (DescribeSecret: ResourceNotFoundException: Secrets Manager can't find the specified secret.)"
    );
    let out = lab.run(&["render", "--execution-role", "noSuchRole"]).await;
    assert_eq!(code(&out), 3);
    assert!(
        text(&out.stderr).starts_with("error: role 'noSuchRole' not found (iam:GetRole: NoSuchEntity: "),
        "{}",
        text(&out.stderr)
    );
    let out = lab.run(&["render", "--env", "production.json"]).await;
    assert_eq!(code(&out), 2);
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: environment file 'production.json' not found (from --env; looked in {})\n",
            lab.dir.path().join("production.json").display()
        )
    );
    std::fs::write(lab.dir.path().join("bad.json"), "{\n  \"cpu\": \"256\"\n  \"memory\": 1\n}\n").unwrap();
    let out = lab.run(&["render", "--env", "bad.json"]).await;
    assert_eq!(code(&out), 2);
    assert_eq!(text(&out.stderr), "error: bad.json:3:3: expected `,` or `}`\n");
    let out =
        lab.bare(&["render", "--template", "template.json", "--pin-digest"], &[]).output().await.unwrap();
    assert_eq!(
        (code(&out), text(&out.stderr)),
        (2, "error: --pin-digest needs --image (or --registry/--app/--tag): the image to pin\n".to_owned())
    );
    assert!(lab.revisions().await.is_empty());
}

#[tokio::test]
async fn apply_rolls_the_service_then_finds_nothing_to_deploy() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let before = lab.revisions().await;
    assert_eq!(before.len(), 1);

    let out = lab.run(&["--dry-run", "--cluster", "default", "--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("dry run: would register a new revision replacing web:1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab.revisions().await, before, "--dry-run registered a revision");

    let out = lab.run_advancing(&["apply", "--service", "web", "--timeout", "5m"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.contains("registered web:2"), "{stderr}");
    assert!(stderr.contains("deployed web:2 to default/web in "), "{stderr}");
    assert_eq!(stderr.matches("has reached a steady state").count(), 1, "each event once: {stderr}");
    let service =
        lab.ecsd.client.describe_services().services("web").send().await.unwrap().services()[0].clone();
    assert!(service.task_definition().unwrap().ends_with("task-definition/web:2"));

    let out = lab.run(&["--service", "web", "--dry-run"]).await;
    assert_eq!(text(&out.stderr), "task definition unchanged (matches web:2); nothing to deploy\n");
    let out = lab.run(&["--service", "web", "--timeout", "20s"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "task definition unchanged (matches web:2); nothing to deploy\n");
    assert_eq!(lab.revisions().await.len(), 2, "an unchanged definition was registered again");
}

#[tokio::test]
async fn a_deployment_the_circuit_breaker_rolls_back_exits_5_naming_the_revision_running() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    lab.run_advancing(&["--service", "web", "--image", "busybox"]).await;
    // The fake runtime has no image "nope": its tasks fail to start.
    let out = lab.run_advancing(&["--service", "web", "--image", "nope", "--timeout", "10m"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 5, "{stderr}");
    assert!(stderr.contains("registered web:3"), "{stderr}");
    assert!(stderr.contains("task ") && stderr.contains(" stopped: "), "stopped tasks reported: {stderr}");
    let last = stderr.lines().rfind(|l| l.starts_with("error: ")).unwrap_or_default();
    assert!(
        last.ends_with("; service runs web:2") && last.contains("ecs-svc/"),
        "names the deployment and the revision still running: {stderr}"
    );
}

#[tokio::test]
async fn a_definition_ecs_refuses_exits_4_with_its_message_and_keeps_the_rendered_input() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    // merge-patch replaces the template's containers with the overlay's, which has no name.
    let out = lab.run(&["--service", "web", "--merge", "merge-patch"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 4, "{stderr}");
    assert!(
        stderr.starts_with(
            "error: RegisterTaskDefinition rejected the rendered task definition: ClientException: \
             Container.name should not be null or empty."
        ),
        "{stderr}"
    );
    let kept = stderr.lines().find_map(|l| l.strip_prefix("rendered input kept at ")).expect("a kept file");
    let rendered: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(kept).unwrap()).unwrap();
    std::fs::remove_file(kept).unwrap();
    assert_eq!(rendered["containerDefinitions"], serde_json::json!([{"image": "busybox"}]));
    assert_eq!(lab.revisions().await.len(), 1, "nothing registered");
    // apply without --service is a usage error, before any lookup.
    let out = lab.run(&[]).await;
    assert_eq!((code(&out), text(&out.stderr)), (2, "error: apply needs --service\n".to_owned()));
}

#[tokio::test]
async fn diff_shows_what_apply_would_change_and_nothing_after_it() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let out = lab.run(&["diff", "--service", "web"]).await;
    let diff = text(&out.stdout);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(diff.starts_with("--- arn:aws:ecs:"), "{diff}");
    assert!(diff.contains("task-definition/web:1\n+++ rendered (template.json + staging.json)\n"), "{diff}");
    assert!(diff.contains("\n+          \"name\": \"ROOT_URL\",\n"), "{diff}");
    // ECS's defaults (cpu 0, essential true, empty lists) are not differences.
    assert!(!diff.contains("essential") && !diff.contains("\"cpu\""), "{diff}");
    let out = lab.run(&["diff", "--exit-code", "--service", "web"]).await;
    assert_eq!(code(&out), 10, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), diff);

    let out = lab.run_advancing(&["--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = lab.run(&["diff", "--exit-code", "--service", "web"]).await;
    assert_eq!((code(&out), text(&out.stdout)), (0, String::new()), "{}", text(&out.stderr));
    let out = lab
        .run(&["diff", "--exit-code", "--service", "web", "--set", "/containerDefinitions/0/memory=64"])
        .await;
    assert_eq!(code(&out), 10, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("-      \"memory\": 32,\n+      \"memory\": 64,\n"),
        "{}",
        text(&out.stdout)
    );
    let out = lab.run(&["diff"]).await;
    assert_eq!((code(&out), text(&out.stderr)), (2, "error: diff needs --service\n".to_owned()));
    assert_eq!(lab.revisions().await.len(), 2, "diff registered a revision");
}

#[tokio::test]
async fn status_and_wait_follow_a_deployment_started_without_waiting() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let out = lab.run(&["--service", "web", "--no-wait"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("registered web:2\nupdated default/web to web:2 (deployment ecs-svc/"),
        "{stderr}"
    );
    let out = lab.run(&["status", "--service", "web"]).await;
    let status = text(&out.stdout);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        status
            .starts_with("Service: web\nCluster: default\nTaskDefinition: web:2\nStatus: ACTIVE desired:1 "),
        "{status}"
    );
    assert!(status.contains("\nDeployments:\n  PRIMARY web:2 desired:1 "), "{status}");

    let out = lab.run_advancing(&["wait", "--service", "web", "--timeout", "5m"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.starts_with("waiting on deployment ecs-svc/"), "{stderr}");
    assert!(stderr.contains("deployed web:2 to default/web in "), "{stderr}");
    let out = lab.run(&["status", "--service", "web", "--events", "1"]).await;
    let status = text(&out.stdout);
    assert!(
        status.contains("\nDeployments:\n  PRIMARY web:2 desired:1 pending:0 running:1 COMPLETED"),
        "{status}"
    );
    let events = status.split("Events:\n").nth(1).unwrap_or_default();
    assert_eq!(events.lines().count(), 1, "{status}");
    assert!(events.contains("has reached a steady state"), "{status}");
    // Waiting with nothing in flight returns at once.
    let out = lab.run(&["wait", "--service", "web"]).await;
    assert_eq!(
        (code(&out), text(&out.stderr)),
        (0, "no deployment in flight; default/web runs web:2\n".to_owned())
    );
    let out = lab.run(&["status", "--service", "nope"]).await;
    assert_eq!(
        (code(&out), text(&out.stderr)),
        (4, "error: service 'nope' not found in cluster 'default'\n".to_owned())
    );
}

#[tokio::test]
async fn rollback_picks_the_last_successful_revision_not_the_previous_one() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let out = lab.run_advancing(&["--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // web:3 never runs: the circuit breaker puts web:2 back.
    let out = lab.run_advancing(&["--service", "web", "--image", "nope"]).await;
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let out = lab.run_advancing(&["--service", "web", "--set", "/containerDefinitions/0/memory=64"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.contains("deployed web:4"), "{stderr}");

    let out = lab.run_advancing(&["rollback", "--service", "web", "--timeout", "5m"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.starts_with("rolling back default/web from web:4 to web:2\n"), "not web:3: {stderr}");
    assert!(stderr.contains("deployed web:2 to default/web"), "{stderr}");
    // --to names the revision.
    let out = lab.run_advancing(&["rollback", "--service", "web", "--to", "web:1"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.starts_with("rolling back default/web from web:2 to web:1\n"), "{stderr}");
    let service =
        lab.ecsd.client.describe_services().services("web").send().await.unwrap().services()[0].clone();
    assert!(service.task_definition().unwrap().ends_with("task-definition/web:1"));
    let out = lab.run(&["rollback", "--service", "web", "--to", "web:99"]).await;
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    assert_eq!(lab.revisions().await.len(), 4, "rollback registers nothing");
}

#[tokio::test]
async fn rollback_of_a_deployment_in_flight_stops_it_and_ecs_rolls_back() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let out = lab.run_advancing(&["--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = lab.run(&["--service", "web", "--no-wait", "--set", "/containerDefinitions/0/memory=64"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = lab.run_advancing(&["rollback", "--service", "web", "--timeout", "5m"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.starts_with("stopped deployment "), "StopServiceDeployment was used: {stderr}");
    assert!(stderr.contains("deployed web:2 to default/web"), "{stderr}");
    let service =
        lab.ecsd.client.describe_services().services("web").send().await.unwrap().services()[0].clone();
    assert!(service.task_definition().unwrap().ends_with("task-definition/web:2"));
}

#[tokio::test]
async fn render_verify_diff_status_and_dry_run_make_only_describe_and_list_calls() {
    let (served, _guard) = Served::record();
    let lab = lab().await;
    lab.create_service("busybox").await;
    // Positive control: the recorder sees the test's own calls, and apply's writes below.
    assert_eq!(served.take(), ["RegisterTaskDefinition", "CreateService"]);
    for args in [
        &["render"][..],
        &["verify"],
        &["diff", "--service", "web"],
        &["--dry-run", "--service", "web"],
        &["--dry-run", "--force-new-deployment", "--service", "web"],
        &["status", "--service", "web"],
    ] {
        let out = lab.run(args).await;
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out.stderr));
        let ops = served.take();
        assert!(ops.iter().all(|op| reads_only(op)), "{args:?} called {ops:?}");
        if args.contains(&"--service") {
            assert!(ops.contains(&"DescribeServices".to_owned()), "{args:?} called {ops:?}");
        }
    }
    let out = lab.run_advancing(&["--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let ops = served.take();
    let writes: Vec<&String> = ops.iter().filter(|op| !reads_only(op)).collect();
    assert_eq!(writes, ["RegisterTaskDefinition", "UpdateService"], "{ops:?}");
}

#[tokio::test]
async fn rollback_on_failure_after_a_timeout_puts_the_last_good_revision_back_and_exits_5() {
    let lab = lab().await;
    lab.create_service_with("busybox", false).await;
    let out = lab.run_advancing(&["--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // Control: without the flag a deployment whose tasks never start times out (6) and the
    // service stays on it.
    let out = lab.run_advancing(&["--service", "web", "--image", "nope", "--timeout", "3s"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 6, "{stderr}");
    assert!(!stderr.contains("rolling back"), "{stderr}");
    assert_eq!(lab.service().await.0, "web:3");

    let out = lab
        .run_advancing(&["--service", "web", "--image", "nope2", "--timeout", "5s", "--rollback-on-failure"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 5, "{stderr}");
    assert!(stderr.contains("registered web:4"), "{stderr}");
    assert!(stderr.contains("error: timed out after 5s; deployment ecs-svc/"), "{stderr}");
    assert!(stderr.contains("rolling back (--rollback-on-failure)\nstopped deployment "), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: deployment ecs-svc/")
            && last.ends_with(" of web:4 failed; rolled back to web:2"),
        "the last revision that completed, not web:3: {stderr}"
    );
    assert_eq!(lab.service().await, ("web:2".to_owned(), 1, 1));
    assert_eq!(lab.revisions().await.len(), 4, "rollback registers nothing");
}

#[tokio::test]
async fn rollback_on_failure_exits_7_when_the_rollback_does_not_complete() {
    let lab = lab().await;
    // No revision of this service ever completed a deployment: there is nothing to go back to.
    lab.create_service_with("nope", false).await;
    let out = lab
        .run_advancing(&["--service", "web", "--image", "nope", "--timeout", "3s", "--rollback-on-failure"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 7, "{stderr}");
    assert!(stderr.contains("rolling back (--rollback-on-failure)"), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: rollback of default/web did not complete"),
        "{stderr}"
    );
    assert!(stderr.ends_with("; service state unknown\n"), "{stderr}");
}

#[tokio::test]
async fn rollback_on_failure_leaves_a_circuit_breaker_rollback_alone() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let out = lab.run_advancing(&["--service", "web"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = lab.run_advancing(&["--service", "web", "--image", "nope", "--rollback-on-failure"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 5, "{stderr}");
    assert!(!stderr.contains("rolling back (--rollback-on-failure)"), "ECS had rolled back: {stderr}");
    assert!(stderr.trim_end().ends_with("service runs web:2"), "{stderr}");
    assert_eq!(lab.service().await.0, "web:2");
}

#[tokio::test]
async fn wait_until_deployed_asks_ecs_for_the_service_deployment_and_stable_does_not() {
    let (served, _guard) = Served::record();
    let lab = lab().await;
    lab.create_service("busybox").await;
    served.take();
    let out = lab.run_advancing(&["--service", "web"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.lines().last().unwrap_or_default().starts_with("deployed web:2 to default/web in "),
        "{stderr}"
    );
    assert!(!stderr.contains("SUCCESSFUL"), "{stderr}");
    let ops = served.take();
    assert!(
        !ops.contains(&"DescribeServiceDeployments".to_owned()),
        "stable waits by DescribeServices: {ops:?}"
    );

    let out = lab
        .run_advancing(&[
            "--service",
            "web",
            "--wait-until",
            "deployed",
            "--set",
            "/containerDefinitions/0/memory=64",
        ])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("deployed web:3 to default/web in ")
            && last.ends_with("s (service deployment SUCCESSFUL)"),
        "{stderr}"
    );
    let ops = served.take();
    assert!(ops.contains(&"DescribeServiceDeployments".to_owned()), "{ops:?}");

    // A deployment the circuit breaker rolls back is a failure under `deployed` too.
    let out = lab.run_advancing(&["--service", "web", "--wait-until", "deployed", "--image", "nope"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 5, "{stderr}");
    assert!(stderr.trim_end().ends_with("service runs web:3"), "{stderr}");
    let out = lab.run(&["--service", "web", "--wait-until", "soon"]).await;
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
}

#[tokio::test]
async fn desired_count_is_sent_with_the_update_and_alone_when_the_definition_is_unchanged() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let out = lab.run_advancing(&["--service", "web", "--desired-count", "2"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("registered web:2\nupdated default/web to web:2, desired count 2 (deployment "),
        "{stderr}"
    );
    assert_eq!(lab.service().await, ("web:2".to_owned(), 2, 2));

    let out = lab.run(&["--service", "web", "--desired-count", "2"]).await;
    assert_eq!(text(&out.stderr), "task definition unchanged (matches web:2); nothing to deploy\n");
    let out = lab.run(&["--service", "web", "--desired-count", "1", "--dry-run"]).await;
    assert_eq!(
        (code(&out), text(&out.stderr)),
        (0, "dry run: would keep web:2 and set the desired count to 1; nothing was written\n".to_owned())
    );
    assert_eq!(lab.service().await.1, 2, "--dry-run changed the count");

    let out = lab.run_advancing(&["--service", "web", "--desired-count", "1"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.starts_with("updated default/web to web:2, desired count 1 (deployment "), "{stderr}");
    assert_eq!(lab.service().await, ("web:2".to_owned(), 1, 1));
    assert_eq!(lab.revisions().await.len(), 2, "a count alone registers nothing");
    let out = lab.run(&["--service", "web", "--desired-count", "-1"]).await;
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
}

#[tokio::test]
async fn settings_come_from_flags_then_ecsd_deploy_variables_then_ecsd_deploy_toml() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let file = format!(
        r#"# Everything apply needs, so that the command line names only the environment.
endpoint-url = "{}"
service = "web"
template = "template.json"
image = "busybox"
execution-role = "ecsTaskExecutionRole"
secret-prefix = "prod/"

[env.staging]
secret-prefix = "staging/"
timeout = "5m"
"#,
        lab.ecsd.url
    );
    std::fs::write(lab.dir.path().join("ecsd-deploy.toml"), &file).unwrap();
    // --environment staging: the [env.staging] table and the overlay staging.json.
    let out = lab.bare(&["render", "--environment", "staging"], &[]).output().await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["executionRoleArn"], lab.role_arn.as_str());
    let c = &doc["containerDefinitions"][0];
    assert_eq!(c["secrets"][0]["valueFrom"], lab.secret_arns[0].as_str());
    assert_eq!(c["environment"][2]["name"], "ROOT_URL", "staging.json was merged: {c}");
    // Without it, the file's top level: no secret prod/MONGO_URL.
    let prod = "no Secrets Manager secret named 'prod/MONGO_URL'";
    let out = lab.bare(&["render"], &[]).output().await.unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(prod), "{}", text(&out.stderr));
    // A variable beats the file's table; a flag beats the variable.
    let variable = [("ECSD_DEPLOY_SECRET_PREFIX", "prod/")];
    let out = lab.bare(&["render", "--environment", "staging"], &variable).output().await.unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(prod), "{}", text(&out.stderr));
    let out = lab
        .bare(&["render", "--environment", "staging", "--secret-prefix", "staging/"], &variable)
        .output()
        .await
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let out = lab.bare(&["render"], &[("ECSD_DEPLOY_ENVIRONMENT", "staging")]).output().await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    // apply with nothing but the environment on the command line.
    let out = lab.advancing(lab.bare(&["--environment", "staging"], &[])).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.contains("deployed web:2 to default/web"), "{stderr}");

    // A key the file should not have stops the run before any call.
    std::fs::write(
        lab.dir.path().join("ecsd-deploy.toml"),
        file.replace("[env.staging]\n", "[env.staging]\nclustr = \"x\"\n"),
    )
    .unwrap();
    let out = lab.bare(&["--environment", "staging"], &[]).output().await.unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("error: ecsd-deploy.toml: unknown key 'clustr' in [env.staging] "),
        "{}",
        text(&out.stderr)
    );
    let out =
        lab.bare(&["--environment", "qa"], &[("ECSD_DEPLOY_CONFIG", "none.toml")]).output().await.unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("error: config file 'none.toml' not found (from ECSD_DEPLOY_CONFIG; "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab.revisions().await.len(), 2);
}

#[tokio::test]
async fn sigint_and_sigterm_stop_the_wait_and_leave_the_deployment_going() {
    use tokio::io::AsyncBufReadExt;
    let lab = lab().await;
    lab.create_service_with("busybox", false).await;
    for (image, signal, expected, td) in [("nope", "-INT", 130, "web:2"), ("nope2", "-TERM", 143, "web:3")] {
        // The clock does not move and the image does not exist: the wait goes on until the signal.
        let mut child = lab
            .command(&["--service", "web", "--image", image])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut stderr = String::new();
        // The first deployment lines come from inside the wait, once its signal watches are set.
        while let Some(line) = lines.next_line().await.unwrap() {
            stderr.push_str(&line);
            stderr.push('\n');
            if line.contains(" PRIMARY ") {
                break;
            }
        }
        assert!(stderr.contains(&format!("updated default/web to {td}")), "{stderr}");
        let pid = child.id().unwrap().to_string();
        let kill = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(kill.success());
        while let Some(line) = lines.next_line().await.unwrap() {
            stderr.push_str(&line);
            stderr.push('\n');
        }
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(expected), "{signal}: {stderr}");
        let name = if expected == 130 { "SIGINT" } else { "SIGTERM" };
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("error: interrupted ({name}); deployment ecs-svc/"))
                && last.ends_with(" continues in ECS"),
            "{stderr}"
        );
        // The deployment was not stopped: it is still the service's, in progress.
        let out = lab.ecsd.client.describe_services().services("web").send().await.unwrap();
        let s = &out.services()[0];
        assert!(s.task_definition().unwrap().ends_with(td), "{s:?}");
        let primary = s.deployments().iter().find(|d| d.status() == Some("PRIMARY")).unwrap();
        assert_eq!(primary.rollout_state().map(|r| r.as_str()), Some("IN_PROGRESS"), "{s:?}");
    }
}

#[tokio::test]
async fn output_json_writes_one_object_per_line_and_ends_with_the_result() {
    let lab = lab().await;
    lab.create_service("busybox").await;
    let objects = |out: &Output| -> Vec<serde_json::Value> {
        text(&out.stderr)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l}: {e}")))
            .collect()
    };
    let out = lab.run_advancing(&["--service", "web", "--output", "json"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let lines = objects(&out);
    for o in &lines {
        assert!(o["time"].is_string() && o["level"].is_string() && o["msg"].is_string(), "{o}");
        assert_eq!(
            (&o["cluster"], &o["service"]),
            (&serde_json::json!("default"), &serde_json::json!("web")),
            "{o}"
        );
    }
    let events: Vec<&str> = lines.iter().map(|o| o["event"].as_str().unwrap()).collect();
    for event in ["registered", "updated", "deployment", "event", "deployed"] {
        assert!(events.contains(&event), "{event} missing from {events:?}");
    }
    assert!(
        lines.iter().any(|o| o["event"] == "deployment"
            && o["status"] == "PRIMARY"
            && o["taskDefinition"] == "web:2"
            && o["rolloutState"] == "COMPLETED"),
        "{lines:?}"
    );
    let result = lines.last().unwrap();
    assert_eq!(
        (&result["event"], &result["exit"], &result["outcome"], &result["taskDefinition"]),
        (
            &serde_json::json!("result"),
            &serde_json::json!(0),
            &serde_json::json!("deployed"),
            &serde_json::json!("web:2")
        ),
        "{result}"
    );

    let out = lab.run_advancing(&["--service", "web", "--output", "json", "--image", "nope"]).await;
    assert_eq!(code(&out), 5, "{}", text(&out.stderr));
    let lines = objects(&out);
    assert!(
        lines.iter().any(|o| o["event"] == "task-stopped" && o["stoppedReason"].is_string()),
        "{lines:?}"
    );
    let result = lines.last().unwrap();
    assert_eq!(
        (&result["exit"], &result["outcome"], &result["running"]),
        (&serde_json::json!(5), &serde_json::json!("failed"), &serde_json::json!("web:2")),
        "{result}"
    );
    assert_eq!(result["level"], "error");

    // A failure before any deployment: the result object carries the error, and no plain line.
    let out = lab.run(&["--service", "web", "--output", "json", "--env", "missing.json"]).await;
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    let lines = objects(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["exit"], 2);
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("environment file 'missing.json' not found (from --env; "),
        "{}",
        lines[0]
    );
}

/// An ECS endpoint without the service-deployment API, as an older one: `upstream` behind a
/// proxy that answers UnknownOperationException to those operations and forwards the rest.
async fn without_service_deployments(upstream: String) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    const MISSING: [&str; 4] = [
        "ListServiceDeployments",
        "DescribeServiceDeployments",
        "DescribeServiceRevisions",
        "StopServiceDeployment",
    ];
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if MISSING.iter().any(|op| target.ends_with(&format!(".{op}"))) {
                let body = r#"{"__type":"UnknownOperationException","message":"Unknown operation"}"#;
                return (StatusCode::BAD_REQUEST, [("content-type", "application/x-amz-json-1.1")], body)
                    .into_response();
            }
            let mut request = client.post(&upstream).body(body);
            for (name, value) in &headers {
                if name != "content-length" {
                    request = request.header(name, value);
                }
            }
            let response = request.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let content_type = response.headers().get("content-type").cloned();
            let mut out = (status, response.bytes().await.unwrap()).into_response();
            if let Some(ct) = content_type {
                out.headers_mut().insert("content-type", ct);
            }
            out
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn without_the_service_deployment_api_wait_and_rollback_go_by_describe_services() {
    let (served, _guard) = Served::record();
    let lab = lab().await;
    lab.create_service("busybox").await;
    let old = without_service_deployments(lab.ecsd.url.clone()).await;
    let deploy = |args: &[&str]| {
        let defaults = [
            ("--endpoint-url", old.as_str()),
            ("--template", "template.json"),
            ("--env", "staging.json"),
            ("--image", "busybox"),
            ("--execution-role", "ecsTaskExecutionRole"),
            ("--secret-prefix", "staging/"),
            ("--service", "web"),
            ("--timeout", "5m"),
        ];
        let mut all = args.to_vec();
        all.extend(defaults.iter().filter(|(flag, _)| !args.contains(flag)).flat_map(|(f, v)| [*f, *v]));
        lab.advancing(lab.bare(&all, &[]))
    };
    let out = deploy(&[]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    // The proxy refuses the API (the daemon never sees those calls; straight to it, the same
    // wait asks DescribeServiceDeployments: wait_until_deployed_asks_ecs_for_…).
    let out = deploy(&["--wait-until", "deployed", "--set", "/containerDefinitions/0/memory=64"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.trim_end().ends_with("s (rollout COMPLETED)"), "the rollout state decided: {stderr}");
    let ops = served.take();
    assert!(ops.iter().all(|op| !op.contains("ServiceDeployment")), "{ops:?}");
    assert!(ops.contains(&"UpdateService".to_owned()), "{ops:?}");

    let out = deploy(&["--image", "nope"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 5, "{stderr}");
    assert!(stderr.trim_end().ends_with("service runs web:3"), "{stderr}");
    // No SUCCESSFUL deployments to look at: the previous ACTIVE revision of the family.
    let out = deploy(&["rollback"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(stderr.starts_with("rolling back default/web from web:3 to web:2\n"), "{stderr}");
    assert!(stderr.contains("deployed web:2 to default/web"), "{stderr}");
    let out = deploy(&["wait"]).await;
    assert_eq!(
        (code(&out), text(&out.stderr)),
        (0, "no deployment in flight; default/web runs web:2\n".to_owned())
    );
    let ops = served.take();
    assert!(
        ops.iter().all(|op| !op.contains("ServiceDeployment") && !op.contains("ServiceRevision")),
        "{ops:?}"
    );
    assert!(ops.contains(&"ListTaskDefinitions".to_owned()), "{ops:?}");
}

#[tokio::test]
async fn secrets_lookup_list_matches_names_exactly_not_by_prefix() {
    let lab = lab().await;
    let out = lab.run(&["render", "--secrets-lookup", "list"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &doc["containerDefinitions"][0];
    assert_eq!(c["secrets"][0]["valueFrom"], lab.secret_arns[0].as_str());
    assert_eq!(c["secrets"][1]["valueFrom"], lab.secret_arns[1].as_str());
    let out = lab.run(&["verify", "--secrets-lookup", "list"]).await;
    assert!(
        text(&out.stdout).contains("<- secretsmanager:ListSecrets staging/MAIL_URL: "),
        "{}",
        text(&out.stdout)
    );

    // Without a prefix, MONGO_URL exists, and MAIL_URL does not: MAIL_URL_OLD, which a prefix
    // or substring match would take, is not it.
    lab.moto.aws(&["secretsmanager", "create-secret", "--name", "MONGO_URL", "--secret-string", "x"]).await;
    let out = lab.run(&["render", "--secrets-lookup", "list", "--secret-prefix", ""]).await;
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "error: containerDefinitions[0] ('app').secrets[1] 'MAIL_URL': no Secrets Manager secret named 'MAIL_URL' in \
         us-east-1 (ListSecrets: no secret of exactly that name; longer names that start with it: MAIL_URL_OLD)\n"
    );
    // Control: DescribeSecret finds MONGO_URL the same way and fails on MAIL_URL too.
    let out = lab.run(&["render", "--secret-prefix", ""]).await;
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("secrets[1] 'MAIL_URL': no Secrets Manager secret named 'MAIL_URL'"),
        "{}",
        text(&out.stderr)
    );
}
