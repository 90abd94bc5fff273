//! The AWS JSON 1.1 envelope: targets, bodies, errors, request ids, forwarding.

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::common::{Ecsd, err};

const TARGET: &str = "AmazonEC2ContainerServiceV20141113.";

async fn post(url: &str, target: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, HeaderMap, Value) {
    let mut req =
        reqwest::Client::new().post(url).header("content-type", "application/x-amz-json-1.1").body(body);
    if let Some(t) = target {
        req = req.header("x-amz-target", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn exception(body: &Value) -> (&str, &str) {
    (body["__type"].as_str().unwrap_or_default(), body["message"].as_str().unwrap_or_default())
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_timestamps_are_epoch_seconds() {
    let e = Ecsd::start().await;
    let body =
        json!({"family": "ts", "containerDefinitions": [{"name": "a", "image": "busybox", "memory": 64}]});
    let (status, headers, out) =
        post(&e.url, Some(&format!("{TARGET}RegisterTaskDefinition")), body.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-amz-json-1.1");
    assert_eq!(headers["x-amzn-requestid"].to_str().unwrap().len(), 36);
    let registered_at = out["taskDefinition"]["registeredAt"].as_f64().expect("a JSON number");
    assert!(registered_at > 1.7e9, "{registered_at}");

    let (status, headers, out) = post(&e.url, Some(&format!("{TARGET}DescribeTaskDefinition")), "{}").await;
    assert_eq!(status, 400);
    assert!(headers.contains_key("x-amzn-requestid"));
    assert_eq!(exception(&out).0, "InvalidParameterException");
}

#[tokio::test]
async fn unknown_and_missing_targets_are_unknown_operations() {
    let e = Ecsd::start().await;
    let (status, _, out) = post(&e.url, Some(&format!("{TARGET}LaunchRockets")), "{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        exception(&out),
        (
            "UnknownOperationException",
            "Unknown operation LaunchRockets: the ECS API has no operation of that name"
        )
    );
    let (status, _, out) = post(&e.url, None, "{}").await;
    assert_eq!(status, 400);
    assert_eq!(exception(&out).0, "UnknownOperationException");
    let (_, _, out) = post(&e.url, Some("DynamoDB_20120810.ListTables"), "{}").await;
    assert_eq!(
        exception(&out),
        (
            "UnknownOperationException",
            "Unknown operation DynamoDB_20120810.ListTables: ecsd serves the ECS API, whose targets start with AmazonEC2ContainerServiceV20141113."
        )
    );
}

#[tokio::test]
async fn unimplemented_operations_are_named_without_a_forward_endpoint() {
    let e = Ecsd::start().await;
    let (status, _, out) = post(&e.url, Some(&format!("{TARGET}DescribeCapacityProviders")), "{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        exception(&out),
        (
            "UnknownOperationException",
            "ecsd does not implement the ECS operation DescribeCapacityProviders; set ECS_ENDPOINT_URL to forward operations ecsd does not implement to another ECS endpoint"
        )
    );
}

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_serialization_errors() {
    let e = Ecsd::start().await;
    let (status, _, out) = post(&e.url, Some(&format!("{TARGET}ListClusters")), "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(exception(&out).0, "SerializationException");

    let body = json!({"family": "x", "containerDefinitions": [{"name": "a", "image": "i", "cpu": "lots"}]});
    let (_, _, out) = post(&e.url, Some(&format!("{TARGET}RegisterTaskDefinition")), body.to_string()).await;
    let (kind, msg) = exception(&out);
    assert_eq!(kind, "SerializationException");
    assert!(msg.starts_with("The value at 'containerDefinitions[0].cpu' is not valid: invalid type: string \"lots\", expected i32"), "{msg}");

    // An empty body is an empty input, as AWS clients send it.
    let (status, _, out) = post(&e.url, Some(&format!("{TARGET}ListClusters")), "").await;
    assert_eq!(status, 200, "{out}");
}

#[tokio::test]
async fn model_constraints_are_checked_with_the_field_path() {
    let e = Ecsd::start().await;
    let body = json!({"family": "x", "networkMode": "carrier-pigeon",
        "containerDefinitions": [{"name": "a", "image": "i", "memory": 64,
            "portMappings": [{"containerPort": 80, "protocol": "sctp"}]}]});
    let (_, _, out) = post(&e.url, Some(&format!("{TARGET}RegisterTaskDefinition")), body.to_string()).await;
    assert_eq!(
        exception(&out),
        (
            "InvalidParameterException",
            "2 validation errors detected: Value 'carrier-pigeon' at 'networkMode' failed to satisfy constraint: Member must satisfy enum value set: [bridge, host, awsvpc, none]; Value 'sctp' at 'containerDefinitions[0].portMappings[0].protocol' failed to satisfy constraint: Member must satisfy enum value set: [tcp, udp]"
        )
    );
    let (_, _, out) =
        post(&e.url, Some(&format!("{TARGET}RegisterTaskDefinition")), r#"{"family":"x"}"#).await;
    assert_eq!(
        exception(&out),
        (
            "InvalidParameterException",
            "1 validation error detected: Value null at 'containerDefinitions' failed to satisfy constraint: Member must not be null"
        )
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_clearly() {
    let e = Ecsd::start().await;
    let big = format!(r#"{{"family":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let (status, _, out) = post(&e.url, Some(&format!("{TARGET}RegisterTaskDefinition")), big).await;
    assert_eq!(status, 400);
    assert_eq!(
        exception(&out),
        (
            "ClientException",
            "The request body is too large (2097165 bytes): ecsd accepts at most 1048576 bytes"
        )
    );
}

/// What the stand-in upstream endpoint saw.
#[derive(Default)]
struct Seen {
    target: String,
    authorization: String,
    body: String,
}

#[tokio::test]
async fn operations_ecsd_does_not_implement_are_forwarded_unchanged() {
    use axum::extract::State;
    use axum::http::HeaderMap as Headers;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let upstream = axum::Router::new()
        .fallback(|State(seen): State<Arc<Mutex<Seen>>>, headers: Headers, body: String| async move {
            let mut s = seen.lock().unwrap();
            s.target = headers["x-amz-target"].to_str().unwrap().to_owned();
            s.authorization = headers["authorization"].to_str().unwrap().to_owned();
            s.body = body;
            (
                [("content-type", "application/x-amz-json-1.1"), ("x-amzn-requestid", "upstream-id")],
                r#"{"capacityProviders":[{"name":"FROM_UPSTREAM"}],"failures":[]}"#,
            )
        })
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await });

    // Passthrough: the caller's signature goes on as it is (tests/api/upstream.rs has the
    // default, signed again with ecsd's keys).
    let e =
        Ecsd::start_with(&[("ECS_ENDPOINT_URL", &upstream_url), ("ECSD_FORWARD_SIGNATURE", "passthrough")])
            .await;
    let out =
        e.client.describe_capacity_providers().capacity_providers("FROM_UPSTREAM").send().await.unwrap();
    assert_eq!(out.capacity_providers()[0].name(), Some("FROM_UPSTREAM"));
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.target, format!("{TARGET}DescribeCapacityProviders"));
        assert!(s.authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"), "{}", s.authorization);
        assert_eq!(s.body, r#"{"capacityProviders":["FROM_UPSTREAM"]}"#);
    }
    // Implemented operations stay local.
    let local = e.client.list_clusters().send().await.unwrap();
    assert_eq!(local.cluster_arns().len(), 1);
    assert_eq!(seen.lock().unwrap().target, format!("{TARGET}DescribeCapacityProviders"));
}

#[tokio::test]
async fn an_unreachable_forward_endpoint_is_a_server_error_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = Ecsd::start_with(&[
        ("ECS_ENDPOINT_URL", &dead),
        ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "AKIDECSD"),
        ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "ecsd-secret"),
    ])
    .await;
    let (code, msg) = err(e.client.describe_capacity_providers().send().await.unwrap_err());
    assert_eq!(code, "ServerException");
    assert!(
        msg.starts_with(&format!(
            "ecsd could not forward the request to ECS_ENDPOINT_URL {dead}: cannot reach ECS at {dead}"
        )),
        "{msg}"
    );
}
