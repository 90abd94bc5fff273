//! What a task reaches at 169.254.170.2: its metadata (v3, v4, stats) and its role's
//! credentials, served in-process by one listener per task namespace, so a request belongs
//! to the task whose socket it arrived on; plus the secrets and environment files resolved
//! for its containers at start.

pub mod credentials;
pub mod introspection;
pub mod metadata;
pub mod protection;
pub mod secrets;
pub mod server;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::model::arn::Identity;
use crate::model::network::NetworkMode;
use crate::model::task::TaskRecord;
use credentials::{CredentialError, CredentialStore};
use metadata::MetadataContext;
use secrets::SecretError;
pub use server::TaskSource;
use server::{RateLimit, TaskState};
use stats::StatsSampler;

/// Where tasks find their endpoints.
pub const ENDPOINT_HOST: &str = "169.254.170.2";

/// The variables ECS sets from the definition's `secrets` and `environmentFiles`.
#[derive(Default, Clone)]
pub struct ResolvedEnv {
    /// From `environmentFiles`, in file order (the definition's `environment` wins over them).
    pub files: Vec<(String, String)>,
    /// From `secrets`.
    pub secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for ResolvedEnv {
    /// Names only: values are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("ResolvedEnv")
            .field("files", &names(&self.files))
            .field("secrets", &names(&self.secrets))
            .finish()
    }
}

/// How the endpoints are set up.
#[derive(Debug)]
pub struct EndpointConfig {
    /// Whether listeners are opened at all (tests on a fake network have no namespaces).
    pub listen: bool,
    pub identity: Identity,
    pub availability_zone: String,
    pub network: Arc<crate::network::Settings>,
    pub credentials: CredentialStore,
    /// AWS access for secrets and environment files.
    pub aws: crate::aws::Aws,
    pub rate: RateLimit,
    /// Where cgroups are mounted, for stats.
    pub cgroup_root: PathBuf,
    /// Where host-network tasks find their endpoints (they have no namespace of their own):
    /// the agent's 127.0.0.1:51679, or a free port when that is taken.
    pub host_listen: SocketAddr,
}

/// One open task.
struct Open {
    token: CancellationToken,
    credentials_id: Option<String>,
    /// The ids it answers to on the host listener (host mode).
    host_ids: Vec<String>,
}

/// The endpoints of every task: listeners, credentials, secret resolution.
pub struct Endpoints {
    cfg: EndpointConfig,
    open: Mutex<HashMap<String, Open>>,
    /// The host listener's address once bound, and the tasks it serves by id.
    host: tokio::sync::OnceCell<SocketAddr>,
    host_tasks: Arc<Mutex<HashMap<String, Arc<TaskState>>>>,
    shutdown: CancellationToken,
    /// Where the agent API's task protection is kept: the engine, set once it exists.
    protection: std::sync::OnceLock<Arc<dyn protection::ProtectionSource>>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").field("listen", &self.cfg.listen).field("host", &self.host.get()).finish()
    }
}

/// Why a task's endpoints could not open: the task fails to start with this reason.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("ResourceInitializationError: unable to get the task role's credentials: {0}")]
    Credentials(CredentialError),
    #[error("ResourceInitializationError: cannot open the metadata endpoint in {netns}: {source}")]
    Listen { netns: String, source: std::io::Error },
    #[error("ResourceInitializationError: cannot open the metadata endpoint on the host: {0}")]
    HostListen(std::io::Error),
}

/// Why a task's secrets or environment files could not be read: the task fails to start
/// with this reason.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: {0}"
    )]
    ExecutionRole(CredentialError),
    #[error("{0}")]
    Secret(SecretError),
}

