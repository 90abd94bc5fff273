//! The AWS service clients ecsd needs, and the only place that signs AWS requests.
//!
//! One [`Aws`] per daemon holds the settings (region, endpoints, ecsd's own identity,
//! limits) and one HTTP client with bounded time (connect and total timeouts) and bounded
//! answers. A [`Client`] is that plus the keys to sign with and a region; each operation
//! is one small method on it, built on two generic calls:
//! [`Client::json`] (AWS JSON 1.1 with `X-Amz-Target`: Secrets Manager, SSM, ECR,
//! CloudWatch Logs) and [`Client::query`] (the Query protocol: STS, and next IAM).
//! S3's GetObject is the one REST call.
//!
//! Endpoints are resolved here, per [`Service`]: the configured URL (which `config` reads
//! from `AWS_ENDPOINT_URL_<SERVICE>` and the local-ecs-api names), else the service's AWS
//! endpoint for the region. Transient failures (no connection, 5xx, throttling) are tried
//! again a bounded number of times.
//!
//! This module knows nothing about ECS tasks: which role to use, what a secret's
//! `valueFrom` means, and how keys are served to containers are `endpoints`' business.
//! It must not put a key, a token, a signed header or a request body in an error or a
//! log line.

mod ecr;
mod ecs;
mod error;
mod iam;
mod identity;
mod logs;
mod s3;
mod secretsmanager;
pub mod sign;
mod ssm;
mod sts;
pub mod xml;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

pub use ecr::EcrLogin;
pub use ecs::Relayed;
pub use error::{AwsError, Malformed, SigningFailure};
pub use identity::{IssuedKeys, Keys, OwnIdentity};
pub use logs::{ALREADY_EXISTS, InputLogEvent, RejectedLogEventsInfo};
pub use secretsmanager::{SecretDescription, SecretValue};
pub use ssm::{GET_PARAMETERS_MAX, Parameter, Parameters};
pub use sts::{AssumedRole, CallerIdentity};

use identity::OwnKeys;
use sign::{Payload, Scope, Unsigned};
use xml::Element;

/// The AWS services ecsd calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Sts,
    Iam,
    SecretsManager,
    Ssm,
    S3,
    Ecr,
    Logs,
    /// ECS itself: an upstream ECS (`ECS_ENDPOINT_URL`) for task definitions ecsd does not
    /// have and the operations it forwards; and the ECS API `ecsd exec` calls (normally ecsd's).
    Ecs,
}

impl Service {
    pub const ALL: [Service; 8] = [
        Service::Sts,
        Service::Iam,
        Service::SecretsManager,
        Service::Ssm,
        Service::S3,
        Service::Ecr,
        Service::Logs,
        Service::Ecs,
    ];

    /// The name in SigV4's credential scope.
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::Sts => "sts",
            Service::Iam => "iam",
            Service::SecretsManager => "secretsmanager",
            Service::Ssm => "ssm",
            Service::S3 => "s3",
            Service::Ecr => "ecr",
            Service::Logs => "logs",
            Service::Ecs => "ecs",
        }
    }

    /// The service's own endpoint for `region` and the region to sign for there. IAM is
    /// global: one endpoint per partition, signed for its first region.
    fn aws_endpoint(self, region: &str) -> (String, String) {
        let suffix = dns_suffix(region);
        let regional = |host: &str| (format!("https://{host}.{region}.{suffix}"), region.to_owned());
        match self {
            Service::Iam if region.starts_with("cn-") => {
                (format!("https://iam.cn-north-1.{suffix}"), "cn-north-1".to_owned())
            }
            Service::Iam => (format!("https://iam.{suffix}"), "us-east-1".to_owned()),
            Service::Ecr => regional("api.ecr"),
            Service::S3 => regional("s3"),
            other => regional(other.signing_name()),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Sts => "STS",
            Service::Iam => "IAM",
            Service::SecretsManager => "Secrets Manager",
            Service::Ssm => "SSM",
            Service::S3 => "S3",
            Service::Ecr => "ECR",
            Service::Logs => "CloudWatch Logs",
            Service::Ecs => "ECS",
        })
    }
}

/// `amazonaws.com`, or `amazonaws.com.cn` for the China regions.
fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" }
}

/// Configured endpoints (`http(s)://host[:port][/path]`), by service. A service without
/// one is called at its AWS endpoint for the region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    urls: BTreeMap<Service, String>,
}

impl Endpoints {
    /// Calls to `service` go to `url` (a trailing `/` is dropped).
    pub fn set(&mut self, service: Service, url: &str) {
        self.urls.insert(service, url.trim_end_matches('/').to_owned());
    }

    /// The same endpoints with `service` at `url`.
    pub fn with(mut self, service: Service, url: &str) -> Endpoints {
        self.set(service, url);
        self
    }

