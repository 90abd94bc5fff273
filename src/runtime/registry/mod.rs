//! The registry side of a pull: the distribution API over HTTP (manifests, blobs, the token
//! handshake), mirrors for Docker Hub and insecure registries. It knows nothing of
//! containerd: `containerd::pull` streams what this returns into the content store.
//!
//! - HTTPS with the system's roots by default. A registry named in
//!   `ECSD_INSECURE_REGISTRIES` (and any loopback registry, as Docker treats 127.0.0.0/8) is
//!   tried over HTTPS without certificate checks, then over plain HTTP, as Docker's
//!   `insecure-registries` are; the scheme that answered is remembered.
//! - Docker Hub (`docker.io`) is served by `registry-1.docker.io`, after the mirrors of
//!   `ECSD_REGISTRY_MIRRORS` in order (mirrors get no credentials: they are caches that hold
//!   their own).
//! - Every request is bounded: the manifest and token requests by the manifest timeout, a
//!   blob download by the inactivity timeout between two chunks.
//! - Nothing here logs or returns a credential, a token, or a URL with a query string.

mod auth;
pub mod credentials;
mod error;
pub mod manifest;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};
use tracing::debug;

pub use auth::Credentials;
pub use error::{RegistryError, go_duration};
pub use manifest::{RemoteImage, fetch_config};

use auth::{Challenge, TokenResponse};

/// The four manifest types a pull accepts, in the order containerd sends them.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json";
/// containerd refuses manifests larger than this (4 × 1048 × 1048 bytes).
pub const MANIFEST_MAX: u64 = 4 * 1048 * 1048;
/// Image configs are small JSON documents.
pub const CONFIG_MAX: u64 = 8 << 20;
/// Error bodies and token answers.
const SMALL_BODY_MAX: u64 = 1 << 20;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// How ecsd reaches registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// `host[:port]` of registries reached without certificate checks or over plain HTTP.
    pub insecure: Vec<String>,
    /// Base URLs (`https://mirror.example`, `http://127.0.0.1:5001`) tried before Docker Hub.
    pub mirrors: Vec<String>,
    pub connect_timeout: Duration,
    /// A manifest or token request, whole (`ECS_MANIFEST_PULL_TIMEOUT`).
    pub request_timeout: Duration,
    /// The longest a blob download may go without receiving a byte
    /// (`ECS_IMAGE_PULL_INACTIVITY_TIMEOUT`).
    pub inactivity_timeout: Duration,
    /// A whole pull (`ECS_IMAGE_PULL_TIMEOUT`).
    pub pull_timeout: Duration,
    /// Layers of one image downloaded at once.
    pub max_concurrent_downloads: usize,
}

impl RegistrySettings {
    /// Whether registry `host` (`host[:port]`) is reached without certificate checks or
    /// over plain HTTP: a loopback host, or one listed in `insecure`.
    pub fn is_insecure(&self, host: &str) -> bool {
        is_loopback(host) || self.insecure.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            insecure: vec![],
            mirrors: vec![],
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            inactivity_timeout: Duration::from_secs(60),
            pull_timeout: Duration::from_secs(2 * 3600),
            max_concurrent_downloads: 3,
        }
    }
}

/// Whether `host` (`host[:port]`) is a loopback address or name.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host
            .rsplit_once(':')
            .map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host }),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP side of every pull of the daemon (or of one CLI command). Cheap to share.
#[derive(Debug)]
pub struct Registries {
    settings: RegistrySettings,
    verified: tokio::sync::OnceCell<reqwest::Client>,
    unverified: tokio::sync::OnceCell<reqwest::Client>,
    /// Scheme that answered, per insecure host.
    schemes: Mutex<HashMap<String, &'static str>>,
    /// `Authorization` values per (host, repository, credentials), with their expiry.
    auth: Mutex<HashMap<String, (String, Instant)>>,
}

/// Where one repository is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    /// A fixed scheme (mirrors name theirs); `None`: https, or the insecure fallback.
    pub scheme: Option<&'static str>,
    pub insecure: bool,
    pub mirror: bool,
}

