//! Role credentials for tasks: the task role's keys that containers fetch from
//! `/v2/credentials/{id}`, and the execution role's keys that ecsd itself uses to read
//! secrets and environment files.
//!
//! In ECS the backend assumes the roles and pushes the keys to the agent. ecsd has no
//! backend, so this module calls STS `AssumeRole` itself with the daemon's own AWS
//! credentials (RoleSessionName = the task id, as ECS does). It re-assumes before the keys
//! expire and stores the new keys under the same id, so an SDK in a container never holds
//! expired keys. Without an STS endpoint, and unless `ECSD_CREDENTIALS=sts` is set, it runs
//! OFFLINE and hands out static keys whose Expiration it moves forward before it passes.
//!
//! The settings come from `config` ([`CredentialSettings`] and the daemon's
//! [`aws::Settings`](crate::aws::Settings)):
//!
//! | variable | meaning |
//! |---|---|
//! | `AWS_ENDPOINT_URL_STS`, else `STS_ENDPOINT` | STS endpoint; setting one selects STS mode |
//! | `ECSD_CREDENTIALS` | `sts` or `static`: force a mode |
//! | `ECS_ENDPOINT_AWS_ACCESS_KEY_ID`, `ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY` (+ optional `ECS_ENDPOINT_AWS_SESSION_TOKEN`) | the daemon's keys for calling STS |
//! | `ECS_ENDPOINT_AWS_PROFILE` | else: a profile from `~/.aws/config` and `~/.aws/credentials` |
//! | (neither) | else: the standard chain (`AWS_ACCESS_KEY_ID`…, `AWS_PROFILE`, web identity, container, IMDS) |
//! | `AWS_REGION`, else `AWS_DEFAULT_REGION` | region for signing, default `us-east-1` |
//! | `ECSD_STATIC_ACCESS_KEY_ID`, `ECSD_STATIC_SECRET_ACCESS_KEY`, `ECSD_STATIC_SESSION_TOKEN` | keys handed out in static mode; default: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` if both keys are set, else the `ecsd-offline-placeholder-*` values |
//!
//! `AWS_ENDPOINT_URL` (for every service) is deliberately not read: users point it at ecsd
//! itself to drive the ECS API with the aws CLI, and ecsd must not send STS calls there.
//!
//! The STS calls and ecsd's own keys are [`crate::aws`]'s; which role, for which task,
//! when to refresh and what a container is served are this module's.
//!
//! This module must not write a secret key, a session token or a credentials id to a log
//! line or an error message: the id is the bearer token a container presents.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use serde::Serialize;
use tokio::task::AbortHandle;

use crate::aws::{Aws, AwsError, Keys};

/// AssumeRole's DurationSeconds. ECS's backend issues 6-hour keys, but a caller of
/// AssumeRole is capped by the role's MaxSessionDuration (1 hour unless raised) and by
/// role chaining (always 1 hour), so one hour is the value that works for every role.
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(3600);

/// Lifetime of the keys handed out in static mode: ECS's default for task role keys.
const STATIC_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// Static keys get a new Expiration once less than this is left.
const STATIC_RENEW_WITHIN: Duration = Duration::from_secs(3600);

/// SDKs refresh container credentials some minutes before Expiration (botocore starts at
/// 15 minutes and insists at 10), so the keys served must always have more than that
/// left: assumed keys are replaced when 20 minutes remain.
const REFRESH_MARGIN: Duration = Duration::from_secs(20 * 60);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

pub const PLACEHOLDER_ACCESS_KEY_ID: &str = "ecsd-offline-placeholder-access-key-id";
pub const PLACEHOLDER_SECRET_ACCESS_KEY: &str = "ecsd-offline-placeholder-secret-access-key";
pub const PLACEHOLDER_SESSION_TOKEN: &str = "ecsd-offline-placeholder-session-token";

/// Keys as a container receives them. Serializes exactly as the agent's
/// `IAMRoleCredentials` (field names and order); `Debug` hides the secret and the token.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Credentials {
    pub role_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    /// ISO-8601 UTC, whole seconds: `2024-05-01T16:00:00Z`.
    pub expiration: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("role_arn", &self.role_arn)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("token", &"** redacted **")
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl Credentials {
    /// The same keys to sign AWS requests with (an empty token is no token).
    pub fn keys(&self) -> Keys {
        Keys::new(&self.access_key_id, &self.secret_access_key, Some(&self.token))
    }
}