    /// The configured endpoint of `service`.
    pub fn get(&self, service: Service) -> Option<&str> {
        self.urls.get(&service).map(String::as_str)
    }

    /// The base URL (no trailing `/`) for `service` from `region`, and the region to sign
    /// for. A configured endpoint is signed for the caller's region (IAM's for IAM).
    pub fn resolve(&self, service: Service, region: &str) -> (String, String) {
        let (aws, signing_region) = service.aws_endpoint(region);
        match self.get(service) {
            Some(url) => (url.to_owned(), signing_region),
            None => (aws, signing_region),
        }
    }
}

/// Bounds on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// To open a connection.
    pub connect_timeout: Duration,
    /// For one attempt, from connecting to the last byte of the answer.
    pub request_timeout: Duration,
    /// The largest answer read (error answers included).
    pub max_response: usize,
    /// Attempts per call when the failure is transient.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles for each further one.
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            // Secrets (64 KiB), ten parameters and an environment file fit many times over.
            max_response: 1 << 20,
            attempts: 3,
            backoff: Duration::from_millis(400),
        }
    }
}

/// What `config` resolves for the AWS clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The default region (the daemon's); a call may name another.
    pub region: String,
    pub endpoints: Endpoints,
    /// Where ecsd's own keys come from.
    pub own_identity: OwnIdentity,
    pub limits: Limits,
}

impl Settings {
    /// Settings for `region` with AWS's endpoints, the standard chain and default limits.
    pub fn new(region: &str) -> Settings {
        Settings {
            region: region.to_owned(),
            endpoints: Endpoints::default(),
            own_identity: OwnIdentity::DefaultChain,
            limits: Limits::default(),
        }
    }
}

/// The daemon's AWS access: settings, one HTTP client, ecsd's own keys. Cheap to clone.
#[derive(Clone)]
pub struct Aws {
    inner: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    /// Built on first use, so a daemon that never calls AWS never sets up TLS.
    http: tokio::sync::OnceCell<reqwest::Client>,
    own: OwnKeys,
}

impl fmt::Debug for Aws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

impl Aws {
    pub fn new(settings: Settings) -> Aws {
        let own = OwnKeys::new(settings.own_identity.clone(), &settings.region);
        Aws { inner: Arc::new(Shared { settings, http: tokio::sync::OnceCell::new(), own }) }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// A client signing with `keys`, in the default region.
    pub fn client(&self, keys: Keys) -> Client {
        Client { aws: self.clone(), keys, region: self.inner.settings.region.clone() }
    }

    /// ecsd's own keys, from its configured identity (reused while fresh).
    pub async fn own_keys(&self) -> Result<IssuedKeys, AwsError> {
        self.inner.own.get().await
    }

    /// A client signing with ecsd's own keys.
    pub async fn own_client(&self) -> Result<Client, AwsError> {
        Ok(self.client(self.own_keys().await?.keys))
    }

    async fn http(&self) -> Result<&reqwest::Client, AwsError> {
        let limits = self.inner.settings.limits;
        self.inner
            .http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .connect_timeout(limits.connect_timeout)
                    .timeout(limits.request_timeout)
                    // A redirect would carry the signed request to another host.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("ecsd/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|cause| AwsError::Client { cause: cause.without_url() })
            })
            .await
    }
}

/// Signs with one set of keys for one region. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    aws: Aws,
    keys: Keys,
    region: String,
}

/// One request, before signing.
struct Request {
    service: Service,
    operation: &'static str,
    method: reqwest::Method,
    /// The endpoint as errors name it (no path: an S3 key is not an endpoint).
    endpoint: String,
    url: String,
    signing_region: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    sign_body: bool,
}

