//! The namespaced connection to containerd and how its failures are classified.
//!
//! One lazily connected tonic channel: it is created without containerd being up, and
//! reconnects by itself when containerd comes back, so a lost containerd turns calls into
//! [`RuntimeError::Unavailable`] and nothing else. Every namespaced call carries the
//! `containerd-namespace` header; calls that create GC-collectable objects carry a
//! `containerd-lease` header so containerd's GC cannot remove them before something references
//! them. A failed call is classified by its gRPC code alone, never by its message.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::logs;
use crate::runtime::{Backend, RuntimeError};

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
const GC_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// Upper bound of an ordinary unary call; containerd answers in milliseconds when healthy.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a gRPC call was doing, for classifying its failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    pub operation: &'static str,
    pub what: &'static str,
    pub id: &'a str,
}

pub(crate) fn at<'a>(operation: &'static str, what: &'static str, id: &'a str) -> At<'a> {
    At { operation, what, id }
}

/// The kind of a failed call, decided by the gRPC code alone (never by message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusKind {
    Unavailable,
    NotFound,
    AlreadyExists,
    DeadlineExceeded,
    Cancelled,
    Invalid,
    WrongState,
    PermissionDenied,
    Exhausted,
    Conflict,
    Unsupported,
    Internal,
}

pub(crate) fn classify(status: &Status) -> StatusKind {
    match status.code() {
        Code::Unavailable => StatusKind::Unavailable,
        // A status with a source was made by the client's transport (the connection broke
        // mid-call), not sent by containerd.
        Code::Unknown | Code::Cancelled if std::error::Error::source(status).is_some() => {
            StatusKind::Unavailable
        }
        Code::NotFound => StatusKind::NotFound,
        Code::AlreadyExists => StatusKind::AlreadyExists,
        Code::DeadlineExceeded => StatusKind::DeadlineExceeded,
        Code::Cancelled => StatusKind::Cancelled,
        Code::InvalidArgument | Code::OutOfRange => StatusKind::Invalid,
        Code::FailedPrecondition => StatusKind::WrongState,
        Code::PermissionDenied | Code::Unauthenticated => StatusKind::PermissionDenied,
        Code::ResourceExhausted => StatusKind::Exhausted,
        Code::Aborted => StatusKind::Conflict,
        Code::Unimplemented => StatusKind::Unsupported,
        // Ok never arrives as an error; were it to, it is containerd misbehaving.
        Code::Unknown | Code::Internal | Code::DataLoss | Code::Ok => StatusKind::Internal,
    }
}

/// A namespaced connection to containerd, shared by the runtime, the importer and the unpacker.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    channel: Channel,
    namespace: String,
    namespace_header: MetadataValue<Ascii>,
    address: String,
}

