//! What an AWS call can fail with, and the parsing of the services' error bodies.
//!
//! An `AwsError`'s Display is complete on its own: callers embed it in texts such as an
//! ECS stopped reason, so it carries its cause in the text and exposes no `source()`
//! (which would print the cause twice). No variant holds a key, a token, a request body
//! or a signed header, and the transport errors are stripped of their URL.

use std::fmt;
use std::time::Duration;

use super::Service;
use super::xml::Element;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The HTTPS client could not be built (TLS set-up).
    #[error("cannot set up the HTTPS client for AWS calls: {}", chain(.cause))]
    Client { cause: reqwest::Error },
    /// The request could not be built or signed (a bad endpoint URL, a header value the
    /// signer refuses).
    #[error("cannot sign a {service} request for {endpoint}: {reason}")]
    Signing { service: Service, endpoint: String, reason: SigningFailure },
    /// No connection, or the connection broke before an answer came.
    #[error("cannot reach {service} at {endpoint}: {}", chain(.cause))]
    Unreachable { service: Service, endpoint: String, cause: reqwest::Error },
    /// No complete answer within the request time limit.
    #[error("no answer from {service} at {endpoint} within {}", secs(.limit))]
    Timeout { service: Service, endpoint: String, limit: Duration },
    /// The service answered with an error: its code and message when the body has them
    /// (`Code: message`, as the AWS CLI shows them), else the HTTP status.
    #[error("{}", service_error(.status, .code.as_deref(), .message.as_deref()))]
    Service { service: Service, status: u16, code: Option<String>, message: Option<String> },
    /// The answer was longer than the response limit.
    #[error("the {service} response is larger than {limit} bytes")]
    TooLarge { service: Service, limit: usize },
    /// The answer could not be read as the operation's output. The body is never quoted:
    /// it can hold a secret.
    #[error("unreadable {operation} response from {service}: {problem}")]
    Malformed { service: Service, operation: &'static str, problem: Malformed },
    /// ecsd's own credentials (keys, profile or the standard chain) gave no keys.
    #[error("{}", aws_smithy_types::error::display::DisplayErrorContext(.cause))]
    OwnCredentials { cause: aws_credential_types::provider::error::CredentialsError },
}

/// Why a request could not be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningFailure {
    /// The URL or a header is not acceptable to the signer.
    Request,
    /// The signing parameters are incomplete.
    Parameters,
    /// The signed request is not a valid HTTP request.
    Http,
}

impl fmt::Display for SigningFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SigningFailure::Request => "the URL or a header cannot be signed",
            SigningFailure::Parameters => "incomplete signing parameters",
            SigningFailure::Http => "the signed request is not valid HTTP",
        })
    }
}

