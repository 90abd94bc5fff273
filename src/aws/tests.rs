//! The client against local 127.0.0.1 servers that answer what each test scripts, stall,
//! or are not there at all.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "very-secret-session-token";

fn keys() -> Keys {
    Keys::new("AKIAIOSFODNN7EXAMPLE", SECRET, Some(TOKEN))
}

fn client(endpoint: &str, limits: Limits) -> Client {
    let mut settings = Settings::new("eu-west-1");
    for service in Service::ALL {
        settings.endpoints.set(service, endpoint);
    }
    settings.limits = limits;
    Aws::new(settings).client(keys())
}

fn fast() -> Limits {
    Limits { backoff: Duration::from_millis(1), ..Limits::default() }
}

/// What a scripted server saw: each request's head (lowercased header names kept as sent)
/// and body.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<(String, String)>,
}

/// Serves one scripted raw answer per connection, in order (the last one repeats).
async fn scripted(answers: Vec<String>) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answers[n.min(answers.len() - 1)].clone();
            n += 1;
            let request = read_request(&mut stream).await;
            log.lock().unwrap().requests.push(request);
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (endpoint, seen)
}

async fn read_request(stream: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return (head, text[end + 4..].to_owned());
            }
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), String::new())
}

fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET) && !text.contains(TOKEN), "a secret leaked: {text}");
    assert!(!text.contains("Signature="), "a signature leaked: {text}");
}

#[test]
fn endpoints_resolve_configured_else_aws() {
    let endpoints = Endpoints::default().with(Service::Ssm, "http://127.0.0.1:4566/");
    assert_eq!(
        endpoints.resolve(Service::Ssm, "eu-west-1"),
        ("http://127.0.0.1:4566".into(), "eu-west-1".into())
    );
    let aws = |service, region| Endpoints::default().resolve(service, region);
    assert_eq!(
        aws(Service::Sts, "eu-west-1"),
        ("https://sts.eu-west-1.amazonaws.com".into(), "eu-west-1".into())
    );
    assert_eq!(
        aws(Service::SecretsManager, "cn-north-1"),
        ("https://secretsmanager.cn-north-1.amazonaws.com.cn".into(), "cn-north-1".into())
    );
    assert_eq!(
        aws(Service::Ecr, "us-west-2"),
        ("https://api.ecr.us-west-2.amazonaws.com".into(), "us-west-2".into())
    );
    assert_eq!(
        aws(Service::Logs, "us-west-2"),
        ("https://logs.us-west-2.amazonaws.com".into(), "us-west-2".into())
    );
    assert_eq!(aws(Service::Iam, "eu-west-1"), ("https://iam.amazonaws.com".into(), "us-east-1".into()));
    assert_eq!(
        aws(Service::Iam, "cn-northwest-1"),
        ("https://iam.cn-north-1.amazonaws.com.cn".into(), "cn-north-1".into())
    );
}

#[test]
fn query_and_key_encoding() {
    assert_eq!(
        uri_encode("arn:aws:iam::1:role/a b+c=é", false),
        "arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b%2Bc%3D%C3%A9"
    );
    assert_eq!(uri_encode("dir/a b+c.env", true), "dir/a%20b%2Bc.env");
}