impl Registries {
    pub fn new(settings: RegistrySettings) -> Registries {
        Registries {
            settings,
            verified: tokio::sync::OnceCell::new(),
            unverified: tokio::sync::OnceCell::new(),
            schemes: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    fn insecure(&self, host: &str) -> bool {
        self.settings.is_insecure(host)
    }

    /// Where the registry `domain` (as in a normalised reference) is served from, in the
    /// order to try: Docker Hub's mirrors first.
    pub fn endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if domain == DOCKER_HUB {
            for m in &self.settings.mirrors {
                let (scheme, host) = match m.split_once("://") {
                    Some(("http", h)) => ("http", h),
                    Some((_, h)) => ("https", h),
                    None => ("https", m.as_str()),
                };
                let host = host.trim_end_matches('/').to_owned();
                out.push(Endpoint {
                    insecure: self.insecure(&host),
                    host,
                    scheme: Some(scheme),
                    mirror: true,
                });
            }
            out.push(Endpoint { host: DOCKER_HUB_API.into(), scheme: None, insecure: false, mirror: false });
        } else {
            out.push(Endpoint {
                host: domain.to_owned(),
                scheme: None,
                insecure: self.insecure(domain),
                mirror: false,
            });
        }
        out
    }

    /// A session on `repository` (e.g. `library/busybox`) at `endpoint`, for error texts
    /// named `reference`.
    pub fn repository(
        &self,
        endpoint: Endpoint,
        repository: &str,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Repository<'_> {
        // Mirrors hold their own credentials for the upstream.
        let credentials = if endpoint.mirror { None } else { credentials };
        Repository {
            registries: self,
            endpoint,
            path: repository.to_owned(),
            reference: reference.to_owned(),
            credentials,
        }
    }

    async fn client(&self, insecure: bool) -> Result<&reqwest::Client, RegistryError> {
        let cell = if insecure { &self.unverified } else { &self.verified };
        cell.get_or_try_init(|| async {
            reqwest::Client::builder()
                .connect_timeout(self.settings.connect_timeout)
                .redirect(reqwest::redirect::Policy::limited(10))
                .danger_accept_invalid_certs(insecure)
                .user_agent(concat!("ecsd/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| RegistryError::Client { cause: chain(&e.without_url()) })
        })
        .await
    }

    fn cached_auth(&self, key: &str) -> Option<String> {
        let mut m = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn store_auth(&self, key: String, value: String, ttl: Duration) {
        let mut m = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (_, until)| *until > Instant::now());
        m.insert(key, (value, Instant::now() + ttl));
    }
}

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// `sha256:<hex>` of the bytes (checked against the registry's `Docker-Content-Digest`).
    pub digest: String,
}

/// A blob download in progress.
#[derive(Debug)]
pub struct BlobStream {
    response: reqwest::Response,
    /// Where the body starts in the blob: the offset asked for when the registry honoured
    /// the range, else 0.
    pub start: u64,
    inactivity: Duration,
    digest: String,
}

impl BlobStream {
    /// The next piece of the body; `None` at its end. A registry that sends nothing for the
    /// inactivity timeout fails the download.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, RegistryError> {
        match tokio::time::timeout(self.inactivity, self.response.chunk()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(RegistryError::Unreachable {
                what: "GET",
                target: format!("blob {}", self.digest),
                cause: chain(&e.without_url()),
            }),
            Err(_) => Err(RegistryError::Inactivity { digest: self.digest.clone(), after: self.inactivity }),
        }
    }
}

/// One repository of one registry, with the credentials to use there.
#[derive(Debug)]
pub struct Repository<'a> {
    registries: &'a Registries,
    pub endpoint: Endpoint,
    path: String,
    reference: String,
    credentials: Option<Credentials>,
}

