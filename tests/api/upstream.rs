//! An upstream ECS at `ECS_ENDPOINT_URL`, as local-ecs-api users have one: task definitions
//! registered only there run here, forwarded calls reach it signed with ecsd's own keys.
//! moto_server (the `.venv` of hack/setup) is the upstream, behind a small recording proxy
//! that counts the calls it receives.

use std::sync::{Arc, Mutex};

use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecs::types::ContainerDefinition;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::common::{Ecsd, err, eventually};
use crate::support::Moto;

/// What the proxy saw: each call's `X-Amz-Target` operation and `Authorization` header.
#[derive(Debug, Default)]
struct Seen {
    calls: Vec<(String, String)>,
}

impl Seen {
    fn count(&self, op: &str) -> usize {
        self.calls.iter().filter(|(o, _)| o == op).count()
    }
}

struct Proxy {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

/// A proxy on 127.0.0.1 that records every call and passes it on to `target` unchanged.
async fn recording_proxy(target: &str) -> Proxy {
    #[derive(Clone)]
    struct S {
        target: String,
        seen: Arc<Mutex<Seen>>,
        http: reqwest::Client,
    }
    async fn pass(State(s): State<S>, headers: HeaderMap, body: Bytes) -> Response {
        let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let op = text("x-amz-target").rsplit('.').next().unwrap_or_default().to_owned();
        s.seen.lock().unwrap().calls.push((op, text("authorization")));
        let mut out = s.http.post(&s.target).body(body);
        for (n, v) in &headers {
            if n != "host" && n != "content-length" {
                out = out.header(n.as_str(), v.as_bytes());
            }
        }
        let answer = out.send().await.unwrap();
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
        let ct = answer.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let mut r = (status, answer.bytes().await.unwrap()).into_response();
        if let Some(ct) = ct {
            r.headers_mut().insert("content-type", ct.parse().unwrap());
        }
        r
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = S { target: target.to_owned(), seen: seen.clone(), http: reqwest::Client::new() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(pass).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Proxy { url, seen }
}

/// An SDK client of moto itself in `region`.
fn moto_client(moto: &Moto, region: &str) -> aws_sdk_ecs::Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(&moto.url)
        .build();
    aws_sdk_ecs::Client::from_conf(conf)
}

fn container(name: &str) -> ContainerDefinition {
    ContainerDefinition::builder().name(name).image("busybox").memory(32).build()
}

async fn register_at(client: &aws_sdk_ecs::Client, family: &str, container_name: &str) -> String {
    let out = client
        .register_task_definition()
        .family(family)
        .container_definitions(container(container_name))
        .send()
        .await
        .unwrap();
    out.task_definition().unwrap().task_definition_arn().unwrap().to_owned()
}

async fn ecsd_with_upstream(upstream: &str) -> Ecsd {
    Ecsd::start_with(&[
        ("ECS_ENDPOINT_URL", upstream),
        ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "AKIDECSD"),
        ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "ecsd-secret"),
    ])
    .await
}