/// What was wrong with a successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not JSON of the expected shape.
    Json,
    /// Not well-formed XML.
    Xml,
    /// A required element or field is missing.
    Missing(&'static str),
    /// A field has a value of the wrong form (e.g. a date).
    Invalid(&'static str),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Json => f.write_str("not the expected JSON"),
            Malformed::Xml => f.write_str("not well-formed XML"),
            Malformed::Missing(what) => write!(f, "no {what}"),
            Malformed::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl AwsError {
    /// The service's error code, for an error answer that had one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether trying again may succeed: the connection failed, the service failed (5xx)
    /// or throttled. A timeout is not retried: it has already used the call's time.
    pub fn is_transient(&self) -> bool {
        match self {
            AwsError::Unreachable { .. } => true,
            AwsError::Service { status, code, .. } => {
                *status >= 500 || *status == 429 || code.as_deref().is_some_and(is_throttling)
            }
            _ => false,
        }
    }
}

/// Throttling codes of the AWS services (the SDKs' list, by pattern).
fn is_throttling(code: &str) -> bool {
    code.contains("Throttl")
        || code.starts_with("TooMany")
        || matches!(
            code,
            "RequestLimitExceeded"
                | "BandwidthLimitExceeded"
                | "SlowDown"
                | "PriorRequestNotComplete"
                | "ProvisionedThroughputExceededException"
                | "TransactionInProgressException"
        )
}

fn service_error(status: &u16, code: Option<&str>, message: Option<&str>) -> String {
    match (code, message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => match reqwest::StatusCode::from_u16(*status) {
            Ok(s) => format!("HTTP {s}"),
            Err(_) => format!("HTTP {status}"),
        },
    }
}

fn secs(d: &Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

/// The causes under a transport error, `: `-separated (reqwest's own text says only
/// "error sending request"). The error was stripped of its URL when it was made.
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The error code and message of an error answer: a JSON body (`__type` and `message`, or
/// the `x-amzn-ErrorType` header), or an XML one (`<Code>` and `<Message>`, as the Query
/// services and S3 send them). `None` where the body has neither.
pub(crate) fn parse_error_body(
    error_type_header: Option<&str>,
    body: &[u8],
) -> (Option<String>, Option<String>) {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let (code, message) = match first {
        Some(b'{') => json_error(body),
        Some(b'<') => xml_error(body),
        _ => (None, None),
    };
    let code = code
        .or_else(|| error_type_header.map(str::to_owned))
        .map(|c| clean_code(&c))
        .filter(|c| !c.is_empty());
    (code, message.filter(|m| !m.is_empty()))
}

fn json_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(v)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let text = |k: &str| v.get(k).and_then(|t| t.as_str()).map(str::to_owned);
    (text("__type").or_else(|| text("code")), text("message").or_else(|| text("Message")))
}

fn xml_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(root) = std::str::from_utf8(body).map_err(|_| ()).and_then(|t| Element::parse(t).map_err(|_| ()))
    else {
        return (None, None);
    };
    let text = |name: &str| root.find(name).map(|e| e.text().to_owned());
    (text("Code"), text("Message"))
}

/// A code as the services spell it in `__type` or `x-amzn-ErrorType`:
/// `aws.protocoltests#FooError:http://internal…` is `FooError`.
fn clean_code(code: &str) -> String {
    let code = code.rsplit('#').next().unwrap_or(code);
    code.split(':').next().unwrap_or(code).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(header: Option<&str>, body: &str) -> (Option<String>, Option<String>) {
        parse_error_body(header, body.as_bytes())
    }

    fn some(code: &str, message: &str) -> (Option<String>, Option<String>) {
        (Some(code.to_owned()), Some(message.to_owned()))
    }

    #[test]
    fn json_bodies_give_type_and_message() {
        assert_eq!(
            parsed(
                None,
                r#"{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#
            ),
            some("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
        );
        // A namespace before `#` and a URL after `:` are not part of the code; `Message`
        // is spelt with a capital by some services.
        assert_eq!(
            parsed(
                None,
                r#"{"__type":"com.amazonaws.ssm#ParameterNotFound:http://internal.amazon.com/","Message":"gone"}"#
            ),
            some("ParameterNotFound", "gone")
        );
        assert_eq!(
            parsed(None, r#"{"__type":"ThrottlingException"}"#),
            (Some("ThrottlingException".into()), None)
        );
        // The header names the code when the body does not.
        assert_eq!(
            parsed(Some("AccessDeniedException:http://internal.amazon.com/"), r#"{"message":"no"}"#),
            some("AccessDeniedException", "no")
        );
        assert_eq!(parsed(None, r#"{"unexpected":1}"#), (None, None));
        assert_eq!(parsed(None, "{not json"), (None, None));
    }

    #[test]
    fn xml_bodies_give_code_and_message() {
        let query = r#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>AccessDenied</Code>
    <Message>User: arn:aws:iam::123456789012:user/x is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/a&amp;b</Message>
  </Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>"#;
        assert_eq!(
            parsed(None, query),
            some(
                "AccessDenied",
                "User: arn:aws:iam::123456789012:user/x is not authorized to perform: sts:AssumeRole on resource: \
                 arn:aws:iam::123456789012:role/a&b"
            )
        );
        let s3 = "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>\
                  <Key>missing.env</Key></Error>";
        assert_eq!(parsed(None, s3), some("NoSuchKey", "The specified key does not exist."));
        assert_eq!(parsed(None, "<Error><Code>SlowDown</Code></Error>"), (Some("SlowDown".into()), None));
        assert_eq!(parsed(None, "<html><body>Bad gateway</body></html>"), (None, None));
        assert_eq!(parsed(None, "<Error><Code>Unclosed"), (None, None));
        assert_eq!(parsed(None, ""), (None, None));
    }

    #[test]
    fn service_errors_read_code_and_message_else_the_status() {
        let e = |status, code: Option<&str>, message: Option<&str>| AwsError::Service {
            service: Service::Ssm,
            status,
            code: code.map(str::to_owned),
            message: message.map(str::to_owned),
        };
        assert_eq!(e(400, Some("ValidationException"), Some("bad")).to_string(), "ValidationException: bad");
        assert_eq!(e(404, Some("NoSuchKey"), None).to_string(), "NoSuchKey");
        assert_eq!(e(502, None, None).to_string(), "HTTP 502 Bad Gateway");
        assert!(e(502, None, None).is_transient());
        assert!(e(400, Some("ThrottlingException"), None).is_transient());
        assert!(e(400, Some("TooManyRequestsException"), None).is_transient());
        assert!(!e(400, Some("ResourceNotFoundException"), None).is_transient());
        assert_eq!(e(400, Some("X"), None).code(), Some("X"));
    }
}