/// What `/v2/credentials/{id}` answers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Credentials),
    /// The id is issued but its first AssumeRole is in flight or failed and is being
    /// retried, or a failing refresh let the keys expire (ECS: 503 CredentialsUninitialized).
    Uninitialized,
    /// Never issued, or revoked (ECS: 400 InvalidIdInRequest).
    Unknown,
}

/// Why a role's keys are not available. The AWS error is part of the text (these texts
/// end up in stopped reasons), so it is not also exposed as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("unable to assume role {role_arn}: {error}")]
    AssumeRole { role_arn: String, error: AwsError },
    #[error(
        "ecsd's own AWS credentials are unavailable ({error}); set ECS_ENDPOINT_AWS_ACCESS_KEY_ID and \
         ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY, ECS_ENDPOINT_AWS_PROFILE, or the standard AWS_* variables"
    )]
    DaemonCredentials { error: AwsError },
    /// With an IAM endpoint configured, roles are looked up there first (GetRole).
    #[error("role {role} cannot be resolved with IAM GetRole: {error}")]
    RoleLookup { role: String, error: AwsError },
    #[error(
        "task id {task_id:?} cannot be a role session name: it must be 2 to 64 letters, digits or +=,.@_-"
    )]
    SessionName { task_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialMode {
    /// AssumeRole against STS (a configured endpoint, or real AWS).
    Sts,
    /// Offline: every role gets the static keys.
    Static,
}

/// The keys static mode hands out when none are configured: they let SDKs in a container
/// start, and fail at AWS.
pub fn placeholder_keys() -> Keys {
    Keys::new(PLACEHOLDER_ACCESS_KEY_ID, PLACEHOLDER_SECRET_ACCESS_KEY, Some(PLACEHOLDER_SESSION_TOKEN))
}

/// How roles get their keys; `config` resolves it. The default is offline with the
/// placeholder keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSettings {
    pub mode: CredentialMode,
    /// Handed out in static mode.
    pub static_keys: Keys,
    /// AssumeRole's DurationSeconds.
    pub session_duration: Duration,
}

impl Default for CredentialSettings {
    fn default() -> CredentialSettings {
        CredentialSettings {
            mode: CredentialMode::Static,
            static_keys: placeholder_keys(),
            session_duration: DEFAULT_SESSION_DURATION,
        }
    }
}

/// Issues, refreshes and revokes role credentials by credentials id. Cheap to clone.
#[derive(Clone)]
pub struct CredentialStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("mode", &self.inner.settings.mode)
            .field("ids", &self.inner.entries().len())
            .finish()
    }
}

struct Inner {
    settings: CredentialSettings,
    /// STS, and ecsd's own keys to call it with.
    aws: Aws,
    entries: Mutex<HashMap<String, Entry>>,
    generations: AtomicU64,
}

struct Entry {
    /// Distinguishes this issue of the id from an earlier, revoked or replaced one, so a
    /// late refresh never resurrects it.
    generation: u64,
    keys: Option<Issued>,
    refresher: Option<AbortHandle>,
}

#[derive(Clone)]
struct Issued {
    credentials: Credentials,
    expires_at: SystemTime,
}

impl CredentialStore {
    pub fn new(settings: CredentialSettings, aws: Aws) -> CredentialStore {
        CredentialStore {
            inner: Arc::new(Inner {
                settings,
                aws,
                entries: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
            }),
        }
    }

    pub fn mode(&self) -> CredentialMode {
        self.inner.settings.mode
    }