#[tokio::test]
async fn task_definitions_registered_only_upstream_run_here_and_are_fetched_once() {
    let moto = Moto::start();
    let proxy = recording_proxy(&moto.url).await;
    let arn = register_at(&moto_client(&moto, "us-west-2"), "foo", "app").await;
    assert_eq!(arn, "arn:aws:ecs:us-west-2:123456789012:task-definition/foo:1", "moto's default account");
    let e = ecsd_with_upstream(&proxy.url).await;

    // The seed's call: RunTask with the upstream ARN.
    let out = e.client.run_task().task_definition(&arn).send().await.unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    let task_arn = out.tasks()[0].task_arn().unwrap().to_owned();
    assert_eq!(out.tasks()[0].task_definition_arn(), Some(arn.as_str()));
    let running = eventually(10, "the task RUNNING", || async {
        let t = e.client.describe_tasks().tasks(&task_arn).send().await.unwrap().tasks()[0].clone();
        (t.last_status() == Some("RUNNING")).then_some(t)
    })
    .await;
    assert_eq!(running.task_definition_arn(), Some(arn.as_str()), "the ARN the caller gave");
    assert_eq!(running.containers()[0].name(), Some("app"));
    assert_eq!(running.group(), Some("family:foo"));
    {
        let seen = proxy.seen.lock().unwrap();
        assert_eq!(seen.count("DescribeTaskDefinition"), 1);
        let (_, auth) = &seen.calls[0];
        assert!(auth.contains("Credential=AKIDECSD/") && auth.contains("/us-west-2/ecs/"), "{auth}");
    }

    // A second RunTask, and one after a restart, use the copy ecsd kept.
    e.client.run_task().task_definition(&arn).send().await.unwrap();
    let mut e = e;
    e.restart().await;
    let out = e.client.run_task().task_definition(&arn).send().await.unwrap();
    assert_eq!(out.tasks()[0].task_definition_arn(), Some(arn.as_str()));
    assert_eq!(proxy.seen.lock().unwrap().count("DescribeTaskDefinition"), 1, "no second fetch");

    // The local copy is not one of ecsd's own task definitions.
    let families = e.client.list_task_definition_families().send().await.unwrap();
    assert!(families.families().is_empty(), "{:?}", families.families());
}