impl Repository<'_> {
    fn target(&self, kind: &str, r: &str) -> String {
        format!("{}/v2/{}/{kind}/{r}", self.endpoint.host, self.path)
    }

    fn auth_key(&self) -> String {
        let fp = self.credentials.as_ref().map(Credentials::fingerprint).unwrap_or_default();
        format!("{}\0{}\0{fp}", self.endpoint.host, self.path)
    }

    /// The schemes to try, in order.
    fn schemes(&self) -> Vec<&'static str> {
        if let Some(s) = self.endpoint.scheme {
            return vec![s];
        }
        if !self.endpoint.insecure {
            return vec!["https"];
        }
        let known = self
            .registries
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.endpoint.host)
            .copied();
        match known {
            Some(s) => vec![s],
            None => vec!["https", "http"],
        }
    }

    /// Sends GET `kind/r` (manifests or blobs), authenticating as the registry asks. The
    /// answer's status is not checked.
    async fn get(
        &self,
        what: &'static str,
        kind: &str,
        r: &str,
        accept: Option<&str>,
        range: Option<u64>,
        timeout: Duration,
    ) -> Result<reqwest::Response, RegistryError> {
        let client = self.registries.client(self.endpoint.insecure).await?;
        let schemes = self.schemes();
        let mut last = None;
        for (i, scheme) in schemes.iter().enumerate() {
            let url = format!("{scheme}://{}/v2/{}/{kind}/{r}", self.endpoint.host, self.path);
            match self.get_url(client, what, kind, r, &url, accept, range, timeout).await {
                Ok(resp) => {
                    if self.endpoint.insecure && self.endpoint.scheme.is_none() {
                        self.registries
                            .schemes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(self.endpoint.host.clone(), scheme);
                    }
                    return Ok(resp);
                }
                // An insecure registry that does not speak TLS: try plain HTTP.
                Err(e @ RegistryError::Unreachable { .. }) if i + 1 < schemes.len() => {
                    debug!(host = %self.endpoint.host, error = %e, "HTTPS failed; trying HTTP");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RegistryError::Client { cause: "no scheme to try".into() }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn get_url(
        &self,
        client: &reqwest::Client,
        what: &'static str,
        kind: &str,
        r: &str,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
        timeout: Duration,
    ) -> Result<reqwest::Response, RegistryError> {
        let target = self.target(kind, r);
        let key = self.auth_key();
        let mut authorization = self.registries.cached_auth(&key);
        if authorization.is_none()
            && let Some(Credentials::Bearer(t)) = &self.credentials
        {
            authorization = Some(format!("Bearer {t}"));
        }
        let mut answered_challenge = false;
        loop {
            let mut req = client.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(offset) = range.filter(|o| *o > 0) {
                req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            if let Some(a) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            let resp = match tokio::time::timeout(timeout, req.send()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(transport(what, &target, e, timeout)),
                Err(_) => return Err(RegistryError::Timeout { what, target, after: timeout }),
            };
            if resp.status() != StatusCode::UNAUTHORIZED || answered_challenge {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            answered_challenge = true;
            let header = match challenge {
                Some(Challenge::Basic) => match self.credentials.as_ref().and_then(Credentials::basic_header)
                {
                    Some(h) => (h, Duration::from_secs(3600)),
                    // Nothing to answer with: the 401 is the answer.
                    None => return Ok(resp),
                },
                Some(Challenge::Bearer { realm, service, scope }) => {
                    let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.path));
                    let (token, ttl) = self.token(&realm, service.as_deref(), &scope, timeout).await?;
                    (format!("Bearer {token}"), ttl)
                }
                None => return Ok(resp),
            };
            self.registries.store_auth(key.clone(), header.0.clone(), header.1);
            authorization = Some(header.0);
        }
    }

    /// A Bearer token for `scope` from the token server at `realm`.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        timeout: Duration,
    ) -> Result<(String, Duration), RegistryError> {
        let realm_url = reqwest::Url::parse(realm).map_err(|_| RegistryError::Protocol {
            what: "the registry's token realm".into(),
            reason: "not a URL".into(),
        })?;
        let realm_host = match (realm_url.host_str(), realm_url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        let insecure = self.registries.insecure(&realm_host);
        let client = self.registries.client(insecure).await?;
        let target = format!("{realm_host}{}", realm_url.path());
        let mut query: Vec<(&str, String)> = vec![("scope", scope.to_owned())];
        if let Some(s) = service {
            query.push(("service", s.to_owned()));
        }
        let req = match &self.credentials {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = query.clone();
                form.extend([
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", refresh.clone()),
                    ("client_id", "ecsd".to_owned()),
                ]);
                client.post(realm_url.clone()).form(&form)
            }
            Some(Credentials::Basic { username, password }) => {
                query.push(("account", username.clone()));
                client.get(realm_url.clone()).query(&query).basic_auth(username, Some(password))
            }
            _ => client.get(realm_url.clone()).query(&query),
        };
        let resp = match tokio::time::timeout(timeout, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(transport("GET", &target, e, timeout)),
            Err(_) => return Err(RegistryError::Timeout { what: "GET", target, after: timeout }),
        };
        let status = resp.status();
        let body = read_small(resp, timeout).await.unwrap_or_default();
        if !status.is_success() {
            let (code, message) = error_body(&body);
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                    reference: self.reference.clone(),
                    registry: self.endpoint.host.clone(),
                    credentials: self.credentials.is_some(),
                    code: code.or(Some("UNAUTHORIZED".into())),
                    message: message.or(Some(format!("the token server answered {status}"))),
                },
                StatusCode::TOO_MANY_REQUESTS => {
                    RegistryError::RateLimited { registry: self.endpoint.host.clone(), message }
                }
                _ => RegistryError::Server { what: "GET", target, status: status.as_u16(), code, message },
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
            what: format!("the token server's answer ({target})"),
            reason: e.to_string(),
        })?;
        let (token, expires_in) = parsed.token().ok_or_else(|| RegistryError::Protocol {
            what: format!("the token server's answer ({target})"),
            reason: "it has no token".into(),
        })?;
        // Renew a little early; a token without a lifetime is good for 60 s (the spec's floor).
        let ttl = Duration::from_secs(expires_in.unwrap_or(60).max(10)).mul_f64(0.9);
        Ok((token, ttl))
    }

    /// The manifest or index `r` (a tag or a digest), checked against its digest.
    pub async fn manifest(&self, r: &str) -> Result<Fetched, RegistryError> {
        let timeout = self.registries.settings.request_timeout;
        let resp = self.get("GET", "manifests", r, Some(MANIFEST_ACCEPT), None, timeout).await?;
        let target = self.target("manifests", r);
        let resp = self.check(resp, "GET", &target, None).await?;
        let header_digest =
            resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        if resp.content_length().is_some_and(|n| n > MANIFEST_MAX) {
            return Err(RegistryError::TooLarge { what: format!("manifest {target}"), limit: MANIFEST_MAX });
        }
        let bytes = read_capped(resp, MANIFEST_MAX, timeout, &target).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        for expected in [r.contains(':').then_some(r), header_digest.as_deref()].into_iter().flatten() {
            if expected.starts_with("sha256:") && expected != digest {
                return Err(RegistryError::Verification {
                    what: "manifest",
                    digest: expected.to_owned(),
                    problem: format!("its content hashes to {digest}"),
                });
            }
        }
        let media_type = manifest::media_type(&self.reference, &content_type, &bytes)?;
        Ok(Fetched { bytes, media_type, digest })
    }

    /// Starts downloading blob `digest` from byte `offset` (when the registry honours
    /// ranges; see [`BlobStream::start`]).
    pub async fn blob(&self, digest: &str, offset: u64) -> Result<BlobStream, RegistryError> {
        let timeout = self.registries.settings.request_timeout;
        let resp = self.get("GET", "blobs", digest, None, Some(offset), timeout).await?;
        let target = self.target("blobs", digest);
        let resp = self.check(resp, "GET", &target, Some(digest)).await?;
        let start = if resp.status() == StatusCode::PARTIAL_CONTENT { offset } else { 0 };
        Ok(BlobStream {
            response: resp,
            start,
            inactivity: self.registries.settings.inactivity_timeout,
            digest: digest.to_owned(),
        })
    }

    /// A small blob (an image config) whole, checked against its digest.
    pub async fn blob_bytes(&self, digest: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let mut stream = self.blob(digest, 0).await?;
        let mut out = Vec::new();
        while let Some(c) = stream.chunk().await? {
            if out.len() as u64 + c.len() as u64 > limit {
                return Err(RegistryError::TooLarge { what: format!("blob {digest}"), limit });
            }
            out.extend_from_slice(&c);
        }
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
        if digest.starts_with("sha256:") && got != digest {
            return Err(RegistryError::Verification {
                what: "blob",
                digest: digest.to_owned(),
                problem: format!("its content hashes to {got}"),
            });
        }
        Ok(out)
    }

    /// The answer when it is a success, else the error its status and body say.
    async fn check(
        &self,
        resp: reqwest::Response,
        what: &'static str,
        target: &str,
        blob: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_small(resp, self.registries.settings.request_timeout).await.unwrap_or_default();
        let (code, message) = error_body(&body);
        let reference = self.reference.clone();
        Err(match (status, code.as_deref()) {
            (_, Some("TOOMANYREQUESTS")) | (StatusCode::TOO_MANY_REQUESTS, _) => {
                RegistryError::RateLimited { registry: self.endpoint.host.clone(), message }
            }
            (StatusCode::UNAUTHORIZED, _) => RegistryError::Unauthorized {
                reference,
                registry: self.endpoint.host.clone(),
                credentials: self.credentials.is_some(),
                code,
                message,
            },
            (StatusCode::FORBIDDEN, _) | (_, Some("DENIED")) => {
                RegistryError::Denied { reference, code, message }
            }
            (StatusCode::NOT_FOUND, _) | (_, Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN")) => {
                match blob {
                    Some(d) => RegistryError::BlobNotFound { reference, digest: d.to_owned(), code, message },
                    None => RegistryError::NotFound { reference, code, message },
                }
            }
            _ => RegistryError::Server {
                what,
                target: target.to_owned(),
                status: status.as_u16(),
                code,
                message,
            },
        })
    }
}