impl Client {
    /// The same keys in `region`.
    pub fn in_region(&self, region: &str) -> Client {
        Client { region: region.to_owned(), ..self.clone() }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Calls AWS JSON 1.1 operation `target` (`secretsmanager.GetSecretValue`) of
    /// `service` with `input`, and reads the answer as `O`.
    pub async fn json<O: DeserializeOwned>(
        &self,
        service: Service,
        target: &'static str,
        input: &serde_json::Value,
    ) -> Result<O, AwsError> {
        let (endpoint, signing_region) = self.endpoint(service);
        let request = Request {
            service,
            operation: target,
            method: reqwest::Method::POST,
            url: format!("{endpoint}/"),
            endpoint,
            signing_region,
            headers: vec![
                ("content-type", "application/x-amz-json-1.1".to_owned()),
                ("x-amz-target", target.to_owned()),
            ],
            body: input.to_string().into_bytes(),
            sign_body: true,
        };
        let body = self.send(&request).await?;
        // Operations with no output (CreateLogGroup) may answer with no body at all.
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        // serde's message could quote part of a secret, so it is not kept.
        serde_json::from_slice(body).map_err(|_| AwsError::Malformed {
            service,
            operation: target,
            problem: Malformed::Json,
        })
    }

    /// Calls Query-protocol `action` of `service` (API `version`) with `params`, and
    /// returns the answer's root element (`<{action}Response>`).
    pub async fn query(
        &self,
        service: Service,
        action: &'static str,
        version: &str,
        params: &[(&str, &str)],
    ) -> Result<Element, AwsError> {
        let (endpoint, signing_region) = self.endpoint(service);
        let body = [("Action", action), ("Version", version)]
            .iter()
            .chain(params)
            .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let request = Request {
            service,
            operation: action,
            method: reqwest::Method::POST,
            url: format!("{endpoint}/"),
            endpoint,
            signing_region,
            headers: vec![("content-type", "application/x-www-form-urlencoded; charset=utf-8".to_owned())],
            body: body.into_bytes(),
            sign_body: true,
        };
        let body = self.send(&request).await?;
        let malformed = |problem| AwsError::Malformed { service, operation: action, problem };
        let text = std::str::from_utf8(&body).map_err(|_| malformed(Malformed::Xml))?;
        Element::parse(text).map_err(|_| malformed(Malformed::Xml))
    }

    fn endpoint(&self, service: Service) -> (String, String) {
        self.aws.inner.settings.endpoints.resolve(service, &self.region)
    }

    /// Sends `request`, again while the failure is transient and attempts are left, and
    /// returns the body of the successful answer.
    async fn send(&self, request: &Request) -> Result<Vec<u8>, AwsError> {
        let limits = self.aws.inner.settings.limits;
        let http = self.aws.http().await?;
        let mut attempt = 1;
        loop {
            let result = self.attempt(http, request, limits.max_response).await;
            match &result {
                Ok(_) => {
                    tracing::debug!(service = %request.service, operation = request.operation, attempt, "AWS call succeeded")
                }
                Err(e) => {
                    tracing::debug!(service = %request.service, operation = request.operation, attempt, error = %e, "AWS call failed")
                }
            }
            match result {
                Err(e) if e.is_transient() && attempt < limits.attempts => {
                    tokio::time::sleep(limits.backoff * 2u32.saturating_pow(attempt - 1)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn attempt(
        &self,
        http: &reqwest::Client,
        request: &Request,
        max_response: usize,
    ) -> Result<Vec<u8>, AwsError> {
        let response = self.signed_send(http, request).await?;
        let status = response.status();
        let error_type =
            response.headers().get("x-amzn-errortype").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = self.read_capped(request, response, max_response).await?;
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = error::parse_error_body(error_type.as_deref(), &body);
        Err(AwsError::Service { service: request.service, status: status.as_u16(), code, message })
    }

    /// Signs `request` with this client's keys, now, and sends it once.
    async fn signed_send(
        &self,
        http: &reqwest::Client,
        request: &Request,
    ) -> Result<reqwest::Response, AwsError> {
        let service = request.service;
        let headers: Vec<(&str, &str)> = request.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let unsigned = Unsigned {
            method: request.method.as_str(),
            url: &request.url,
            headers: &headers,
            payload: if request.sign_body { Payload::Bytes(&request.body) } else { Payload::Unsigned },
        };
        let scope = Scope { name: service.signing_name(), region: &request.signing_region };
        let signed = sign::sign(&self.keys, scope, SystemTime::now(), &unsigned)
            .map_err(|reason| AwsError::Signing { service, endpoint: request.endpoint.clone(), reason })?;
        let mut builder = http.request(request.method.clone(), &request.url);
        for (name, value) in headers.iter().copied().chain(signed.iter().map(|(n, v)| (*n, v.as_str()))) {
            builder = builder.header(name, value);
        }
        builder.body(request.body.clone()).send().await.map_err(|e| self.transport(request, e))
    }

    /// The body, refused past `limit` bytes.
    async fn read_capped(
        &self,
        request: &Request,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, AwsError> {
        let too_large = || AwsError::TooLarge { service: request.service, limit };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(request, e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport(&self, request: &Request, e: reqwest::Error) -> AwsError {
        let (service, endpoint) = (request.service, request.endpoint.clone());
        // A connect timeout is an unreachable endpoint; any other timeout is the request's.
        if e.is_timeout() && !e.is_connect() {
            AwsError::Timeout { service, endpoint, limit: self.aws.inner.settings.limits.request_timeout }
        } else {
            AwsError::Unreachable { service, endpoint, cause: e.without_url() }
        }
    }
}

/// RFC 3986 encoding as SigV4 wants it: every byte but the unreserved ones (and `/` when
/// `keep_slash`, for S3 keys).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests;
