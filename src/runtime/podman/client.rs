//! A small client of libpod's REST API v4 over its unix socket.
//!
//! One connection per call (a unix connect costs microseconds); every call has a timeout and
//! every body read into memory a size limit. Failures are classified by HTTP status alone;
//! libpod's message travels along as text to show.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::runtime::{Backend, RuntimeError};

/// The API prefix: libpod's own endpoints of API version 4 (Podman 4.0 and later).
pub const PREFIX: &str = "/v4.0.0/libpod";
/// How long a plain call may take (a pull or a stop has its own).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest response body read into memory (an image list of a big store fits).
pub const BODY_LIMIT: usize = 8 << 20;

/// What a call was about, for its error.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub operation: &'static str,
    pub what: &'static str,
    pub id: &'a str,
}

pub fn at<'a>(operation: &'static str, what: &'static str, id: &'a str) -> At<'a> {
    At { operation, what, id }
}

/// A response read whole: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self, at: At<'_>) -> Result<T, RuntimeError> {
        serde_json::from_slice(&self.body).map_err(|e| RuntimeError::Internal {
            operation: at.operation,
            what: at.what,
            id: at.id.to_owned(),
            message: format!("libpod answered with a body that is not the expected JSON: {e}"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client { socket: socket.to_owned() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn unavailable(&self, message: String) -> RuntimeError {
        RuntimeError::Unavailable {
            runtime: Backend::Podman,
            address: self.socket.display().to_string(),
            message,
        }
    }

    async fn connect<B>(&self) -> Result<hyper::client::conn::http1::SendRequest<B>, RuntimeError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| self.unavailable(e.to_string()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn build(method: Method, path: &str, body: Option<&serde_json::Value>) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(format!("{PREFIX}{path}")).header("host", "d");
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        // The parts given are always valid (a fixed method, a path of ours, fixed headers).
        req.body(Full::new(body)).unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    /// Sends a request and returns the response with its body still to read.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&'static str, &str)],
    ) -> Result<Response<Incoming>, RuntimeError> {
        let mut req = Self::build(method, path, body);
        for (k, v) in headers {
            let value = hyper::header::HeaderValue::from_str(v).map_err(|e| RuntimeError::Internal {
                operation: "send a request",
                what: "header",
                id: (*k).to_owned(),
                message: e.to_string(),
            })?;
            req.headers_mut().insert(*k, value);
        }
        let mut sender = self.connect().await?;
        sender.send_request(req).await.map_err(|e| self.unavailable(e.to_string()))
    }

    /// A whole call: the response, its body read (bounded), within `timeout`.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        at: At<'_>,
        timeout: Duration,
    ) -> Result<Answer, RuntimeError> {
        self.call_with_headers(method, path, body, &[], at, timeout).await
    }

    /// [`Client::call_with`] with extra request headers.
    pub async fn call_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&'static str, &str)],
        at: At<'_>,
        timeout: Duration,
    ) -> Result<Answer, RuntimeError> {
        let call = async {
            let resp = self.send(method, path, body, headers).await?;
            read_answer(resp, at).await
        };
        within(timeout, at, call).await
    }

    /// Sends `body` (a stream of chunks, ended by the sender; `length` bytes when known, else
    /// chunked) to `path` and reads the answer (bounded), within `timeout`. A chunk that is an
    /// error aborts the request.
    pub async fn upload(
        &self,
        path: &str,
        content_type: &str,
        body: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
        length: Option<u64>,
        at: At<'_>,
        timeout: Duration,
    ) -> Result<Answer, RuntimeError> {
        let frames = futures_util::stream::unfold(body, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk.map(hyper::body::Frame::data), rx))
        });
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{PREFIX}{path}"))
            .header("host", "d")
            .header("content-type", content_type);
        if let Some(length) = length {
            req = req.header("content-length", length);
        }
        let req = req.body(http_body_util::StreamBody::new(frames)).map_err(|e| RuntimeError::Internal {
            operation: at.operation,
            what: at.what,
            id: at.id.to_owned(),
            message: e.to_string(),
        })?;
        let call = async {
            let mut sender = self.connect().await?;
            // A failed read of the body's source is in the error's chain: say all of it.
            let resp =
                sender.send_request(req).await.map_err(|e| self.unavailable(crate::error_chain(&e)))?;
            read_answer(resp, at).await
        };
        within(timeout, at, call).await
    }

    /// A call that must succeed (2xx or 304); anything else becomes its error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        at: At<'_>,
    ) -> Result<Answer, RuntimeError> {
        let answer = self.call_with(method, path, body, at, CALL_TIMEOUT).await?;
        check(answer, at)
    }

    /// A call where 404 means "not there": `None`.
    pub async fn call_opt(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        at: At<'_>,
    ) -> Result<Option<Answer>, RuntimeError> {
        let answer = self.call_with(method, path, body, at, CALL_TIMEOUT).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(answer, at).map(Some)
    }
}