    /// Assumes `role_arn` for task `task_id` now and serves the keys under `id` until
    /// [`revoke`](Self::revoke), re-assuming before they expire. Issuing an id again
    /// replaces it. When STS fails the id stays issued, answers `Uninitialized`, and
    /// AssumeRole is retried in the background (backoff up to a minute) until it succeeds
    /// or `revoke` gives up; an invalid task id is refused without issuing anything.
    pub async fn issue(&self, id: &str, task_id: &str, role_arn: &str) -> Result<(), CredentialError> {
        let session = session_name(task_id)?;
        let generation = self.inner.register(id);
        if self.inner.settings.mode == CredentialMode::Static {
            self.inner.store(id, generation, self.inner.static_issue(role_arn));
            return Ok(());
        }
        let first = self.inner.assume(role_arn, session).await;
        let (wait, result) = match first {
            Ok(issued) => {
                let wait = refresh_after(&issued);
                tracing::info!(task_id, role_arn, expiration = %issued.credentials.expiration, "assumed task role");
                self.inner.store(id, generation, issued);
                (wait, Ok(()))
            }
            Err(e) => {
                tracing::warn!(task_id, role_arn, error = %e, "assuming task role failed; retrying");
                (RETRY_FIRST, Err(e))
            }
        };
        let refresher = tokio::spawn(refresh_loop(
            Arc::downgrade(&self.inner),
            id.to_owned(),
            generation,
            task_id.to_owned(),
            role_arn.to_owned(),
            wait,
        ));
        self.inner.set_refresher(id, generation, refresher.abort_handle());
        result
    }

    pub fn lookup(&self, id: &str) -> Lookup {
        let mut entries = self.inner.entries();
        let Some(entry) = entries.get_mut(id) else {
            return Lookup::Unknown;
        };
        let Some(issued) = &mut entry.keys else {
            return Lookup::Uninitialized;
        };
        let now = SystemTime::now();
        let left = issued.expires_at.duration_since(now).unwrap_or(Duration::ZERO);
        if self.inner.settings.mode == CredentialMode::Static && left < STATIC_RENEW_WITHIN {
            *issued = self.inner.static_issue(&issued.credentials.role_arn);
        } else if left.is_zero() {
            return Lookup::Uninitialized;
        }
        Lookup::Found(issued.credentials.clone())
    }

    /// Stops refreshing `id` and forgets it; afterwards it is `Unknown`.
    pub fn revoke(&self, id: &str) {
        if let Some(entry) = self.inner.entries().remove(id)
            && let Some(refresher) = entry.refresher
        {
            refresher.abort();
        }
    }

    /// Keys for reading task `task_id`'s secrets and environment files: the execution role
    /// assumed now, or without a role the daemon's own keys; static keys in static mode.
    /// Not stored: issue an id as well if a container must fetch them.
    pub async fn for_execution(
        &self,
        task_id: &str,
        role_arn: Option<&str>,
    ) -> Result<Credentials, CredentialError> {
        if self.inner.settings.mode == CredentialMode::Static {
            return Ok(self.inner.static_issue(role_arn.unwrap_or_default()).credentials);
        }
        match role_arn {
            Some(role_arn) => Ok(self.inner.assume(role_arn, session_name(task_id)?).await?.credentials),
            None => self.inner.daemon_credentials().await,
        }
    }
}

impl Inner {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every critical section is a plain map update, so a poisoned map is still whole.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters `id` with no keys yet, replacing (and stopping) any earlier issue of it.
    fn register(&self, id: &str) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let old = self.entries().insert(id.to_owned(), Entry { generation, keys: None, refresher: None });
        if let Some(refresher) = old.and_then(|e| e.refresher) {
            refresher.abort();
        }
        generation
    }

    /// Whether `id` is still the issue `generation`.
    fn current(&self, id: &str, generation: u64) -> bool {
        self.entries().get(id).is_some_and(|e| e.generation == generation)
    }

    fn store(&self, id: &str, generation: u64, issued: Issued) {
        if let Some(entry) = self.entries().get_mut(id).filter(|e| e.generation == generation) {
            entry.keys = Some(issued);
        }
    }

    fn set_refresher(&self, id: &str, generation: u64, refresher: AbortHandle) {
        match self.entries().get_mut(id).filter(|e| e.generation == generation) {
            Some(entry) => entry.refresher = Some(refresher),
            // Revoked or re-issued while the first AssumeRole was in flight.
            None => refresher.abort(),
        }
    }

    fn static_issue(&self, role_arn: &str) -> Issued {
        let keys = &self.settings.static_keys;
        let expires_at = SystemTime::now() + STATIC_LIFETIME;
        Issued {
            credentials: Credentials {
                role_arn: role_arn.to_owned(),
                access_key_id: keys.access_key_id.clone(),
                secret_access_key: keys.secret_access_key.clone(),
                token: keys.session_token.clone().unwrap_or_default(),
                expiration: iso8601(expires_at),
            },
            expires_at,
        }
    }

    async fn assume(&self, role_arn: &str, session: &str) -> Result<Issued, CredentialError> {
        let client =
            self.aws.own_client().await.map_err(|error| CredentialError::DaemonCredentials { error })?;
        let assumed = client
            .assume_role(role_arn, session, self.settings.session_duration)
            .await
            .map_err(|error| CredentialError::AssumeRole { role_arn: role_arn.to_owned(), error })?;
        Ok(Issued {
            credentials: Credentials {
                role_arn: role_arn.to_owned(),
                access_key_id: assumed.keys.access_key_id,
                secret_access_key: assumed.keys.secret_access_key,
                token: assumed.keys.session_token.unwrap_or_default(),
                expiration: iso8601(assumed.expiration),
            },
            expires_at: assumed.expiration,
        })
    }

    async fn daemon_credentials(&self) -> Result<Credentials, CredentialError> {
        let own = self.aws.own_keys().await.map_err(|error| CredentialError::DaemonCredentials { error })?;
        let expires_at = own.expires.unwrap_or_else(|| SystemTime::now() + STATIC_LIFETIME);
        Ok(Credentials {
            role_arn: String::new(),
            access_key_id: own.keys.access_key_id,
            secret_access_key: own.keys.secret_access_key,
            token: own.keys.session_token.unwrap_or_default(),
            expiration: iso8601(expires_at),
        })
    }
}