impl Conn {
    /// A lazily connected channel: nothing is dialled until the first call. Must be called
    /// inside a tokio runtime.
    pub(crate) fn new(address: &Path, namespace: &str) -> Result<Conn, RuntimeError> {
        let display = address.display().to_string();
        let namespace_header = MetadataValue::try_from(namespace).map_err(|_| RuntimeError::InvalidName {
            what: "containerd namespace",
            value: namespace.to_owned(),
        })?;
        let bad_path =
            || RuntimeError::InvalidName { what: "containerd socket path", value: display.clone() };
        let path = address.to_str().ok_or_else(bad_path)?;
        let endpoint = Endpoint::from_shared(format!("unix://{path}"))
            .map_err(|_| bad_path())?
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(Conn {
            channel: endpoint.connect_lazy(),
            namespace: namespace.to_owned(),
            namespace_header,
            address: display,
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `msg` as a request in the runtime's namespace.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(NAMESPACE_HEADER, self.namespace_header.clone());
        req
    }

    /// `msg` as a request in the runtime's namespace under lease `lease`.
    pub(crate) fn leased<T>(&self, msg: T, lease: &str) -> Result<Request<T>, RuntimeError> {
        let value = MetadataValue::try_from(lease)
            .map_err(|_| RuntimeError::InvalidName { what: "lease id", value: lease.to_owned() })?;
        let mut req = self.request(msg);
        req.metadata_mut().insert(LEASE_HEADER, value);
        Ok(req)
    }

    /// The error for a failed call made `at`.
    pub(crate) fn error(&self, status: Status, at: At<'_>) -> RuntimeError {
        let message = status.message().to_owned();
        let (operation, what, id) = (at.operation, at.what, at.id.to_owned());
        match classify(&status) {
            StatusKind::Unavailable => RuntimeError::Unavailable {
                runtime: Backend::Containerd,
                address: self.address.clone(),
                message,
            },
            StatusKind::NotFound => RuntimeError::NotFound { what, id },
            StatusKind::AlreadyExists => RuntimeError::AlreadyExists { what, id },
            StatusKind::DeadlineExceeded => RuntimeError::Timeout { operation, after: CALL_TIMEOUT },
            StatusKind::Cancelled => RuntimeError::Cancelled { operation },
            StatusKind::Invalid => {
                RuntimeError::Invalid { runtime: Backend::Containerd, operation, what, id, message }
            }
            StatusKind::WrongState => RuntimeError::WrongState { operation, what, id, message },
            StatusKind::PermissionDenied => {
                RuntimeError::PermissionDenied { runtime: Backend::Containerd, operation, what, id, message }
            }
            StatusKind::Exhausted => {
                RuntimeError::Exhausted { runtime: Backend::Containerd, operation, what, id, message }
            }
            StatusKind::Conflict => RuntimeError::Conflict { operation, what, id, message },
            StatusKind::Unsupported => {
                RuntimeError::Unsupported { runtime: Backend::Containerd, operation, message }
            }
            StatusKind::Internal => RuntimeError::Internal { operation, what, id, message },
        }
    }

    /// Awaits a unary call with a deadline; the raw status on failure, for callers that treat
    /// some codes (NotFound, AlreadyExists) as success.
    pub(crate) async fn raw<T>(
        &self,
        at: At<'_>,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, RuntimeError> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(resp)) => Ok(Ok(resp.into_inner())),
            Ok(Err(status)) => Ok(Err(status)),
            Err(_) => Err(RuntimeError::Timeout { operation: at.operation, after: timeout }),
        }
    }

    /// Awaits a unary call with the default deadline and classifies its failure.
    pub(crate) async fn call<T>(
        &self,
        at: At<'_>,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, RuntimeError> {
        self.raw(at, CALL_TIMEOUT, call).await?.map_err(|s| self.error(s, at))
    }

    /// Like [`Conn::call`], with NotFound as `None`.
    pub(crate) async fn call_opt<T>(
        &self,
        at: At<'_>,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Option<T>, RuntimeError> {
        match self.raw(at, CALL_TIMEOUT, call).await? {
            Ok(v) => Ok(Some(v)),
            Err(s) if classify(&s) == StatusKind::NotFound => Ok(None),
            Err(s) => Err(self.error(s, at)),
        }
    }

    pub(crate) fn containers(&self) -> api::containers_client::ContainersClient<Channel> {
        api::containers_client::ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> api::tasks_client::TasksClient<Channel> {
        api::tasks_client::TasksClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> api::leases_client::LeasesClient<Channel> {
        api::leases_client::LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> api::images_client::ImagesClient<Channel> {
        api::images_client::ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn diff(&self) -> api::diff_client::DiffClient<Channel> {
        api::diff_client::DiffClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> api::events_client::EventsClient<Channel> {
        api::events_client::EventsClient::new(self.channel.clone())
    }
    pub(crate) fn version(&self) -> api::version_client::VersionClient<Channel> {
        api::version_client::VersionClient::new(self.channel.clone())
    }
    pub(crate) fn namespaces(&self) -> api::namespaces_client::NamespacesClient<Channel> {
        api::namespaces_client::NamespacesClient::new(self.channel.clone())
    }

    /// containerd's version string; the cheapest way to ask whether it answers.
    pub(crate) async fn server_version(&self) -> Result<String, RuntimeError> {
        let at = at("ask containerd its version", "containerd", &self.address);
        let resp = self.call(at, self.version().version(Request::new(()))).await?;
        Ok(resp.version)
    }

    /// Creates lease `id` that expires after `ttl`; an existing lease is reused.
    pub(crate) async fn create_lease(&self, id: &str, ttl: Duration) -> Result<(), RuntimeError> {
        let expire = logs::format_rfc3339(SystemTime::now() + ttl, false);
        let req = api::CreateRequest {
            id: id.to_owned(),
            labels: HashMap::from([(GC_EXPIRE_LABEL.into(), expire)]),
        };
        let at = at("create lease", "lease", id);
        match self.raw(at, CALL_TIMEOUT, self.leases().create(self.request(req))).await? {
            Ok(_) => Ok(()),
            Err(s) if classify(&s) == StatusKind::AlreadyExists => Ok(()),
            Err(s) => Err(self.error(s, at)),
        }
    }

    /// Deletes lease `id`; a missing lease is not an error.
    pub(crate) async fn delete_lease(&self, id: &str) -> Result<(), RuntimeError> {
        let req = api::DeleteRequest { id: id.to_owned(), sync: false };
        self.call_opt(at("delete lease", "lease", id), self.leases().delete(self.request(req)))
            .await
            .map(|_| ())
    }
}

/// Seconds since the epoch of a protobuf timestamp (0 when absent).
pub(crate) fn epoch_seconds(ts: Option<&prost_types::Timestamp>) -> f64 {
    ts.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9).unwrap_or(0.0)
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, next: min }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_classified_without_reading_messages() {
        let cases = [
            (Status::unavailable("x"), StatusKind::Unavailable),
            (Status::not_found("x"), StatusKind::NotFound),
            (Status::already_exists("x"), StatusKind::AlreadyExists),
            (Status::deadline_exceeded("x"), StatusKind::DeadlineExceeded),
            (Status::cancelled("x"), StatusKind::Cancelled),
            (Status::invalid_argument("x"), StatusKind::Invalid),
            (Status::out_of_range("x"), StatusKind::Invalid),
            (Status::failed_precondition("namespace is required"), StatusKind::WrongState),
            (Status::permission_denied("x"), StatusKind::PermissionDenied),
            (Status::unauthenticated("x"), StatusKind::PermissionDenied),
            (Status::resource_exhausted("x"), StatusKind::Exhausted),
            (Status::aborted("x"), StatusKind::Conflict),
            (Status::unimplemented("x"), StatusKind::Unsupported),
            (Status::internal("x"), StatusKind::Internal),
            (Status::data_loss("x"), StatusKind::Internal),
            // A message that names another kind changes nothing.
            (Status::unknown("not found: transport error, already exists"), StatusKind::Internal),
        ];
        for (status, kind) in cases {
            assert_eq!(classify(&status), kind, "{status:?}");
        }
        // containerd's own Unknown errors are failures; only a transport-made one means "gone".
        let transport = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert_eq!(transport.code(), Code::Unknown);
        assert_eq!(classify(&transport), StatusKind::Unavailable);
    }

    fn conn() -> Conn {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { Conn::new(Path::new("/nonexistent/containerd.sock"), "ecs").unwrap() })
    }

    #[test]
    fn errors_name_the_object() {
        let conn = conn();
        let e = conn.error(Status::not_found("no such"), at("start task", "task", "abc"));
        assert!(matches!(&e, RuntimeError::NotFound { what: "task", id } if id == "abc"), "{e:?}");
        assert_eq!(e.to_string(), "task abc does not exist");
        let e = conn.error(Status::already_exists("x"), at("create container", "container", "abc"));
        assert_eq!(e.to_string(), "container abc already exists; remove it first");
        let e = conn.error(Status::unavailable("refused"), at("start task", "task", "abc"));
        assert_eq!(e.to_string(), "containerd is unreachable at /nonexistent/containerd.sock: refused");
        let e = conn.error(Status::failed_precondition("bad state"), at("delete task", "task", "abc"));
        assert!(matches!(e, RuntimeError::WrongState { operation: "delete task", .. }), "{e:?}");
        assert_eq!(e.to_string(), "delete task failed: task abc is not in a state that allows it: bad state");
        let e = conn.error(Status::invalid_argument("bad spec"), at("create task", "container", "abc"));
        assert_eq!(
            e.to_string(),
            "create task failed: containerd rejected the request for container abc: bad spec"
        );
        let e = conn.error(Status::unknown("OCI runtime exec failed"), at("start exec", "exec", "e1"));
        assert!(matches!(e, RuntimeError::Internal { operation: "start exec", .. }), "{e:?}");
    }

    #[test]
    fn names_that_cannot_be_headers_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            match Conn::new(Path::new("/run/c.sock"), "bad\nnamespace") {
                Err(RuntimeError::InvalidName { what: "containerd namespace", value }) => {
                    assert_eq!(value, "bad\nnamespace")
                }
                other => panic!("want InvalidName, got {other:?}"),
            }
            let conn = Conn::new(Path::new("/run/c.sock"), "ecs").unwrap();
            assert!(matches!(
                conn.leased((), "lease\n1"),
                Err(RuntimeError::InvalidName { what: "lease id", .. })
            ));
            assert!(conn.leased((), "ecsd-c1").is_ok());
        });
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