impl Endpoints {
    pub fn new(cfg: EndpointConfig) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            cfg,
            open: Mutex::new(HashMap::new()),
            host: tokio::sync::OnceCell::new(),
            host_tasks: Arc::new(Mutex::new(HashMap::new())),
            shutdown: CancellationToken::new(),
            protection: std::sync::OnceLock::new(),
        })
    }

    fn host_mode(rec: &TaskRecord) -> bool {
        rec.network_mode() == NetworkMode::Host
    }

    /// The variables the agent injects into a container: the metadata and agent URIs (with
    /// the container's endpoint id), the credentials URI when the task has a role, the
    /// execution environment and the region (which the definition's own setting wins over).
    /// Host-network tasks reach the host listener on loopback instead of 169.254.170.2.
    pub fn env(&self, rec: &TaskRecord, container: &str) -> Vec<(String, String)> {
        let host_mode = Self::host_mode(rec);
        let base = match (host_mode, self.host.get()) {
            (true, Some(addr)) => format!("http://{addr}"),
            _ => format!("http://{ENDPOINT_HOST}"),
        };
        let mut env = vec![];
        if let Some(id) =
            rec.containers.iter().find(|c| c.name == container).and_then(|c| c.endpoint_id.as_deref())
        {
            env.push(("ECS_CONTAINER_METADATA_URI".to_owned(), format!("{base}/v3/{id}")));
            env.push(("ECS_CONTAINER_METADATA_URI_V4".to_owned(), format!("{base}/v4/{id}")));
            env.push(("ECS_AGENT_URI".to_owned(), format!("{base}/api/{id}")));
        }
        if let Some(id) = &rec.credentials_id {
            if host_mode {
                // SDKs take a full URI on loopback; the relative one always means 169.254.170.2.
                env.push((
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_owned(),
                    format!("{base}/v2/credentials/{id}"),
                ));
            } else {
                env.push((
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".to_owned(),
                    format!("/v2/credentials/{id}"),
                ));
            }
        }
        env.push(("AWS_EXECUTION_ENV".to_owned(), "AWS_ECS_EC2".to_owned()));
        env.push(("AWS_REGION".to_owned(), self.cfg.identity.region.clone()));
        env.push(("AWS_DEFAULT_REGION".to_owned(), self.cfg.identity.region.clone()));
        env
    }

    async fn role_arn(&self, role: &str) -> Result<String, CredentialError> {
        resolve_role(&self.cfg.aws, &self.cfg.identity.account, role).await
    }

    fn metadata_context(&self) -> MetadataContext {
        MetadataContext {
            availability_zone: self.cfg.availability_zone.clone(),
            availability_zone_id: None,
            vpc_id: None,
            network: Arc::clone(&self.cfg.network),
        }
    }

    fn task_state(&self, rec: &TaskRecord, source: Arc<dyn TaskSource>) -> Arc<TaskState> {
        let state = TaskState::new(
            &rec.id,
            source,
            Arc::new(self.cfg.credentials.clone()),
            self.metadata_context(),
            StatsSampler::new(&self.cfg.cgroup_root, Path::new("/proc")),
            self.cfg.rate,
        );
        Arc::new(match self.protection.get() {
            Some(p) => state.with_protection(Arc::clone(p)),
            None => state,
        })
    }

    /// Serves the agent API's task protection from `source` (once; later calls are ignored).
    pub fn set_protection(&self, source: Arc<dyn protection::ProtectionSource>) {
        let _ = self.protection.set(source);
    }

    /// Opens the task's listeners (one per namespace of the task; host-network tasks are
    /// served on the host listener by id) and starts serving its role's credentials.
    /// Opening an open task again replaces its listeners. The listeners read the live task
    /// from `source`.
    pub async fn open(&self, rec: &TaskRecord, source: Arc<dyn TaskSource>) -> Result<(), OpenError> {
        self.close(&rec.id).await;
        if let (Some(id), Some(role)) = (&rec.credentials_id, rec.task_role_arn()) {
            let role = self.role_arn(role).await.map_err(OpenError::Credentials)?;
            self.cfg.credentials.issue(id, &rec.id, &role).await.map_err(OpenError::Credentials)?;
        }
        let token = self.shutdown.child_token();
        let mut open =
            Open { token: token.clone(), credentials_id: rec.credentials_id.clone(), host_ids: vec![] };
        if !self.cfg.listen {
            self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(rec.id.clone(), open);
            return Ok(());
        }
        let state = self.task_state(rec, source);
        if Self::host_mode(rec) {
            self.host_listener().await.map_err(OpenError::HostListen)?;
            let mut ids: Vec<String> = rec.containers.iter().filter_map(|c| c.endpoint_id.clone()).collect();
            ids.extend(rec.credentials_id.clone());
            let mut tasks = self.host_tasks.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                tasks.insert(id.clone(), Arc::clone(&state));
            }
            open.host_ids = ids;
        } else {
            let mut namespaces: Vec<String> = rec.netns.iter().cloned().collect();
            namespaces.extend(rec.containers.iter().filter_map(|c| c.netns.clone()));
            namespaces.sort();
            namespaces.dedup();
            let addr = SocketAddr::from(([169, 254, 170, 2], crate::network::ENDPOINTS_PORT));
            for ns in namespaces {
                let path = PathBuf::from(&ns);
                let listener = tokio::task::spawn_blocking(move || server::listen_in_netns(&path, addr))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                let listener = match listener {
                    Ok(l) => l,
                    Err(source) => {
                        token.cancel();
                        return Err(OpenError::Listen { netns: ns, source });
                    }
                };
                let router = server::router(Arc::clone(&state));
                let child = token.child_token();
                tokio::spawn(async move {
                    if let Err(e) = server::serve(listener, router, child).await {
                        warn!(error = %e, "a task's metadata listener failed");
                    }
                });
            }
        }
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(rec.id.clone(), open);
        Ok(())
    }

    /// Binds the host listener once: `host_listen`, or any free loopback port when taken.
    async fn host_listener(&self) -> std::io::Result<SocketAddr> {
        self.host
            .get_or_try_init(|| async {
                let listener = match tokio::net::TcpListener::bind(self.cfg.host_listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        let fallback = SocketAddr::new(self.cfg.host_listen.ip(), 0);
                        warn!(addr = %self.cfg.host_listen, error = %e, "host metadata address taken; using a free port");
                        tokio::net::TcpListener::bind(fallback).await?
                    }
                };
                let addr = listener.local_addr()?;
                let tasks = Arc::clone(&self.host_tasks);
                let nobody = Arc::new(TaskState::new(
                    "",
                    Arc::new(|| None::<Arc<TaskRecord>>),
                    Arc::new(NoCredentials),
                    self.metadata_context(),
                    StatsSampler::new(&self.cfg.cgroup_root, Path::new("/proc")),
                    self.cfg.rate,
                ));
                let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                    let tasks = Arc::clone(&tasks);
                    let nobody = Arc::clone(&nobody);
                    async move { host_dispatch(&tasks, nobody, req).await }
                });
                let token = self.shutdown.clone();
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
                    if let Err(e) = serve.await {
                        warn!(error = %e, "the host metadata listener failed");
                    }
                });
                info!(%addr, "metadata endpoint for host-network tasks");
                Ok(addr)
            })
            .await
            .copied()
    }

    /// Closes the task's listeners and revokes its credentials.
    pub async fn close(&self, task_id: &str) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(task_id);
        if let Some(open) = open {
            open.token.cancel();
            if let Some(id) = &open.credentials_id {
                self.cfg.credentials.revoke(id);
            }
            let mut tasks = self.host_tasks.lock().unwrap_or_else(|e| e.into_inner());
            for id in &open.host_ids {
                tasks.remove(id);
            }
        }
    }

    /// The AWS access the endpoints use (for image pulls from ECR and Secrets Manager too).
    pub fn aws(&self) -> &crate::aws::Aws {
        &self.cfg.aws
    }

    /// The keys of task `rec`'s execution role (ecsd's own without one; the static keys
    /// offline), as secrets are read with them: for ECR logins and `repositoryCredentials`.
    pub async fn execution_keys(&self, rec: &TaskRecord) -> Result<crate::aws::Keys, CredentialError> {
        let role = match rec.execution_role_arn() {
            Some(r) => Some(self.role_arn(r).await?),
            None => None,
        };
        Ok(self.cfg.credentials.for_execution(&rec.id, role.as_deref()).await?.keys())
    }

    /// Closes every listener (daemon shutdown).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves the `environmentFiles` and `secrets` of every container of the task, with
    /// the execution role's credentials (fetched once, only when needed).
    pub async fn resolve(&self, rec: &TaskRecord) -> Result<HashMap<String, ResolvedEnv>, ResolveError> {
        let needs_keys = rec.containers_effective.iter().any(|d| {
            d.secrets.as_ref().is_some_and(|s| !s.is_empty())
                || d.environment_files
                    .iter()
                    .flatten()
                    .any(|f| f.value.as_deref().is_some_and(|v| v.starts_with("arn:")))
        });
        let keys = if needs_keys {
            let role = match rec.execution_role_arn() {
                Some(r) => Some(self.role_arn(r).await.map_err(ResolveError::ExecutionRole)?),
                None => None,
            };
            Some(
                self.cfg
                    .credentials
                    .for_execution(&rec.id, role.as_deref())
                    .await
                    .map_err(ResolveError::ExecutionRole)?,
            )
        } else {
            None
        };
        let region = &self.cfg.identity.region;
        let mut out = HashMap::new();
        for def in &rec.containers_effective {
            let mut env = ResolvedEnv::default();
            if let Some(files) = def.environment_files.as_deref().filter(|f| !f.is_empty()) {
                env.files = secrets::read_env_files(&self.cfg.aws, keys.as_ref(), region, files)
                    .await
                    .map_err(ResolveError::Secret)?;
            }
            if let (Some(list), Some(keys)) = (def.secrets.as_deref().filter(|s| !s.is_empty()), &keys) {
                env.secrets = secrets::resolve(&self.cfg.aws, keys, region, list)
                    .await
                    .map_err(ResolveError::Secret)?;
            }
            out.insert(def.name.clone().unwrap_or_default(), env);
        }
        Ok(out)
    }
}

