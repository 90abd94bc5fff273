//! The registry client against a small registry served in-process on 127.0.0.1: auth
//! handshakes, error codes, ranges, stalls, mirrors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use super::manifest::{self, Platform};
use super::*;
use crate::runtime::reference::parse_normalized;

/// Path after /v2/ → (content type, body).
type Files = HashMap<String, (String, Vec<u8>)>;

#[derive(Default)]
struct Fake {
    files: Files,
    /// "basic" (user:pass), "bearer" (token server at /token needs user:pass), or none.
    auth: Option<&'static str>,
    /// Blob paths whose body stalls after this many bytes.
    stall_after: Option<usize>,
    /// Honour Range headers.
    ranges: bool,
    /// Status to answer everything with (429...), with a body.
    force: Option<(StatusCode, &'static str)>,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

const USER: &str = "ecsuser";
const PASS: &str = "s3cret!";

fn basic_ok(headers: &HeaderMap) -> bool {
    let want = Credentials::basic(USER, PASS).basic_header().unwrap();
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut s = state.lock().unwrap();
    s.requests.push(format!("{} {path}", req.method()));
    if let Some((status, body)) = s.force {
        return (status, body).into_response();
    }
    if path == "/token" {
        if !basic_ok(&headers) {
            return (StatusCode::UNAUTHORIZED, r#"{"details":"wrong credentials"}"#).into_response();
        }
        assert!(query.contains("scope=repository%3Aapp%3Apull"), "{query}");
        return (StatusCode::OK, r#"{"token":"tok-123","expires_in":300}"#).into_response();
    }
    let authorized = match s.auth {
        None => true,
        Some("basic") => basic_ok(&headers),
        Some(_) => headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok-123"),
    };
    if !authorized {
        let challenge = match s.auth {
            Some("basic") => r#"Basic realm="test""#.to_owned(),
            _ => format!(r#"Bearer realm="http://{host}/token",service="test",scope="repository:app:pull""#),
        };
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", challenge)
            .body(Body::from(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#))
            .unwrap();
    }
    let key = path.trim_start_matches("/v2/").to_owned();
    let Some((ctype, body)) = s.files.get(&key).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
            .into_response();
    };
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
        .filter(|_| s.ranges);
    let (status, body) = match range {
        Some(from) => (StatusCode::PARTIAL_CONTENT, body[from..].to_vec()),
        None => (StatusCode::OK, body),
    };
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    if let Some(n) = s.stall_after.filter(|_| key.contains("/blobs/")) {
        let head = bytes::Bytes::from(body[..n].to_vec());
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(head)])
            .chain(futures_util::stream::pending());
        return Response::builder().status(status).body(Body::from_stream(stream)).unwrap();
    }
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("docker-content-digest", digest)
        .body(Body::from(body))
        .unwrap()
}

use futures_util::StreamExt as _;

async fn serve(fake: Fake) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(fake));
    let app = axum::Router::new().fallback(handle).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr.to_string(), state)
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// An image: config, one layer, manifest; plus an index naming it for amd64 and arm64.
fn image_files() -> (Files, String, String) {
    let layer = b"layer bytes, not really a tar".to_vec();
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Labels":{"com.example.td":"{\"family\":\"x\"}"},"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#.to_vec();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let (arch, _) = crate::runtime::containerd::images::host_platform();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": digest(&manifest), "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}},
            {"mediaType": manifest::OCI_MANIFEST, "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111", "size": 10, "platform": {"os": "linux", "architecture": "s390x"}},
        ],
    })
    .to_string()
    .into_bytes();
    let mut files = HashMap::new();
    let m = (manifest::OCI_MANIFEST.to_owned(), manifest.clone());
    files.insert("app/manifests/v1".to_owned(), m.clone());
    files.insert(format!("app/manifests/{}", digest(&manifest)), m);
    files.insert("app/manifests/multi".to_owned(), (manifest::OCI_INDEX.to_owned(), index.clone()));
    files.insert(format!("app/blobs/{}", digest(&config)), ("application/octet-stream".into(), config));
    files.insert(format!("app/blobs/{}", digest(&layer)), ("application/octet-stream".into(), layer));
    (files, digest(&manifest), digest(&index))
}

fn settings() -> RegistrySettings {
    RegistrySettings {
        request_timeout: Duration::from_secs(5),
        inactivity_timeout: Duration::from_millis(300),
        ..RegistrySettings::default()
    }
}