#[tokio::test]
async fn local_registrations_win_and_unknown_names_fail_as_ecs_fails() {
    let moto = Moto::start();
    let proxy = recording_proxy(&moto.url).await;
    let upstream = moto_client(&moto, "us-east-1");
    register_at(&upstream, "shared", "remote").await;
    register_at(&upstream, "only-upstream", "remote").await;
    let e = ecsd_with_upstream(&proxy.url).await;
    register_at(&e.client, "shared", "local").await;

    let out = e.client.run_task().task_definition("shared:1").send().await.unwrap();
    assert_eq!(out.tasks()[0].containers()[0].name(), Some("local"), "ecsd's own registration wins");
    assert_eq!(proxy.seen.lock().unwrap().count("DescribeTaskDefinition"), 0);

    // Positive control: a name only the upstream has (in ecsd's region) is fetched.
    let out = e.client.run_task().task_definition("only-upstream:1").send().await.unwrap();
    assert_eq!(out.tasks()[0].containers()[0].name(), Some("remote"));
    assert_eq!(
        out.tasks()[0].task_definition_arn(),
        Some("arn:aws:ecs:us-east-1:123456789012:task-definition/only-upstream:1")
    );
    assert_eq!(proxy.seen.lock().unwrap().count("DescribeTaskDefinition"), 1);

    let (code, msg) = err(e.client.run_task().task_definition("nowhere:1").send().await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert!(
        msg.starts_with(&format!("TaskDefinition not found. ECS_ENDPOINT_URL {} answered: ", proxy.url)),
        "{msg}"
    );
    assert!(msg.contains("ClientException"), "what the upstream said: {msg}");
}

#[tokio::test]
async fn without_an_upstream_unknown_task_definitions_are_not_found() {
    let e = Ecsd::start().await;
    let (code, msg) = err(e
        .client
        .run_task()
        .task_definition("arn:aws:ecs:us-west-2:123456789012:task-definition/foo:1")
        .send()
        .await
        .unwrap_err());
    assert_eq!((code.as_str(), msg.as_str()), ("ClientException", "TaskDefinition not found."));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_server_exception_naming_it() {
    // A port that was free a moment ago: nothing listens there. (Forwarding to such an
    // upstream is tests/api/protocol.rs's.)
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let e = ecsd_with_upstream(&dead).await;
    let (code, msg) = err(e.client.run_task().task_definition("foo:1").send().await.unwrap_err());
    assert_eq!(code, "ServerException");
    assert!(
        msg.starts_with(&format!("ecsd could not fetch the task definition foo:1 from ECS_ENDPOINT_URL {dead}: cannot reach ECS at {dead}")),
        "{msg}"
    );
}

/// What the verifying endpoint saw of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    key_id: String,
    region: String,
    service: String,
    host: String,
    target: String,
    verified: bool,
}

/// `YYYYMMDDTHHMMSSZ` (SigV4's `x-amz-date`) as a time.
fn amz_date(s: &str) -> std::time::SystemTime {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
}

/// An ECS endpoint on 127.0.0.1 that checks SigV4 signatures against `secret` (the secret
/// of every key id): it computes what the signature must be with aws-sigv4 from what it
/// received, answers a signed call with `answer` and request id `upstream-request-1`, and
/// anything else with ECS's `InvalidSignatureException`.
async fn verifying_endpoint(
    secret: &'static str,
    answer: &'static str,
) -> (String, Arc<Mutex<Vec<Checked>>>) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    #[derive(Clone)]
    struct S {
        secret: &'static str,
        answer: &'static str,
        seen: Arc<Mutex<Vec<Checked>>>,
    }
    async fn check(State(s): State<S>, headers: HeaderMap, body: Bytes) -> Response {
        let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let auth = text("authorization");
        let field = |name: &str| {
            auth.split(name).nth(1).and_then(|r| r.split([',', ' ']).next()).unwrap_or_default().to_owned()
        };
        let credential = field("Credential=");
        let scope: Vec<&str> = credential.split('/').collect();
        let (key_id, region, service) = match scope.as_slice() {
            [k, _, r, s, _] => (k.to_string(), r.to_string(), s.to_string()),
            _ => Default::default(),
        };
        let signed: Vec<String> = field("SignedHeaders=").split(';').map(str::to_owned).collect();
        let host = text("host");
        let verified = !key_id.is_empty() && {
            let creds = aws_credential_types::Credentials::new(&key_id, s.secret, None, None, "test");
            let identity = creds.into();
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region(&region)
                .name(&service)
                .time(amz_date(&text("x-amz-date")))
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let present: Vec<(String, String)> = signed.iter().map(|n| (n.clone(), text(n))).collect();
            let request = SignableRequest::new(
                "POST",
                format!("http://{host}/"),
                present.iter().filter(|(n, _)| n != "host").map(|(n, v)| (n.as_str(), v.as_str())),
                SignableBody::Bytes(&body),
            )
            .unwrap();
            let (instructions, _) = sign(request, &params).unwrap().into_parts();
            let (expected, _) = instructions.into_parts();
            expected.iter().any(|h| h.name() == "authorization" && h.value() == auth)
        };
        s.seen.lock().unwrap().push(Checked {
            key_id,
            region,
            service,
            host,
            target: text("x-amz-target"),
            verified,
        });
        let mut r = if verified {
            (StatusCode::OK, s.answer).into_response()
        } else {
            let body = r#"{"__type":"InvalidSignatureException","message":"The request signature we calculated does not match the signature you provided."}"#;
            (StatusCode::FORBIDDEN, body).into_response()
        };
        r.headers_mut().insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
        r.headers_mut().insert("x-amzn-requestid", "upstream-request-1".parse().unwrap());
        r
    }
    let seen = Arc::new(Mutex::new(vec![]));
    let state = S { secret, answer, seen: seen.clone() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(check).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

const CAPACITY_PROVIDERS: &str =
    r#"{"capacityProviders":[{"name":"FROM-UPSTREAM","status":"ACTIVE"}],"failures":[]}"#;

#[tokio::test]
async fn forwarded_calls_are_signed_again_with_ecsds_keys_for_the_upstream() {
    use aws_sdk_ecs::operation::RequestId;
    let (url, seen) = verifying_endpoint("ecsd-secret", CAPACITY_PROVIDERS).await;
    let e = Ecsd::start_with(&[
        ("ECS_ENDPOINT_URL", &url),
        ("ECS_ENDPOINT_AWS_REGION", "eu-west-1"),
        ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "AKIDECSD"),
        ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "ecsd-secret"),
    ])
    .await;
    // The caller signs with its own keys (AKIDTEST) for ecsd's host, in us-east-1.
    let out = e.client.describe_capacity_providers().send().await.unwrap();
    assert_eq!(out.capacity_providers()[0].name(), Some("FROM-UPSTREAM"), "the upstream's answer");
    assert_eq!(out.request_id(), Some("upstream-request-1"), "the upstream's request id");
    let host = url.trim_start_matches("http://").to_owned();
    assert_eq!(
        seen.lock().unwrap().clone(),
        [Checked {
            key_id: "AKIDECSD".into(),
            region: "eu-west-1".into(),
            service: "ecs".into(),
            host,
            target: "AmazonEC2ContainerServiceV20141113.DescribeCapacityProviders".into(),
            verified: true,
        }]
    );
}