/// The first error of a registry's error body: `{"errors":[{"code","message"}]}`.
fn error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => match e.errors.into_iter().next() {
            Some(first) => (
                first.code.filter(|c| !c.is_empty()).map(|c| c.to_uppercase()),
                first.message.filter(|m| !m.is_empty()).map(|m| m.chars().take(300).collect()),
            ),
            None => (None, None),
        },
        Err(_) => (None, None),
    }
}

async fn read_small(resp: reqwest::Response, timeout: Duration) -> Result<Vec<u8>, RegistryError> {
    read_capped(resp, SMALL_BODY_MAX, timeout, "an error body").await
}

async fn read_capped(
    mut resp: reqwest::Response,
    limit: u64,
    timeout: Duration,
    target: &str,
) -> Result<Vec<u8>, RegistryError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                if out.len() as u64 + c.len() as u64 > limit {
                    return Err(RegistryError::TooLarge { what: target.to_owned(), limit });
                }
                out.extend_from_slice(&c);
            }
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(e)) => return Err(transport("GET", target, e, timeout)),
            Err(_) => {
                return Err(RegistryError::Timeout {
                    what: "GET",
                    target: target.to_owned(),
                    after: timeout,
                });
            }
        }
    }
}

fn transport(what: &'static str, target: &str, e: reqwest::Error, timeout: Duration) -> RegistryError {
    if e.is_timeout() && !e.is_connect() {
        RegistryError::Timeout { what, target: target.to_owned(), after: timeout }
    } else {
        RegistryError::Unreachable { what, target: target.to_owned(), cause: chain(&e.without_url()) }
    }
}

/// An error with its sources, `: `-separated, each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
