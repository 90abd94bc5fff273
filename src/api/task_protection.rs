//! UpdateTaskProtection and GetTaskProtection: the protection the engine keeps for tasks of
//! services, with ECS's `protectedTasks` / `failures` answers.

use std::sync::Arc;

use super::{ApiError, Ctx, cluster_name, clusters};
use crate::engine::protection::{ProtectionFailure, ProtectionResult, expires_message};
use crate::model::shapes::{
    Failure, GetTaskProtectionRequest, GetTaskProtectionResponse, ProtectedTask, UpdateTaskProtectionRequest,
    UpdateTaskProtectionResponse,
};
use crate::model::task::{TaskProtection, TaskStatus};

/// UpdateTaskProtection names at most this many tasks; GetTaskProtection 100.
const MAX_UPDATE: usize = 10;
const MAX_GET: usize = 100;

async fn active_cluster(ctx: &Arc<Ctx>, reference: Option<&str>) -> Result<String, ApiError> {
    let cluster = cluster_name(ctx, reference)?;
    if !clusters::is_active(ctx, &cluster).await? {
        return Err(ApiError::cluster_not_found());
    }
    Ok(cluster)
}

fn check_count(refs: &[String], max: usize) -> Result<(), ApiError> {
    if refs.is_empty() || refs.len() > max {
        return Err(ApiError::invalid_parameter(format!(
            "tasks must name 1 to {max} tasks; it names {}",
            refs.len()
        )));
    }
    Ok(())
}

/// Task ids of `refs`; a reference to no task of this cluster keeps its text (it is MISSING).
fn ids(ctx: &Ctx, cluster: &str, refs: &[String]) -> Vec<String> {
    refs.iter().map(|r| super::tasks::task_id(ctx, cluster, r).unwrap_or_else(|| r.clone())).collect()
}

fn answer(
    ctx: &Ctx,
    cluster: &str,
    refs: &[String],
    results: Vec<ProtectionResult>,
) -> (Vec<ProtectedTask>, Vec<Failure>) {
    let mut protected = vec![];
    let mut failures = vec![];
    for (reference, result) in refs.iter().zip(results) {
        match result {
            Ok((task, p)) => protected.push(ProtectedTask {
                task_arn: Some(task.arn.clone()),
                protection_enabled: p.enabled,
                expiration_date: p.expires_at,
            }),
            Err((arn, failure)) => {
                let arn = match failure {
                    ProtectionFailure::Missing if reference.starts_with("arn:") => reference.clone(),
                    ProtectionFailure::Missing => ctx.identity.task_arn(cluster, reference),
                    ProtectionFailure::NotValid => arn,
                };
                failures.push(Failure {
                    arn: Some(arn),
                    reason: Some(failure.reason().into()),
                    detail: None,
                });
            }
        }
    }
    (protected, failures)
}

pub async fn update(
    ctx: &Arc<Ctx>,
    req: UpdateTaskProtectionRequest,
) -> Result<UpdateTaskProtectionResponse, ApiError> {
    let refs = req.tasks.unwrap_or_default();
    check_count(&refs, MAX_UPDATE)?;
    let minutes = req.expires_in_minutes.map(i64::from);
    if let Some(m) = minutes.filter(|m| !(1..=TaskProtection::MAX_MINUTES).contains(m)) {
        return Err(ApiError::invalid_parameter(expires_message(m)));
    }
    let cluster = active_cluster(ctx, req.cluster.as_deref()).await?;
    let ids = ids(ctx, &cluster, &refs);
    let results = ctx.engine.set_protection(&cluster, &ids, req.protection_enabled, minutes).await?;
    let (protected, failures) = answer(ctx, &cluster, &refs, results);
    Ok(UpdateTaskProtectionResponse { protected_tasks: Some(protected), failures: Some(failures) })
}

/// Without `tasks`, every running task of a service in the cluster.
pub async fn get(
    ctx: &Arc<Ctx>,
    req: GetTaskProtectionRequest,
) -> Result<GetTaskProtectionResponse, ApiError> {
    let cluster = active_cluster(ctx, req.cluster.as_deref()).await?;
    let refs = match req.tasks {
        Some(refs) => {
            check_count(&refs, MAX_GET)?;
            refs
        }
        None => ctx
            .engine
            .tasks(&cluster, None)
            .iter()
            .filter(|t| t.group.starts_with("service:") && t.last != TaskStatus::Stopped)
            .map(|t| t.id.clone())
            .collect(),
    };
    let ids = ids(ctx, &cluster, &refs);
    let results = ctx.engine.get_protection(&cluster, &ids);
    let (protected, failures) = answer(ctx, &cluster, &refs, results);
    Ok(GetTaskProtectionResponse { protected_tasks: Some(protected), failures: Some(failures) })
}