#[tokio::test]
async fn passthrough_keeps_the_callers_signature_and_upstream_errors_keep_their_shape() {
    let (url, seen) = verifying_endpoint("ecsd-secret", CAPACITY_PROVIDERS).await;
    let e = Ecsd::start_with(&[
        ("ECS_ENDPOINT_URL", &url),
        ("ECSD_FORWARD_SIGNATURE", "passthrough"),
        ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "AKIDECSD"),
        ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "ecsd-secret"),
    ])
    .await;
    let (code, msg) = err(e.client.describe_capacity_providers().send().await.unwrap_err());
    assert_eq!(code, "InvalidSignatureException");
    assert_eq!(msg, "The request signature we calculated does not match the signature you provided.");
    let seen = seen.lock().unwrap().clone();
    assert_eq!((seen[0].key_id.as_str(), seen[0].verified), ("AKIDTEST", false), "the caller's signature");
}

#[tokio::test]
async fn with_an_iam_endpoint_task_roles_must_exist_there() {
    let moto = Moto::start();
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    moto.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "app",
        "--path",
        "/svc/",
        "--assume-role-policy-document",
        policy,
    ])
    .await;
    let e = Ecsd::start_with(&[
        ("IAM_ENDPOINT", &moto.url),
        ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "test"),
        ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "test"),
    ])
    .await;
    for (family, role) in [("known", "app"), ("unknown", "ghost")] {
        e.client
            .register_task_definition()
            .family(family)
            .task_role_arn(role)
            .container_definitions(container("app"))
            .send()
            .await
            .unwrap();
    }
    let status = |family: &'static str| {
        let e = &e;
        async move {
            let out = e.client.run_task().task_definition(family).send().await.unwrap();
            let arn = out.tasks()[0].task_arn().unwrap().to_owned();
            eventually(10, "the task RUNNING or STOPPED", || async {
                let t = e.client.describe_tasks().tasks(&arn).send().await.unwrap().tasks()[0].clone();
                matches!(t.last_status(), Some("RUNNING" | "STOPPED")).then_some(t)
            })
            .await
        }
    };
    let known = status("known").await;
    assert_eq!(known.last_status(), Some("RUNNING"), "{:?}", known.stopped_reason());
    let unknown = status("unknown").await;
    assert_eq!(unknown.last_status(), Some("STOPPED"));
    let reason = unknown.stopped_reason().unwrap_or_default();
    assert!(reason.contains("role ghost cannot be resolved with IAM GetRole: NoSuchEntity"), "{reason}");
}

/// The service's tasks that are RUNNING, as DescribeTasks shows them.
async fn running_tasks(e: &Ecsd, service: &str) -> Vec<aws_sdk_ecs::types::Task> {
    let arns = e.client.list_tasks().service_name(service).send().await.unwrap().task_arns().to_vec();
    if arns.is_empty() {
        return vec![];
    }
    let out = e.client.describe_tasks().set_tasks(Some(arns)).send().await.unwrap();
    out.tasks().iter().filter(|t| t.last_status() == Some("RUNNING")).cloned().collect()
}

