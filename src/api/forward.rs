//! Forwarding of operations ecsd does not implement to `ECS_ENDPOINT_URL`, unchanged, as
//! local-ecs-api users expect (typically a moto server holding the rest of their ECS state).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Exception};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for the upstream ECS endpoint.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    url: String,
}

impl Forwarder {
    pub fn new(url: &str) -> Result<Forwarder, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(FORWARD_TIMEOUT).build()?;
        Ok(Forwarder { client, url: url.to_owned() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends the request on with its headers (signature included) and body, and relays the
    /// answer's status, content type, request id and body.
    pub async fn forward(&self, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
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
        let upstream = self.client.post(&self.url).headers(out).body(body).send().await.map_err(|e| {
            ApiError::new(
                Exception::Server,
                format!("ecsd could not forward the request to ECS_ENDPOINT_URL {}: {e}", self.url),
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
                format!("ecsd could not read the answer of ECS_ENDPOINT_URL {}: {e}", self.url),
            )
        })?;
        let mut response = (status, bytes.to_vec()).into_response();
        for (n, v) in relay {
            response.headers_mut().insert(n, v);
        }
        Ok(response)
    }
}