/// Re-assumes the role for one issue of an id until it is revoked or replaced: at the
/// refresh point of the current keys, or, after a failure, with backoff.
async fn refresh_loop(
    inner: Weak<Inner>,
    id: String,
    generation: u64,
    task_id: String,
    role_arn: String,
    mut wait: Duration,
) {
    let mut backoff = RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        if !inner.current(&id, generation) {
            return;
        }
        let Ok(session) = session_name(&task_id) else { return };
        match inner.assume(&role_arn, session).await {
            Ok(issued) => {
                wait = refresh_after(&issued);
                backoff = RETRY_FIRST;
                tracing::debug!(task_id, role_arn, expiration = %issued.credentials.expiration, "refreshed task role credentials");
                inner.store(&id, generation, issued);
            }
            Err(e) => {
                tracing::warn!(task_id, role_arn, error = %e, retry_in = ?backoff, "assuming task role failed");
                wait = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// When to replace keys: with [`REFRESH_MARGIN`] left, or at half their lifetime when they
/// live less than twice that.
fn refresh_after(issued: &Issued) -> Duration {
    let lifetime = issued.expires_at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
    if lifetime >= REFRESH_MARGIN * 2 { lifetime - REFRESH_MARGIN } else { lifetime / 2 }
}

/// RoleSessionName as ECS sets it: the task id, which must match `[\w+=,.@-]{2,64}`.
fn session_name(task_id: &str) -> Result<&str, CredentialError> {
    let valid = (2..=64).contains(&task_id.len())
        && task_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    if valid { Ok(task_id) } else { Err(CredentialError::SessionName { task_id: task_id.to_owned() }) }
}

/// `2024-05-01T16:00:00Z`: whole seconds, as ECS's Expiration.
fn iso8601(t: SystemTime) -> String {
    DateTime::from_secs(DateTime::from(t).secs()).fmt(Format::DateTime).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A moto server on a free loopback port for the duration of one test, and the AWS
    //! access that talks to it.

    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::aws::Aws;

    #[derive(Debug)]
    pub(crate) struct Moto {
        child: Child,
        pub(crate) endpoint: String,
    }

    impl Moto {
        pub(crate) async fn start() -> Moto {
            let binary = std::env::var_os("ECSD_MOTO_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
            assert!(
                binary.exists(),
                "moto_server not found at {}: run hack/setup (or set ECSD_MOTO_SERVER)",
                binary.display()
            );
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if client.get(format!("{}/moto-api/", moto.endpoint)).send().await.is_ok() {
                    return moto;
                }
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not answer on {} within 30 s",
                    moto.endpoint
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// Sends a query-protocol action unsigned (moto does not check signatures; the
        /// Authorization header only tells it which service is meant).
        pub(crate) async fn query(&self, service: &str, params: &[(&str, &str)]) -> String {
            let body: String = params
                .iter()
                .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let resp = reqwest::Client::new()
                .post(format!("{}/", self.endpoint))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", fake_authorization(service))
                .body(body)
                .send()
                .await
                .expect("moto answers");
            let status = resp.status();
            let text = resp.text().await.expect("moto body");
            assert!(status.is_success(), "{service} {params:?}: {status} {text}");
            text
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            // Child::kill signals this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) fn fake_authorization(service: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/us-east-1/{service}/aws4_request, \
             SignedHeaders=host, Signature=00"
        )
    }

    /// Every service at `moto`, in us-east-1, with ecsd's own keys set to moto's default
    /// account's example keys.
    pub(crate) fn moto_aws(moto: &Moto) -> Aws {
        aws_at(&moto.endpoint)
    }

    /// Every service at `endpoint`.
    pub(crate) fn aws_at(endpoint: &str) -> Aws {
        let mut settings = crate::aws::Settings::new("us-east-1");
        for service in crate::aws::Service::ALL {
            settings.endpoints.set(service, endpoint);
        }
        settings.own_identity = crate::aws::OwnIdentity::Keys(crate::aws::Keys::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
        ));
        Aws::new(settings)
    }

    fn urlencode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Moto, aws_at, moto_aws};
    use super::*;

    fn sts_mode() -> CredentialSettings {
        CredentialSettings { mode: CredentialMode::Sts, ..CredentialSettings::default() }
    }

    async fn create_role(moto: &Moto, name: &str) -> String {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let xml = moto
            .query(
                "iam",
                &[
                    ("Action", "CreateRole"),
                    ("Version", "2010-05-08"),
                    ("RoleName", name),
                    ("AssumeRolePolicyDocument", policy),
                ],
            )
            .await;
        let start = xml.find("<Arn>").expect("CreateRole returns an Arn") + "<Arn>".len();
        xml[start..start + xml[start..].find("</Arn>").unwrap()].to_owned()
    }

    /// Who STS says `creds` belong to.
    async fn caller_arn(moto: &Moto, creds: &Credentials) -> String {
        moto_aws(moto).client(creds.keys()).get_caller_identity().await.unwrap().arn
    }

    async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[test]
    fn credentials_serialize_as_the_agent_and_debug_hides_secrets() {
        let c = Credentials {
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            token: "very-token".into(),
            expiration: "2024-05-01T16:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"RoleArn":"arn:aws:iam::111122223333:role/r","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"very-secret","Token":"very-token","Expiration":"2024-05-01T16:00:00Z"}"#
        );
        let debug = format!("{c:?} {:?}", placeholder_keys());
        assert!(!debug.contains("very-") && !debug.contains(PLACEHOLDER_SECRET_ACCESS_KEY), "{debug}");
        assert!(debug.contains("ASIAEXAMPLE"), "{debug}");
        assert!(!format!("{:?}", Lookup::Found(c)).contains("very-"));
    }

    #[test]
    fn session_names_follow_sts_rules() {
        assert_eq!(
            session_name("0123456789abcdef0123456789abcdef").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(session_name("a.b@c-d_e+f=g,h").unwrap(), "a.b@c-d_e+f=g,h");
        for bad in ["", "x", "has space", "slash/id", &"a".repeat(65)] {
            let e = session_name(bad).unwrap_err().to_string();
            assert!(e.contains("cannot be a role session name"), "{e}");
        }
    }

    #[test]
    fn expiration_is_whole_seconds_utc() {
        assert_eq!(
            iso8601(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_714_579_200_999_000_000)),
            "2024-05-01T16:00:00Z"
        );
    }

    #[tokio::test]
    async fn offline_mode_hands_out_static_keys() {
        let store = CredentialStore::new(CredentialSettings::default(), aws_at("http://127.0.0.1:9"));
        let role = "arn:aws:iam::000000000000:role/app";
        store.issue("cred-1", "task1", role).await.unwrap();
        let Lookup::Found(c) = store.lookup("cred-1") else { panic!("issued") };
        assert_eq!(
            (c.role_arn.as_str(), c.access_key_id.as_str(), c.secret_access_key.as_str(), c.token.as_str()),
            (role, PLACEHOLDER_ACCESS_KEY_ID, PLACEHOLDER_SECRET_ACCESS_KEY, PLACEHOLDER_SESSION_TOKEN)
        );
        let expires =
            SystemTime::try_from(DateTime::from_str(&c.expiration, Format::DateTime).unwrap()).unwrap();
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(5 * 3600) && left <= STATIC_LIFETIME, "{left:?}");
        assert_eq!(store.lookup("other"), Lookup::Unknown);

        // Close to expiry, the keys get a new Expiration instead of lapsing.
        store.inner.entries().get_mut("cred-1").unwrap().keys.as_mut().unwrap().expires_at =
            SystemTime::now() + Duration::from_secs(60);
        let Lookup::Found(renewed) = store.lookup("cred-1") else { panic!("still issued") };
        assert!(renewed.expiration >= c.expiration, "{} < {}", renewed.expiration, c.expiration);

        store.revoke("cred-1");
        assert_eq!(store.lookup("cred-1"), Lookup::Unknown);

        let exec = store.for_execution("task1", None).await.unwrap();
        assert_eq!((exec.role_arn.as_str(), exec.access_key_id.as_str()), ("", PLACEHOLDER_ACCESS_KEY_ID));
        let exec = store.for_execution("task1", Some(role)).await.unwrap();
        assert_eq!(exec.role_arn, role);
    }

    #[tokio::test]
    async fn issue_assumes_the_role_with_the_task_id_as_session_name() {
        let moto = Moto::start().await;
        let role = create_role(&moto, "app-task-role").await;
        let store = CredentialStore::new(sts_mode(), moto_aws(&moto));
        let task_id = "5f0c8d1e2a3b4c5d6e7f8091a2b3c4d5";

        store.issue("cred-a", task_id, &role).await.unwrap();
        let Lookup::Found(c) = store.lookup("cred-a") else { panic!("issued") };
        assert_eq!(c.role_arn, role);
        assert_ne!(c.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert!(!c.token.is_empty());
        assert_eq!(c.expiration.len(), "2024-05-01T16:00:00Z".len(), "{}", c.expiration);

        let arn = caller_arn(&moto, &c).await;
        assert!(arn.contains(":assumed-role/app-task-role/") && arn.ends_with(task_id), "{arn}");

        assert_eq!(store.lookup("cred-b"), Lookup::Unknown);
        store.revoke("cred-a");
        assert_eq!(store.lookup("cred-a"), Lookup::Unknown);

        let exec = store.for_execution(task_id, Some(&role)).await.unwrap();
        assert!(caller_arn(&moto, &exec).await.ends_with(task_id));
        let own = store.for_execution(task_id, None).await.unwrap();
        assert_eq!((own.access_key_id.as_str(), own.role_arn.as_str()), ("AKIAIOSFODNN7EXAMPLE", ""));
    }

    #[tokio::test]
    async fn keys_are_replaced_under_the_same_id_before_they_expire() {
        let moto = Moto::start().await;
        let role = create_role(&moto, "short-lived").await;
        let settings = CredentialSettings { session_duration: Duration::from_secs(4), ..sts_mode() };
        let store = CredentialStore::new(settings, moto_aws(&moto));
        store.issue("cred-r", "task-r", &role).await.unwrap();
        let Lookup::Found(first) = store.lookup("cred-r") else { panic!("issued") };
        let second = eventually("refreshed keys", || match store.lookup("cred-r") {
            Lookup::Found(c) if c.access_key_id != first.access_key_id => Some(c),
            _ => None,
        })
        .await;
        assert!(second.expiration >= first.expiration);
        assert!(caller_arn(&moto, &second).await.ends_with("/task-r"));

        store.revoke("cred-r");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(store.lookup("cred-r"), Lookup::Unknown, "a revoked id stays revoked");
    }

    #[tokio::test]
    async fn a_failed_assume_role_leaves_the_id_uninitialized_until_revoked() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut aws = crate::aws::Settings::new("us-east-1");
        aws.endpoints.set(crate::aws::Service::Sts, &format!("http://127.0.0.1:{port}"));
        aws.own_identity =
            crate::aws::OwnIdentity::Keys(Keys::new("AKIAIOSFODNN7EXAMPLE", "very-secret", None));
        let store = CredentialStore::new(sts_mode(), Aws::new(aws));
        let role = "arn:aws:iam::123456789012:role/unreachable";
        let err = store.issue("cred-x", "task-x", role).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "unable to assume role {role}: cannot reach STS at http://127.0.0.1:{port}: "
            )),
            "{err}"
        );
        assert!(!err.contains("very-secret"), "{err}");
        assert_eq!(store.lookup("cred-x"), Lookup::Uninitialized);
        store.revoke("cred-x");
        assert_eq!(store.lookup("cred-x"), Lookup::Unknown);
    }
}
