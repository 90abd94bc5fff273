//! How the runtime fails, by kind.
//!
//! Failures of containerd calls are classified from the gRPC code alone (see
//! `containerd::connection::classify`), those of Podman calls from the HTTP status alone; the
//! server's message travels along as text to show, never as something to decide on. Variants that
//! talk about the runtime itself carry which one ([`Backend`]), so the text names the runtime in
//! use. Local failures (files, FIFOs, encoding) carry their cause as a typed source.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which runtime a [`RuntimeError`] comes from, for its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Containerd,
    Podman,
    /// The in-memory runtime of the tests (`runtime::fake`).
    Fake,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Containerd => "containerd",
            Backend::Podman => "Podman",
            Backend::Fake => "the fake runtime",
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime cannot be reached (no socket, refused, or gone mid-call).
    #[error("{runtime} is unreachable at {address}: {message}")]
    Unavailable { runtime: Backend, address: String, message: String },
    /// The image is not present in the runtime: `store` is containerd's namespace, or the
    /// Podman service's image store.
    #[error("image {reference} is not present in {}", image_store(*.runtime, .store))]
    ImageNotFound { reference: String, runtime: Backend, store: String },
    /// The pull from the registry failed (see the registry error for the cause).
    #[error("{error}")]
    Pull { reference: String, error: Box<super::registry::RegistryError> },
    /// The image cannot be removed while containers use it.
    #[error("image {reference} is in use by container(s) {}; stop the tasks that use it first", .containers.join(", "))]
    ImageInUse { reference: String, containers: Vec<String> },
    #[error("image reference '{reference}' is not valid: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The image is present but cannot be run as it is.
    #[error("image {image} cannot be used: {defect}")]
    BadImage { image: String, defect: ImageDefect },
    /// The object the call names does not exist.
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    /// The object the call would create exists already.
    #[error("{what} {id} already exists; remove it first")]
    AlreadyExists { what: &'static str, id: String },
    /// The container cannot be removed while its process runs.
    #[error("container {id} is still running; stop it first")]
    StillRunning { id: String },
    /// The runtime refused the request itself (containerd: InvalidArgument, OutOfRange;
    /// Podman: 400, 422), or ecsd refused to send what the runtime cannot express.
    #[error("{operation} failed: {runtime} rejected the request for {what} {id}: {message}")]
    Invalid { runtime: Backend, operation: &'static str, what: &'static str, id: String, message: String },
    /// The object is not in a state that allows the call (FailedPrecondition).
    #[error("{operation} failed: {what} {id} is not in a state that allows it: {message}")]
    WrongState { operation: &'static str, what: &'static str, id: String, message: String },
    /// PermissionDenied or Unauthenticated (Podman: 401, 403).
    #[error("{operation} failed: {runtime} denied access to {what} {id}: {message}")]
    PermissionDenied {
        runtime: Backend,
        operation: &'static str,
        what: &'static str,
        id: String,
        message: String,
    },
    /// ResourceExhausted.
    #[error("{operation} failed: {runtime} ran out of resources for {what} {id}: {message}")]
    Exhausted { runtime: Backend, operation: &'static str, what: &'static str, id: String, message: String },
    /// Aborted: someone else changed the object at the same time; retrying may succeed.
    #[error("{operation} failed: {what} {id} was changed concurrently: {message}")]
    Conflict { operation: &'static str, what: &'static str, id: String, message: String },
    /// Unimplemented: this runtime does not offer the call (an older version).
    #[error("{operation} is not supported by this {runtime}: {message}")]
    Unsupported { runtime: Backend, operation: &'static str, message: String },
    /// The runtime (or the OCI runtime below it) failed while carrying out a valid request:
    /// Unknown, Internal or DataLoss. A process that cannot be executed lands here.
    #[error("{operation} failed for {what} {id}: {message}")]
    Internal { operation: &'static str, what: &'static str, id: String, message: String },
    /// The call was cancelled before it completed.
    #[error("{operation} was cancelled")]
    Cancelled { operation: &'static str },
    #[error("{operation} timed out after {after:?}")]
    Timeout { operation: &'static str, after: Duration },
    /// A streaming call ended before it said what it had to.
    #[error("{operation} failed: {runtime} ended the stream early")]
    StreamEnded { runtime: Backend, operation: &'static str },
    /// A local file, directory or FIFO the runtime needs.
    #[error("cannot {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A spec could not be encoded for the runtime.
    #[error("the {what} of {id} cannot be encoded")]
    Encode {
        what: &'static str,
        id: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A name the runtime was given cannot be sent to it.
    #[error("{value:?} is not a valid {what}")]
    InvalidName { what: &'static str, value: String },
    #[error("{signal} is not a signal number")]
    InvalidSignal { signal: i32 },
    /// Several independent steps of one teardown failed; every failure is kept.
    #[error("{operation} {id} failed: {}", join(.errors))]
    Several { operation: &'static str, id: String, errors: Vec<RuntimeError> },
}

/// What is wrong with an image that is present.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageDefect {
    #[error("content {digest} is missing from containerd; import or pull the image again")]
    MissingContent { digest: String },
    #[error("content {digest} is larger than {limit} bytes")]
    TooLarge { digest: String, limit: usize },
    #[error("content {digest} is not a valid image document: {reason}")]
    Malformed { digest: String, reason: String },
    #[error("it has no manifest for linux/{arch} (it has: {offered})")]
    NoPlatform { arch: &'static str, offered: String },
    #[error("it is inconsistent: {layers} layers but {diff_ids} diff ids in its config")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("layer {layer} unpacked to {unpacked}, but its config says {expected}")]
    DiffIdMismatch { layer: String, unpacked: String, expected: String },
}

impl RuntimeError {
    /// A failed pull of `reference`.
    pub fn pull(reference: &str, error: super::registry::RegistryError) -> Self {
        RuntimeError::Pull { reference: reference.to_owned(), error: Box::new(error) }
    }

    /// A local I/O failure on `path`.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io { operation, path: path.into(), source: Arc::new(source) }
    }

    /// Whether the runtime could not be reached (for one of several steps, too): the call may
    /// succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RuntimeError::Unavailable { .. } => true,
            RuntimeError::Several { errors, .. } => errors.iter().any(RuntimeError::is_unavailable),
            _ => false,
        }
    }
}

/// Where [`RuntimeError::ImageNotFound`] looked.
fn image_store(runtime: Backend, store: &str) -> String {
    match runtime {
        Backend::Containerd => format!("containerd namespace {store}"),
        Backend::Podman => format!("the image store of the Podman service at {store}"),
        Backend::Fake => format!("the fake runtime's images ({store})"),
    }
}

fn join(errors: &[RuntimeError]) -> String {
    errors.iter().map(|e| crate::error_chain(e)).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_cause_as_source() {
        let e = RuntimeError::io(
            "create the FIFO",
            "/run/x/stdout",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.to_string(), "cannot create the FIFO /run/x/stdout");
        assert_eq!(crate::error_chain(&e), "cannot create the FIFO /run/x/stdout: permission denied");
    }

    #[test]
    fn several_errors_are_all_shown() {
        let e = RuntimeError::Several {
            operation: "remove container",
            id: "c1".into(),
            errors: vec![
                RuntimeError::NotFound { what: "lease", id: "ecsd-c1".into() },
                RuntimeError::Timeout { operation: "remove snapshot", after: Duration::from_secs(60) },
            ],
        };
        assert_eq!(
            e.to_string(),
            "remove container c1 failed: lease ecsd-c1 does not exist; remove snapshot timed out after 60s"
        );
        assert!(!e.is_unavailable());
        let gone = RuntimeError::Unavailable {
            runtime: Backend::Containerd,
            address: "/run/c.sock".into(),
            message: "refused".into(),
        };
        let e = RuntimeError::Several {
            operation: "remove container",
            id: "c1".into(),
            errors: vec![RuntimeError::StillRunning { id: "c1".into() }, gone],
        };
        assert!(e.is_unavailable());
    }

    #[test]
    fn image_defects_say_what_to_do() {
        let e = RuntimeError::BadImage {
            image: "docker.io/library/busybox:latest".into(),
            defect: ImageDefect::MissingContent { digest: "sha256:ab".into() },
        };
        assert_eq!(
            e.to_string(),
            "image docker.io/library/busybox:latest cannot be used: content sha256:ab is missing from \
             containerd; import or pull the image again"
        );
    }
}