#[tokio::test]
async fn a_json_call_is_signed_and_its_answer_read() {
    let (endpoint, seen) = scripted(vec![answer(
        "200 OK",
        "application/x-amz-json-1.1",
        r#"{"ARN":"arn:aws:secretsmanager:eu-west-1:1:secret:db","Name":"db","SecretString":"hunter2"}"#,
    )])
    .await;
    let value = client(&endpoint, fast()).get_secret_value("db", Some("AWSPREVIOUS"), None).await.unwrap();
    assert_eq!(value.secret_string.as_deref(), Some("hunter2"));
    assert!(!format!("{value:?}").contains("hunter2"));

    let seen = seen.lock().unwrap();
    let (head, body) = &seen.requests[0];
    assert!(head.starts_with("POST / HTTP/1.1"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-amz-target: secretsmanager.getsecretvalue"), "{head}");
    assert!(head.contains("content-type: application/x-amz-json-1.1"), "{head}");
    assert!(
        head.contains("authorization: aws4-hmac-sha256 credential=akiaiosfodnn7example/")
            && head.contains("/eu-west-1/secretsmanager/aws4_request, signedheaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, signature="),
        "{head}"
    );
    assert_eq!(body, r#"{"SecretId":"db","VersionStage":"AWSPREVIOUS"}"#);
}

#[tokio::test]
async fn ecr_logins_are_decoded_and_never_shown() {
    // base64("AWS:ecr-password")
    let (endpoint, seen) = scripted(vec![answer(
        "200 OK",
        "application/x-amz-json-1.1",
        r#"{"authorizationData":[{"authorizationToken":"QVdTOmVjci1wYXNzd29yZA==","expiresAt":1700000000.5,
            "proxyEndpoint":"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"}]}"#,
    )])
    .await;
    let login = client(&endpoint, fast()).get_authorization_token(Some("123456789012")).await.unwrap();
    assert_eq!((login.username.as_str(), login.password.as_str()), ("AWS", "ecr-password"));
    assert_eq!(login.expires_at, std::time::UNIX_EPOCH + Duration::from_secs_f64(1700000000.5));
    assert!(!format!("{login:?}").contains("ecr-password"));
    let (head, body) = seen.lock().unwrap().requests[0].clone();
    assert!(
        head.to_ascii_lowercase()
            .contains("x-amz-target: amazonec2containerregistry_v20150921.getauthorizationtoken"),
        "{head}"
    );
    assert!(head.contains("/eu-west-1/ecr/aws4_request"), "{head}");
    assert_eq!(body, r#"{"registryIds":["123456789012"]}"#);
    let (endpoint, _) =
        scripted(vec![answer("200 OK", "application/x-amz-json-1.1", r#"{"authorizationData":[]}"#)]).await;
    assert!(matches!(
        client(&endpoint, fast()).get_authorization_token(None).await,
        Err(AwsError::Malformed { problem: Malformed::Missing("authorizationData"), .. })
    ));
}

#[tokio::test]
async fn a_query_call_posts_a_form_and_reads_xml() {
    let xml = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>assumed-secret</SecretAccessKey>
      <SessionToken>assumed-token</SessionToken>
      <Expiration>2030-05-01T16:00:00.123Z</Expiration>
    </Credentials>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/app/task-1</Arn></AssumedRoleUser>
  </AssumeRoleResult>
</AssumeRoleResponse>"#;
    let (endpoint, seen) = scripted(vec![answer("200 OK", "text/xml", xml)]).await;
    let role = "arn:aws:iam::123456789012:role/app";
    let assumed =
        client(&endpoint, fast()).assume_role(role, "task-1", Duration::from_secs(3600)).await.unwrap();
    assert_eq!(assumed.keys, Keys::new("ASIAEXAMPLE", "assumed-secret", Some("assumed-token")));
    assert_eq!(assumed.expiration, SystemTime::UNIX_EPOCH + Duration::from_millis(1_903_881_600_123));
    assert_eq!(
        assumed.assumed_role_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/app/task-1")
    );

    let seen = seen.lock().unwrap();
    let (head, body) = &seen.requests[0];
    assert!(head.to_ascii_lowercase().contains("content-type: application/x-www-form-urlencoded"), "{head}");
    assert_eq!(
        body,
        "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fapp\
         &RoleSessionName=task-1&DurationSeconds=3600"
    );
}

#[tokio::test]
async fn an_answer_without_credentials_is_malformed() {
    let (endpoint, _) = scripted(vec![answer("200 OK", "text/xml", "<AssumeRoleResponse/>")]).await;
    let err =
        client(&endpoint, fast()).assume_role("arn:r", "s1", Duration::from_secs(900)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AwsError::Malformed { service: Service::Sts, problem: Malformed::Missing("Credentials"), .. }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "unreadable AssumeRole response from STS: no Credentials");
}

#[tokio::test]
async fn service_errors_carry_code_and_message_and_are_not_retried() {
    let body = r#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not allowed</Message></Error></ErrorResponse>"#;
    let (endpoint, seen) = scripted(vec![answer("403 Forbidden", "text/xml", body)]).await;
    let err = client(&endpoint, fast()).get_caller_identity().await.unwrap_err();
    assert!(
        matches!(&err, AwsError::Service { service: Service::Sts, status: 403, code: Some(c), .. } if c == "AccessDenied"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "AccessDenied: not allowed");
    assert_eq!(seen.lock().unwrap().requests.len(), 1);

    let body = r#"{"__type":"com.amazonaws.ssm#ParameterVersionNotFound","message":"no version 9"}"#;
    let (endpoint, _) = scripted(vec![answer("400 Bad Request", "application/x-amz-json-1.1", body)]).await;
    let err = client(&endpoint, fast()).get_parameters(&["/a:9".into()], true).await.unwrap_err();
    assert_eq!(err.to_string(), "ParameterVersionNotFound: no version 9");
    assert_eq!(err.code(), Some("ParameterVersionNotFound"));
}

#[tokio::test]
async fn transient_failures_are_tried_again_up_to_the_limit() {
    let throttled =
        answer("400 Bad Request", "application/x-amz-json-1.1", r#"{"__type":"ThrottlingException"}"#);
    let ok =
        answer("200 OK", "application/x-amz-json-1.1", r#"{"Parameters":[],"InvalidParameters":["/x"]}"#);
    let (endpoint, seen) =
        scripted(vec![answer("503 Service Unavailable", "text/plain", "busy"), throttled, ok]).await;
    let out = client(&endpoint, fast()).get_parameters(&["/x".into()], true).await.unwrap();
    assert_eq!(out.invalid_parameters, ["/x"]);
    assert_eq!(seen.lock().unwrap().requests.len(), 3);

    // Always failing: three attempts, then the last error.
    let (endpoint, seen) = scripted(vec![answer("500 Internal Server Error", "text/plain", "")]).await;
    let err = client(&endpoint, fast()).get_parameters(&["/x".into()], true).await.unwrap_err();
    assert_eq!(err.to_string(), "HTTP 500 Internal Server Error");
    assert_eq!(seen.lock().unwrap().requests.len(), 3);
}

#[tokio::test]
async fn more_than_ten_names_are_asked_for_in_batches() {
    let ok = answer("200 OK", "application/x-amz-json-1.1", r#"{"Parameters":[{"Name":"p","Value":"v"}]}"#);
    let (endpoint, seen) = scripted(vec![ok]).await;
    let names: Vec<String> = (0..23).map(|i| format!("/p{i}")).collect();
    let out = client(&endpoint, fast()).get_parameters(&names, true).await.unwrap();
    assert_eq!(out.parameters.len(), 3);
    let seen = seen.lock().unwrap();
    let bodies: Vec<usize> = seen
        .requests
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["Names"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(bodies, [10, 10, 3]);
    assert!(seen.requests.iter().all(|(_, b)| b.contains(r#""WithDecryption":true"#)));
}

#[tokio::test]
async fn answers_past_the_size_limit_are_refused() {
    let limits = Limits { max_response: 1024, ..fast() };
    let big = "x".repeat(2048);
    // Announced by Content-Length...
    let (endpoint, _) = scripted(vec![answer("200 OK", "application/octet-stream", &big)]).await;
    let err = client(&endpoint, limits).s3_get_object("b", "k").await.unwrap_err();
    assert!(matches!(err, AwsError::TooLarge { service: Service::S3, limit: 1024 }), "{err:?}");
    assert_eq!(err.to_string(), "the S3 response is larger than 1024 bytes");
    // ...or not: chunked, counted while read.
    let chunked = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (endpoint, _) = scripted(vec![chunked]).await;
    let err = client(&endpoint, limits).s3_get_object("b", "k").await.unwrap_err();
    assert!(matches!(err, AwsError::TooLarge { .. }), "{err:?}");
    // Positive control: at the limit is fine.
    let (endpoint, seen) = scripted(vec![answer("200 OK", "application/octet-stream", &big[..1024])]).await;
    assert_eq!(client(&endpoint, limits).s3_get_object("b", "dir/a b.env").await.unwrap().len(), 1024);
    let seen = seen.lock().unwrap();
    let head = seen.requests[0].0.to_ascii_lowercase();
    assert!(head.starts_with("get /b/dir/a%20b.env http/1.1"), "{head}");
    assert!(head.contains("x-amz-content-sha256: unsigned-payload"), "{head}");
}

#[tokio::test]
async fn a_stalled_endpoint_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts, reads, and never answers; keeps the connections open.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = read_request(&mut stream).await;
            held.push(stream);
        }
    });
    let limits = Limits { request_timeout: Duration::from_millis(300), ..fast() };
    let started = Instant::now();
    let err = client(&endpoint, limits).get_secret_value("db", None, None).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, AwsError::Timeout { service: Service::SecretsManager, .. }), "{err:?}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(err.to_string(), format!("no answer from Secrets Manager at {endpoint} within 300 ms"));
}

#[tokio::test]
async fn an_answer_that_stalls_midway_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = read_request(&mut stream).await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nFROM_S3=").await;
            held.push(stream);
        }
    });
    let limits = Limits { request_timeout: Duration::from_millis(300), ..fast() };
    let err = client(&endpoint, limits).s3_get_object("b", "k").await.unwrap_err();
    assert!(matches!(err, AwsError::Timeout { service: Service::S3, .. }), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named_and_nothing_secret_is_shown() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err =
        client(&endpoint, fast()).assume_role("arn:r", "s1", Duration::from_secs(900)).await.unwrap_err();
    assert!(matches!(err, AwsError::Unreachable { service: Service::Sts, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot reach STS at {endpoint}: ")), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));
}

#[tokio::test]
async fn errors_and_debug_output_never_show_keys() {
    let body = r#"{"__type":"AccessDeniedException","message":"denied"}"#;
    let (endpoint, _) = scripted(vec![answer("400 Bad Request", "application/x-amz-json-1.1", body)]).await;
    let c = client(&endpoint, fast());
    let err = c.get_secret_value("db", None, None).await.unwrap_err();
    assert_no_secret(&err.to_string());
    assert_no_secret(&format!("{err:?} {c:?}"));
    // Positive control: the Debug output does show what is not secret.
    assert!(format!("{c:?}").contains("AKIAIOSFODNN7EXAMPLE"));
}

#[tokio::test]
async fn own_keys_come_from_the_configured_identity() {
    let mut settings = Settings::new("us-east-1");
    settings.own_identity = OwnIdentity::Keys(keys());
    let aws = Aws::new(settings);
    assert_eq!(aws.own_keys().await.unwrap(), IssuedKeys { keys: keys(), expires: None });
    assert_eq!(aws.own_client().await.unwrap().region(), "us-east-1");
    assert_eq!(aws.client(keys()).in_region("eu-central-1").region(), "eu-central-1");
}