#[tokio::test]
async fn services_run_upstream_task_definitions_and_replace_their_tasks() {
    let moto = Moto::start();
    let proxy = recording_proxy(&moto.url).await;
    let arn = register_at(&moto_client(&moto, "us-west-2"), "svc", "app").await;
    let mut e = ecsd_with_upstream(&proxy.url).await;

    let out =
        e.client.create_service().service_name("web").task_definition(&arn).desired_count(2).send().await;
    let service = out.unwrap().service().unwrap().clone();
    assert_eq!(service.task_definition(), Some(arn.as_str()), "the ARN the caller gave");
    let step = std::time::Duration::from_millis(500);
    let first = e
        .advancing(step, 20, "two tasks of the upstream definition RUNNING", || async {
            let tasks = running_tasks(&e, "web").await;
            (tasks.len() == 2).then_some(tasks)
        })
        .await;
    assert!(first.iter().all(|t| t.task_definition_arn() == Some(arn.as_str())), "{first:?}");

    // A replacement is launched by the scheduler from the copy ecsd kept, after a restart too.
    e.restart().await;
    e.fake.exit(first[0].containers()[0].runtime_id().unwrap(), 1).await;
    let replaced = e
        .advancing(step, 20, "the exited task replaced", || async {
            let tasks = running_tasks(&e, "web").await;
            (tasks.len() == 2 && tasks.iter().all(|t| t.task_arn() != first[0].task_arn())).then_some(tasks)
        })
        .await;
    assert!(replaced.iter().all(|t| t.task_definition_arn() == Some(arn.as_str())), "{replaced:?}");
    assert_eq!(proxy.seen.lock().unwrap().count("DescribeTaskDefinition"), 1, "fetched once");

    // UpdateService names one too; one the upstream does not have fails as ECS fails.
    let second = register_at(&moto_client(&moto, "us-west-2"), "svc", "app2").await;
    let out = e.client.update_service().service("web").task_definition(&second).send().await.unwrap();
    assert_eq!(out.service().unwrap().task_definition(), Some(second.as_str()));
    let (code, msg) =
        err(e.client.update_service().service("web").task_definition("nowhere:1").send().await.unwrap_err());
    assert_eq!(code, "ClientException");
    assert!(msg.starts_with("TaskDefinition not found. ECS_ENDPOINT_URL"), "{msg}");
    let rolled = e
        .advancing(step, 30, "the service rolled to the second revision", || async {
            let tasks = running_tasks(&e, "web").await;
            (tasks.len() == 2 && tasks.iter().all(|t| t.task_definition_arn() == Some(second.as_str())))
                .then_some(tasks)
        })
        .await;
    assert_eq!(rolled[0].containers()[0].name(), Some("app2"));
}

#[tokio::test]
async fn an_upstream_definitions_tags_propagate_to_its_tasks() {
    let moto = Moto::start();
    let upstream = moto_client(&moto, "us-east-1");
    let tag = |k: &str, v: &str| aws_sdk_ecs::types::Tag::builder().key(k).value(v).build();
    let out = upstream
        .register_task_definition()
        .family("tagged")
        .container_definitions(container("app"))
        .tags(tag("team", "payments"))
        .send()
        .await
        .unwrap();
    let arn = out.task_definition().unwrap().task_definition_arn().unwrap().to_owned();
    let e = ecsd_with_upstream(&moto.url).await;
    let tags_of = |task: String| {
        let e = &e;
        async move {
            let out = e.client.list_tags_for_resource().resource_arn(task).send().await.unwrap();
            out.tags()
                .iter()
                .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                .collect::<Vec<_>>()
        }
    };
    let run = |propagate: Option<aws_sdk_ecs::types::PropagateTags>| {
        let (e, arn) = (&e, &arn);
        async move {
            let out =
                e.client.run_task().task_definition(arn).set_propagate_tags(propagate).send().await.unwrap();
            out.tasks()[0].task_arn().unwrap().to_owned()
        }
    };
    let propagated = run(Some(aws_sdk_ecs::types::PropagateTags::TaskDefinition)).await;
    assert_eq!(tags_of(propagated).await, [("team".to_owned(), "payments".to_owned())]);
    // Positive control of the negative: without propagateTags the task has none.
    let plain = run(None).await;
    assert_eq!(tags_of(plain).await, []);
}
