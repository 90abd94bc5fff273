//! How talking to a registry fails, by cause. The engine turns each cause into the agent's
//! `CannotPullContainerError` text; nothing downstream reads the message strings.
//!
//! No variant holds a credential, a token or a URL with a query string (blob redirects carry
//! presigned credentials): URLs appear only as `host/v2/<repo>/manifests/<ref>`.

use std::time::Duration;

/// What went wrong while talking to a registry. Cheap to clone (the engine shares one pull
/// among many waiters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry does not know the repository or the tag (MANIFEST_UNKNOWN, NAME_UNKNOWN,
    /// or a 404 without an error body).
    #[error("failed to resolve reference \"{reference}\": {reference}: not found{}", detail(.code, .message))]
    NotFound { reference: String, code: Option<String>, message: Option<String> },
    /// A blob the manifest names is missing from the registry (BLOB_UNKNOWN).
    #[error("blob {digest} of {reference} is missing from the registry{}", detail(.code, .message))]
    BlobNotFound { reference: String, digest: String, code: Option<String>, message: Option<String> },
    /// 401: no credentials, wrong credentials, or the token server refused them.
    #[error("failed to authorize: pull access denied for {reference}: {}", unauthorized(.registry, .code, .message, *.credentials))]
    Unauthorized {
        reference: String,
        registry: String,
        /// Whether credentials were sent (wrong credentials rather than none).
        credentials: bool,
        code: Option<String>,
        message: Option<String>,
    },
    /// 403 / DENIED: the credentials are valid but not allowed to pull this repository.
    #[error("pull access denied for {reference}: denied{}", detail(.code, .message))]
    Denied { reference: String, code: Option<String>, message: Option<String> },
    /// 429 / TOOMANYREQUESTS.
    #[error("toomanyrequests: {}", .message.as_deref().unwrap_or("Too Many Requests."))]
    RateLimited { registry: String, message: Option<String> },
    /// No connection to the registry (DNS, refused, TLS handshake, reset).
    #[error("failed to do request: {what} {target}: {cause}")]
    Unreachable { what: &'static str, target: String, cause: String },
    /// A request (manifest, token) got no complete answer in time.
    #[error("failed to do request: {what} {target}: timed out after {}", go_duration(.after))]
    Timeout { what: &'static str, target: String, after: Duration },
    /// A layer download received nothing for this long.
    #[error("inactivity time exceeded timeout while pulling image")]
    Inactivity { digest: String, after: Duration },
    /// The whole pull took longer than the pull timeout.
    #[error("Could not transition to pulled; timed out after waiting {}", go_duration(.after))]
    PullTimeout { after: Duration },
    /// An index without a manifest for the platform asked for.
    #[error("no matching manifest for {platform} in the manifest list entries (it has: {offered})")]
    NoPlatform { reference: String, platform: String, offered: String },
    /// Docker's schema 1 manifests are not supported (as containerd 2 and Docker 28 refuse them).
    #[error(
        "{reference} has a Docker Image Format v1 (schema 1) manifest, which is not supported; push it \
         again with a current client to get a v2 (schema 2) or OCI manifest"
    )]
    Schema1 { reference: String },
    #[error("{reference}: unsupported manifest media type {media_type}")]
    UnsupportedMediaType { reference: String, media_type: String },
    /// What was received is not what the descriptor promised.
    #[error("{what} {digest} failed verification: {problem}")]
    Verification { what: &'static str, digest: String, problem: String },
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// Any other error answer.
    #[error("unexpected status from {what} request to {target}: {status}{}", detail(.code, .message))]
    Server { what: &'static str, target: String, status: u16, code: Option<String>, message: Option<String> },
    /// An answer that is not what the protocol says (bad JSON, a bad challenge).
    #[error("{what}: {reason}")]
    Protocol { what: String, reason: String },
    /// The HTTP client itself cannot be set up (TLS roots).
    #[error("cannot set up the registry HTTP client: {cause}")]
    Client { cause: String },
}

impl RegistryError {
    /// Whether trying the same request again may succeed (a mirror falls back to the
    /// upstream registry on any error; this is for the retries of one registry).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Timeout { .. } => true,
            RegistryError::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

fn detail(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(": {}: {m}", c.to_lowercase().replace('_', " ")),
        (Some(c), None) => format!(": {}", c.to_lowercase().replace('_', " ")),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

fn unauthorized(
    registry: &str,
    code: &Option<String>,
    message: &Option<String>,
    credentials: bool,
) -> String {
    let what = match message {
        Some(m) => m.clone(),
        None if credentials => "the registry refused the credentials".to_owned(),
        None => "authentication required".to_owned(),
    };
    let code = code.as_deref().map(str::to_lowercase).unwrap_or_else(|| "unauthorized".into());
    if credentials {
        format!("{code}: {what} (credentials for {registry} were sent and refused)")
    } else {
        format!(
            "{code}: {what} (no credentials for {registry}; repository does not exist or may require authorization)"
        )
    }
}

/// A duration as Go prints it (`2h0m0s`, `1m0s`, `30s`, `500ms`), as the agent's texts do.
pub fn go_duration(d: &Duration) -> String {
    let total = d.as_secs();
    let ms = d.subsec_millis();
    if total == 0 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let secs =
        if ms == 0 { format!("{s}s") } else { format!("{s}.{}s", format!("{ms:03}").trim_end_matches('0')) };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(&Duration::from_secs(7200)), "2h0m0s");
        assert_eq!(go_duration(&Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(&Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(&Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(&Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(go_duration(&Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn texts_name_the_cause_without_secrets() {
        let e = RegistryError::NotFound {
            reference: "127.0.0.1:5000/app:1".into(),
            code: Some("MANIFEST_UNKNOWN".into()),
            message: Some("manifest unknown".into()),
        };
        assert_eq!(
            e.to_string(),
            "failed to resolve reference \"127.0.0.1:5000/app:1\": 127.0.0.1:5000/app:1: not found: manifest \
             unknown: manifest unknown"
        );
        let e = RegistryError::Unauthorized {
            reference: "r/app:1".into(),
            registry: "r".into(),
            credentials: true,
            code: Some("UNAUTHORIZED".into()),
            message: Some("authentication required".into()),
        };
        assert_eq!(
            e.to_string(),
            "failed to authorize: pull access denied for r/app:1: unauthorized: authentication required \
             (credentials for r were sent and refused)"
        );
        assert_eq!(
            RegistryError::PullTimeout { after: Duration::from_secs(7200) }.to_string(),
            "Could not transition to pulled; timed out after waiting 2h0m0s"
        );
    }
}
