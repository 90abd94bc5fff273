//! The upstream ECS at `ECS_ENDPOINT_URL`, as local-ecs-api users have it (typically a moto
//! server, LocalStack or their AWS account holding the rest of their ECS state): operations
//! ecsd does not implement are forwarded there, and task definitions ecsd does not have are
//! fetched from there. Forwarded calls are signed again by `aws` with ecsd's own upstream
//! credentials, unless `ECSD_FORWARD_SIGNATURE=passthrough` keeps the caller's signature.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Exception};
use crate::aws::{Aws, AwsError, Relayed};
use crate::config::ForwardSignature;
use crate::model::shapes::{Tag, TaskDefinition};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// What ecsd needs to talk to the upstream ECS.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `ECS_ENDPOINT_URL`.
    pub url: String,
    /// `ECS_ENDPOINT_AWS_REGION`, when set.
    pub region: Option<String>,
    /// The daemon's region: the upstream's when nothing else names one.
    pub default_region: String,
    pub signature: ForwardSignature,
}

/// A client for the upstream ECS endpoint.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// For passthrough: the caller's request, unchanged.
    client: reqwest::Client,
    upstream: Upstream,
    aws: Aws,
}

impl Forwarder {
    /// `aws` must have `upstream.url` as its ECS endpoint (config puts it there).
    pub fn new(upstream: Upstream, aws: Aws) -> Result<Forwarder, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(FORWARD_TIMEOUT).build()?;
        Ok(Forwarder { client, upstream, aws })
    }

    pub fn url(&self) -> &str {
        &self.upstream.url
    }

    /// The upstream region a task definition reference lives in: an ARN's own, else
    /// `ECS_ENDPOINT_AWS_REGION`, else the daemon's.
    pub fn region_of(&self, reference: &str) -> String {
        arn_region(reference).map(str::to_owned).unwrap_or_else(|| self.region(None))
    }

    fn region(&self, caller: Option<&str>) -> String {
        self.upstream
            .region
            .clone()
            .or_else(|| caller.map(str::to_owned))
            .unwrap_or_else(|| self.upstream.default_region.clone())
    }

    /// DescribeTaskDefinition of `reference` at the upstream, signed with ecsd's own keys
    /// for the reference's region.
    pub async fn task_definition(&self, reference: &str) -> Result<(TaskDefinition, Vec<Tag>), AwsError> {
        let client = self.aws.own_client().await?.in_region(&self.region_of(reference));
        client.describe_task_definition(reference).await
    }

    /// Sends the request on and relays the answer's status, content type, request id and
    /// body. Upstream error answers are relayed as they are; an upstream that cannot be
    /// reached is a `ServerException` naming it.
    pub async fn forward(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
        match self.upstream.signature {
            ForwardSignature::Resign => self.resign(headers, body).await,
            ForwardSignature::Passthrough => self.passthrough(headers, body).await,
        }
    }

    async fn resign(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let target = text(&HeaderName::from_static("x-amz-target")).unwrap_or_default();
        let content_type = text(&header::CONTENT_TYPE).unwrap_or("application/x-amz-json-1.1");
        let region = self.region(text(&header::AUTHORIZATION).and_then(signed_region));
        let failed = |e: AwsError| {
            ApiError::new(
                Exception::Server,
                format!("ecsd could not forward the request to ECS_ENDPOINT_URL {}: {e}", self.upstream.url),
            )
        };
        let client = self.aws.own_client().await.map_err(failed)?.in_region(&region);
        let Relayed { status, headers, body } =
            client.relay(target, content_type, body.to_vec()).await.map_err(failed)?;
        let mut response =
            (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body).into_response();
        for (n, v) in headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(&v)) {
                response.headers_mut().insert(n, v);
            }
        }
        Ok(response)
    }

    async fn passthrough(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
        let mut out = reqwest::header::HeaderMap::new();
        for (name, value) in headers {
            if name == header::HOST || name == header::CONTENT_LENGTH || name == header::CONNECTION {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                out.append(n, v);
            }
        }
        let url = &self.upstream.url;
        let upstream = self.client.post(url).headers(out).body(body).send().await.map_err(|e| {
            ApiError::new(
                Exception::Server,
                format!("ecsd could not forward the request to ECS_ENDPOINT_URL {url}: {}", e.without_url()),
            )
        })?;
        let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let relay: Vec<(HeaderName, HeaderValue)> = upstream
            .headers()
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str();
                n == "content-type"
                    || n.eq_ignore_ascii_case("x-amzn-requestid")
                    || n.eq_ignore_ascii_case("x-amzn-errortype")
            })
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_str().as_bytes()).ok()?,
                    HeaderValue::from_bytes(v.as_bytes()).ok()?,
                ))
            })
            .collect();
        let bytes = upstream.bytes().await.map_err(|e| {
            ApiError::new(
                Exception::Server,
                format!("ecsd could not read the answer of ECS_ENDPOINT_URL {url}: {}", e.without_url()),
            )
        })?;
        let mut response = (status, bytes.to_vec()).into_response();
        for (n, v) in relay {
            response.headers_mut().insert(n, v);
        }
        Ok(response)
    }
}

/// The region of an ARN (`arn:aws:ecs:REGION:…`).
fn arn_region(reference: &str) -> Option<&str> {
    let mut parts = reference.strip_prefix("arn:")?.splitn(5, ':');
    let (_partition, _service, region) = (parts.next()?, parts.next()?, parts.next()?);
    (!region.is_empty()).then_some(region)
}

/// The region a SigV4 `Authorization` header was signed for
/// (`… Credential=AKID/20260101/us-west-2/ecs/aws4_request, …`).
fn signed_region(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    let scope = credential.split([',', ' ']).next()?;
    scope.split('/').nth(2).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_arns_and_signatures() {
        assert_eq!(arn_region("arn:aws:ecs:us-west-2:123456789012:task-definition/foo:1"), Some("us-west-2"));
        assert_eq!(arn_region("foo:1"), None);
        assert_eq!(
            signed_region(
                "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/ecs/aws4_request, SignedHeaders=host, Signature=ab"
            ),
            Some("eu-west-1")
        );
        assert_eq!(signed_region("Bearer x"), None);
    }
}