async fn resolve<'a>(
    regs: &'a Registries,
    reference: &str,
    creds: Option<Credentials>,
) -> Result<manifest::Resolution<'a>, RegistryError> {
    manifest::resolve(regs, &parse_normalized(reference).unwrap(), creds, &Platform::host()).await
}

#[tokio::test]
async fn anonymous_tags_and_indexes_resolve_over_plain_http() {
    let (files, manifest_digest, index_digest) = image_files();
    let (addr, state) = serve(Fake { files, ..Fake::default() }).await;
    let regs = Registries::new(settings());
    let single = resolve(&regs, &format!("{addr}/app:v1"), None).await.unwrap();
    assert_eq!(single.top.digest, manifest_digest);
    assert_eq!(single.top.media_type, manifest::OCI_MANIFEST);
    let multi = resolve(&regs, &format!("{addr}/app:multi"), None).await.unwrap();
    assert_eq!(
        (multi.top.digest.as_str(), multi.manifest.digest.as_str()),
        (index_digest.as_str(), manifest_digest.as_str())
    );
    assert_eq!(multi.children.len(), 2);
    // The HTTPS attempt happens once per host; the scheme that answered is remembered.
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(requests.iter().filter(|r| r.contains("manifests")).count(), 3, "{requests:?}");
    // Label-only read: manifest and config, never a layer.
    state.lock().unwrap().requests.clear();
    let remote = fetch_config(&regs, &format!("{addr}/app:multi"), None, &Platform::host()).await.unwrap();
    assert_eq!(remote.digest, index_digest);
    assert_eq!(remote.config.labels.get("com.example.td").map(String::as_str), Some(r#"{"family":"x"}"#));
    assert_eq!(remote.config.env, vec!["A=1"]);
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(
        requests.iter().filter(|r| r.contains("/blobs/")).count(),
        1,
        "only the config blob: {requests:?}"
    );
}

#[tokio::test]
async fn missing_tags_and_platforms_have_their_own_errors() {
    let (files, ..) = image_files();
    let (addr, _) = serve(Fake { files, ..Fake::default() }).await;
    let regs = Registries::new(settings());
    match resolve(&regs, &format!("{addr}/app:nope"), None).await {
        Err(RegistryError::NotFound { code, .. }) => assert_eq!(code.as_deref(), Some("MANIFEST_UNKNOWN")),
        other => panic!("want NotFound, got {other:?}"),
    }
    let other = Platform { architecture: "riscv64".into(), variant: None };
    let r = parse_normalized(&format!("{addr}/app:multi")).unwrap();
    match manifest::resolve(&regs, &r, None, &other).await {
        Err(RegistryError::NoPlatform { platform, offered, .. }) => {
            assert_eq!(platform, "linux/riscv64");
            assert!(offered.contains("linux/s390x"), "{offered}");
        }
        other => panic!("want NoPlatform, got {other:?}"),
    }
}

#[tokio::test]
async fn basic_auth_registries() {
    let (files, ..) = image_files();
    let (addr, _) = serve(Fake { files, auth: Some("basic"), ..Fake::default() }).await;
    let regs = Registries::new(settings());
    let r = format!("{addr}/app:v1");
    match resolve(&regs, &r, None).await {
        Err(RegistryError::Unauthorized { credentials: false, .. }) => {}
        other => panic!("want Unauthorized without credentials, got {other:?}"),
    }
    match resolve(&regs, &r, Some(Credentials::basic(USER, "wrong"))).await {
        Err(e @ RegistryError::Unauthorized { credentials: true, .. }) => {
            assert!(!e.to_string().contains("wrong"), "{e}");
        }
        other => panic!("want Unauthorized with credentials, got {other:?}"),
    }
    resolve(&regs, &r, Some(Credentials::basic(USER, PASS))).await.unwrap();
}

#[tokio::test]
async fn bearer_token_registries() {
    let (files, ..) = image_files();
    let (addr, state) = serve(Fake { files, auth: Some("bearer"), ..Fake::default() }).await;
    let regs = Registries::new(settings());
    let r = format!("{addr}/app:v1");
    match resolve(&regs, &r, Some(Credentials::basic(USER, "wrong"))).await {
        Err(RegistryError::Unauthorized { credentials: true, .. }) => {}
        other => panic!("want Unauthorized, got {other:?}"),
    }
    let res = resolve(&regs, &r, Some(Credentials::basic(USER, PASS))).await.unwrap();
    // The token is reused for the blobs of the same repository.
    let config = res.parsed.config.digest.clone();
    res.repo.blob_bytes(&config, CONFIG_MAX).await.unwrap();
    let tokens = state.lock().unwrap().requests.iter().filter(|r| r.ends_with("/token")).count();
    assert_eq!(tokens, 2, "one refused, one granted and reused");
}

#[tokio::test]
async fn rate_limits_and_server_errors() {
    let (addr, _) = serve(Fake {
        force: Some((
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#,
        )),
        ..Fake::default()
    })
    .await;
    let regs = Registries::new(settings());
    match resolve(&regs, &format!("{addr}/app:v1"), None).await {
        Err(e @ RegistryError::RateLimited { .. }) => {
            assert_eq!(e.to_string(), "toomanyrequests: You have reached your pull rate limit.")
        }
        other => panic!("want RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_registry_is_named() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let regs = Registries::new(RegistrySettings { request_timeout: Duration::from_secs(2), ..settings() });
    match resolve(&regs, &format!("127.0.0.1:{port}/app:v1"), None).await {
        Err(e @ RegistryError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("127.0.0.1:{port}/v2/app/manifests/v1")), "{text}");
        }
        other => panic!("want Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn ranges_resume_and_stalls_time_out() {
    let (files, ..) = image_files();
    let layer_key =
        files.keys().find(|k| k.contains("/blobs/") && files[*k].1.starts_with(b"layer")).unwrap().clone();
    let layer_digest = layer_key.rsplit('/').next().unwrap().to_owned();
    let (addr, state) = serve(Fake { files, ranges: true, ..Fake::default() }).await;
    let regs = Registries::new(settings());
    let res = resolve(&regs, &format!("{addr}/app:v1"), None).await.unwrap();
    let mut s = res.repo.blob(&layer_digest, 6).await.unwrap();
    assert_eq!(s.start, 6);
    let mut got: Vec<u8> = Vec::new();
    while let Some(c) = s.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, b"bytes, not really a tar");
    // A registry that ignores ranges sends the whole blob, and says so.
    state.lock().unwrap().ranges = false;
    assert_eq!(res.repo.blob(&layer_digest, 6).await.unwrap().start, 0);
    // A registry that stops sending mid-blob.
    state.lock().unwrap().stall_after = Some(3);
    let mut s = res.repo.blob(&layer_digest, 0).await.unwrap();
    assert_eq!(s.chunk().await.unwrap().map(|c| c.len()), Some(3));
    let started = std::time::Instant::now();
    match s.chunk().await {
        Err(e @ RegistryError::Inactivity { .. }) => {
            assert_eq!(e.to_string(), "inactivity time exceeded timeout while pulling image")
        }
        other => panic!("want Inactivity, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn docker_hub_mirrors_come_first() {
    let (files, manifest_digest, _) = image_files();
    let mut mirrored = HashMap::new();
    for (k, v) in files {
        mirrored.insert(k.replacen("app/", "library/app/", 1), v);
    }
    let (addr, state) = serve(Fake { files: mirrored, ..Fake::default() }).await;
    let regs = Registries::new(RegistrySettings { mirrors: vec![format!("http://{addr}")], ..settings() });
    let eps = regs.endpoints("docker.io");
    assert_eq!(eps.len(), 2);
    assert!(eps[0].mirror && eps[0].host == addr);
    assert_eq!(eps[1].host, "registry-1.docker.io");
    assert_eq!(regs.endpoints("quay.io")[0].host, "quay.io");
    // Credentials for Docker Hub never go to a mirror.
    let res = resolve(&regs, "app:v1", Some(Credentials::basic(USER, PASS))).await.unwrap();
    assert_eq!(res.top.digest, manifest_digest);
    assert!(state.lock().unwrap().requests.iter().any(|r| r == "GET /v2/library/app/manifests/v1"));
}

#[test]
fn loopback_registries_are_insecure_by_default() {
    assert!(is_loopback("127.0.0.1:5000"));
    assert!(is_loopback("localhost:5000"));
    assert!(is_loopback("[::1]:5000"));
    assert!(!is_loopback("registry.example.com"));
    let regs = Registries::new(RegistrySettings { insecure: vec!["reg.local:5000".into()], ..settings() });
    assert!(regs.endpoints("reg.local:5000")[0].insecure);
    assert!(!regs.endpoints("reg.local")[0].insecure);
}