/// Serves a host-listener request with the task whose id is in the path.
async fn host_dispatch(
    tasks: &Mutex<HashMap<String, Arc<TaskState>>>,
    nobody: Arc<TaskState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use tower::ServiceExt;
    let path = req.uri().path().to_owned();
    let query_id =
        req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("id="))).map(str::to_owned);
    let mut parts = path.trim_start_matches('/').split('/');
    let id = match (parts.next(), parts.next(), parts.next()) {
        (Some("v2"), Some("credentials"), Some(id)) => Some(id.to_owned()),
        (Some("v1"), Some("credentials"), _) => query_id,
        (Some("v3" | "v4" | "api"), Some(id), _) => Some(id.to_owned()),
        _ => None,
    };
    let state = id.and_then(|id| tasks.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned());
    // The task's own router answers, with its rate limit and the agent's errors; an id no
    // task has gets what a listener says for an id that is not its task's.
    let state = state.unwrap_or_else(|| Arc::clone(&nobody));
    match server::router(state).oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Knows no credentials: the host listener's answer for ids of no task.
struct NoCredentials;

impl server::CredentialsSource for NoCredentials {
    fn lookup(&self, _id: &str) -> credentials::Lookup {
        credentials::Lookup::Unknown
    }
}

/// A role as STS wants it. With an IAM endpoint configured (`IAM_ENDPOINT`,
/// `AWS_ENDPOINT_URL_IAM`), the role is looked up there by name with GetRole, which checks
/// that it exists and gives its real ARN (its path included); otherwise [`role_arn`] makes
/// the ARN without asking.
pub(crate) async fn resolve_role(
    aws: &crate::aws::Aws,
    account: &str,
    role: &str,
) -> Result<String, CredentialError> {
    if aws.settings().endpoints.get(crate::aws::Service::Iam).is_none() {
        return Ok(role_arn(account, role));
    }
    let name = role.rsplit('/').next().unwrap_or(role);
    let client = aws.own_client().await.map_err(|error| CredentialError::DaemonCredentials { error })?;
    client
        .get_role_arn(name)
        .await
        .map_err(|error| CredentialError::RoleLookup { role: role.to_owned(), error })
}

