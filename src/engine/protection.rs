//! Task scale-in protection: set by UpdateTaskProtection or by a task itself through the agent
//! API, kept durably apart from the task records (which only supervisors write), and read by
//! the service scheduler, which never stops a protected task for scale-in or a deployment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::{Engine, EngineError};
use crate::endpoints::protection::{ProtectionOutcome, ProtectionSource};
use crate::model::task::{TaskProtection, TaskRecord, TaskStatus};
use crate::store::records::{TASK_PROTECTION, task_key};

/// Why ECS does not protect a task: the `reason` of its `failures[]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectionFailure {
    /// No such task.
    Missing,
    /// Not a running task of a service (standalone tasks cannot be protected).
    NotValid,
}

impl ProtectionFailure {
    pub fn reason(self) -> &'static str {
        match self {
            ProtectionFailure::Missing => "MISSING",
            ProtectionFailure::NotValid => "TASK_NOT_VALID",
        }
    }
}

/// The protections, cached from the store.
#[derive(Debug, Default)]
pub(crate) struct Protections {
    by_task: Mutex<HashMap<String, TaskProtection>>,
}

impl Protections {
    pub(crate) fn load(entries: impl IntoIterator<Item = (String, TaskProtection)>) -> Protections {
        Protections { by_task: Mutex::new(entries.into_iter().collect()) }
    }

    fn get(&self, key: &str) -> Option<TaskProtection> {
        self.by_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied()
    }

    pub(crate) fn forget(&self, key: &str) {
        self.by_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }

    fn set(&self, key: String, p: TaskProtection) {
        self.by_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, p);
    }
}

/// One task's answer: its record and protection, or why it has none.
pub type ProtectionResult = Result<(Arc<TaskRecord>, TaskProtection), (String, ProtectionFailure)>;

impl Engine {
    /// Task `id`'s protection now (expired protection is off).
    pub fn protection(&self, cluster: &str, id: &str) -> TaskProtection {
        let stored = self.protections.get(&task_key(cluster, id));
        stored.unwrap_or(TaskProtection { enabled: false, expires_at: None }).at(self.now())
    }

    /// The protection of each task of `ids` (in `cluster`), or why it cannot have one.
    pub fn get_protection(&self, cluster: &str, ids: &[String]) -> Vec<ProtectionResult> {
        ids.iter()
            .map(|id| {
                let task = self.protectable(cluster, id)?;
                let p = self.protection(cluster, &task.id);
                Ok((task, p))
            })
            .collect()
    }

    /// Turns protection on (for `minutes`, ECS's default when `None`) or off for each task of
    /// `ids`; the valid ones are written durably first, then the scheduler is told.
    pub async fn set_protection(
        &self,
        cluster: &str,
        ids: &[String],
        enabled: bool,
        minutes: Option<i64>,
    ) -> Result<Vec<ProtectionResult>, EngineError> {
        let now = self.now();
        let p = TaskProtection::set(enabled, minutes, now);
        let results: Vec<ProtectionResult> =
            ids.iter().map(|id| self.protectable(cluster, id).map(|t| (t, p))).collect();
        let keys: Vec<String> = results.iter().flatten().map(|(t, _)| task_key(cluster, &t.id)).collect();
        if keys.is_empty() {
            return Ok(results);
        }
        let write = keys.clone();
        self.store
            .write_async(move |w| {
                for k in &write {
                    w.put(TASK_PROTECTION, k, &p)?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .await?;
        for k in keys {
            self.protections.set(k, p);
        }
        for (task, _) in results.iter().flatten() {
            self.view.touch(Arc::clone(task));
        }
        Ok(results)
    }

    /// The task `id`, when it is a task of a service that is still meant to run.
    fn protectable(&self, cluster: &str, id: &str) -> Result<Arc<TaskRecord>, (String, ProtectionFailure)> {
        let Some(task) = self.task(cluster, id) else {
            return Err((id.to_owned(), ProtectionFailure::Missing));
        };
        let running = task.desired == TaskStatus::Running && task.last < TaskStatus::Deactivating;
        if !task.group.starts_with("service:") || !running {
            return Err((task.arn.clone(), ProtectionFailure::NotValid));
        }
        Ok(task)
    }
}

/// The agent API's task protection, served by the engine (held weakly: the endpoints are
/// the engine's).
pub(crate) struct ForEndpoints(pub(crate) Weak<Engine>);

#[async_trait::async_trait]
impl ProtectionSource for ForEndpoints {
    async fn protection(&self, rec: &TaskRecord, update: Option<(bool, Option<i64>)>) -> ProtectionOutcome {
        let Some(engine) = self.0.upgrade() else {
            return ProtectionOutcome::Error {
                code: "ServerException",
                message: "ecsd is shutting down".into(),
                status: 503,
            };
        };
        let ids = [rec.id.clone()];
        let results = match update {
            None => engine.get_protection(&rec.cluster, &ids),
            Some((enabled, minutes)) => {
                if let Some(m) = minutes.filter(|m| !(1..=TaskProtection::MAX_MINUTES).contains(m)) {
                    return ProtectionOutcome::Error {
                        code: "InvalidParameterException",
                        message: expires_message(m),
                        status: 400,
                    };
                }
                match engine.set_protection(&rec.cluster, &ids, enabled, minutes).await {
                    Ok(r) => r,
                    Err(e) => {
                        return ProtectionOutcome::Error {
                            code: "ServerException",
                            message: crate::error_chain(&e),
                            status: 500,
                        };
                    }
                }
            }
        };
        match results.into_iter().next() {
            Some(Ok((_, p))) => ProtectionOutcome::Protection(p),
            Some(Err((_, failure))) => ProtectionOutcome::Failure { reason: failure.reason() },
            None => ProtectionOutcome::Failure { reason: ProtectionFailure::Missing.reason() },
        }
    }
}

/// The message for an `expiresInMinutes` out of range.
pub fn expires_message(minutes: i64) -> String {
    format!("expiresInMinutes must be between 1 and 2880 (48 hours); it is {minutes}.")
}