/// `call`, or a timeout after `timeout`.
async fn within<T>(
    timeout: Duration,
    at: At<'_>,
    call: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| RuntimeError::Timeout { operation: at.operation, after: timeout })?
}

/// The status and the whole body (bounded) of a response.
async fn read_answer(resp: Response<Incoming>, at: At<'_>) -> Result<Answer, RuntimeError> {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| RuntimeError::Internal {
            operation: at.operation,
            what: at.what,
            id: at.id.to_owned(),
            message: format!("cannot read libpod's answer: {e}"),
        })?
        .to_bytes();
    Ok(Answer { status, body })
}

/// The answer if it is a success, else the error its status stands for.
pub fn check(answer: Answer, at: At<'_>) -> Result<Answer, RuntimeError> {
    if answer.status.is_success() || answer.status == StatusCode::NOT_MODIFIED {
        return Ok(answer);
    }
    Err(classify(answer.status, &answer.body, at))
}

/// The error for a failed libpod call, from its status code.
pub fn classify(status: StatusCode, body: &[u8], at: At<'_>) -> RuntimeError {
    let message = message_of(body);
    let id = at.id.to_owned();
    let (operation, what) = (at.operation, at.what);
    match status {
        StatusCode::NOT_FOUND => RuntimeError::NotFound { what, id },
        StatusCode::CONFLICT => RuntimeError::WrongState { operation, what, id, message },
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            RuntimeError::Invalid { runtime: Backend::Podman, operation, what, id, message }
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            RuntimeError::PermissionDenied { runtime: Backend::Podman, operation, what, id, message }
        }
        _ => RuntimeError::Internal { operation, what, id, message },
    }
}

/// libpod's error text (`{"cause","message","response"}`), or the body as it is.
fn message_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorModel {
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorModel>(body) {
        Ok(ErrorModel { message: Some(m) }) => m,
        _ => String::from_utf8_lossy(&body[..body.len().min(1024)]).trim().to_owned(),
    }
}

/// `s` escaped for a URL path segment or query value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_without_reading_messages() {
        let a = at("start container", "container", "c1");
        let body = br#"{"cause":"no such container","message":"no container with name or ID \"c1\" found: no such container","response":404}"#;
        assert!(matches!(classify(StatusCode::NOT_FOUND, body, a), RuntimeError::NotFound { .. }));
        match classify(StatusCode::INTERNAL_SERVER_ERROR, b"{\"message\":\"runc failed\"}", a) {
            RuntimeError::Internal { message, .. } => assert_eq!(message, "runc failed"),
            e => panic!("{e:?}"),
        }
        assert!(matches!(classify(StatusCode::CONFLICT, b"", a), RuntimeError::WrongState { .. }));
        match classify(StatusCode::BAD_REQUEST, b"not json", a) {
            RuntimeError::Invalid { message, .. } => assert_eq!(message, "not json"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn escaping_keeps_unreserved_bytes() {
        assert_eq!(escape("docker.io/library/busybox:latest"), "docker.io%2Flibrary%2Fbusybox%3Alatest");
        assert_eq!(escape(r#"{"label":["a=b"]}"#), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
    }
}