/// A role as STS wants it: ECS takes a role's short name too (`app-role`), meaning the
/// account's role of that name.
fn role_arn(account: &str, role: &str) -> String {
    if role.starts_with("arn:") {
        role.to_owned()
    } else {
        format!("arn:aws:iam::{account}:role/{}", role.trim_start_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_role_names_are_the_accounts_roles() {
        assert_eq!(super::role_arn("123456789012", "app"), "arn:aws:iam::123456789012:role/app");
        let full = "arn:aws:iam::000000000000:role/path/app";
        assert_eq!(super::role_arn("123456789012", full), full);
    }

    /// With an IAM endpoint (moto), names and ARNs resolve to the role's real ARN, path
    /// included, and a role IAM does not have is an error naming it.
    #[tokio::test]
    async fn roles_are_looked_up_with_get_role_when_iam_is_configured() {
        use super::credentials::test_support::{Moto, aws_at};
        use super::{CredentialError, resolve_role};
        let moto = Moto::start().await;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let params = [
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", "app"),
            ("Path", "/svc/"),
            ("AssumeRolePolicyDocument", policy),
        ];
        moto.query("iam", &params).await;
        let aws = aws_at(&moto.endpoint);
        let real = "arn:aws:iam::123456789012:role/svc/app";
        for given in ["app", "arn:aws:iam::123456789012:role/app", real] {
            assert_eq!(resolve_role(&aws, "000000000000", given).await.unwrap(), real, "{given}");
        }
        let e = resolve_role(&aws, "000000000000", "ghost").await.unwrap_err();
        assert!(matches!(e, CredentialError::RoleLookup { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("role ghost cannot be resolved with IAM GetRole: NoSuchEntity"),
            "{e}"
        );
        // Without an IAM endpoint nothing is asked: the account's role of that name.
        let offline = crate::aws::Aws::new(crate::aws::Settings::new("us-east-1"));
        assert_eq!(
            resolve_role(&offline, "000000000000", "ghost").await.unwrap(),
            "arn:aws:iam::000000000000:role/ghost"
        );
    }
}
