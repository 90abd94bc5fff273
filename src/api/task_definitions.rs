//! RegisterTaskDefinition, DescribeTaskDefinition, ListTaskDefinitions,
//! ListTaskDefinitionFamilies, DeregisterTaskDefinition, DeleteTaskDefinitions.

use std::ops::Bound;

use std::sync::Arc;

use super::pagination::Page;
use super::{ApiError, Ctx};
use crate::model::arn::{ArnError, TaskDefinitionRef};
use crate::model::shapes::{
    DeleteTaskDefinitionsRequest, DeleteTaskDefinitionsResponse, DeregisterTaskDefinitionRequest,
    DeregisterTaskDefinitionResponse, DescribeTaskDefinitionRequest, Failure,
    ListTaskDefinitionFamiliesRequest, ListTaskDefinitionFamiliesResponse, ListTaskDefinitionsRequest,
    ListTaskDefinitionsResponse, RegisterTaskDefinitionRequest, RegisterTaskDefinitionResponse,
    TaskDefinition,
};
use crate::model::tags;
use crate::model::task_definition::{self, Registration};
use crate::store::records::{FAMILIES, TAGS, TASK_DEFINITIONS, family_prefix, task_definition_key};
use crate::store::{Reader, Scan, StoreError, Writer, prefix_end};

pub const ACTIVE: &str = "ACTIVE";
pub const INACTIVE: &str = "INACTIVE";
pub const DELETE_IN_PROGRESS: &str = "DELETE_IN_PROGRESS";

const NOT_FOUND: &str = "Unable to describe task definition.";

pub fn register(
    ctx: &Ctx,
    req: RegisterTaskDefinitionRequest,
) -> Result<RegisterTaskDefinitionResponse, ApiError> {
    let new_tags = req.tags.clone().unwrap_or_default();
    tags::validate(&new_tags)?;
    let family = req.family.clone().unwrap_or_default();
    let registered_at = ctx.now();
    let td = ctx.store.write(|w| {
        let mut f = w.get(FAMILIES, &family)?.unwrap_or_default();
        f.last_revision += 1;
        f.active += 1;
        let reg = Registration { identity: &ctx.identity, revision: f.last_revision, registered_at };
        let td = task_definition::build(&req, &reg)?;
        w.put(TASK_DEFINITIONS, &task_definition_key(&family, f.last_revision), &td)?;
        w.put(FAMILIES, &family, &f)?;
        if !new_tags.is_empty() {
            w.put(TAGS, &ctx.identity.task_definition_arn(&family, f.last_revision), &new_tags)?;
        }
        Ok::<_, ApiError>(td)
    })?;
    Ok(RegisterTaskDefinitionResponse {
        task_definition: Some(td),
        tags: (!new_tags.is_empty()).then_some(new_tags),
    })
}

/// Resolves a user's reference; a bad reference is a ClientException as ECS answers it.
fn parse_ref(ctx: &Ctx, reference: &str) -> Result<TaskDefinitionRef, ApiError> {
    ctx.identity.task_definition_ref(reference).map_err(|e| match e {
        ArnError::Foreign(_) => ApiError::client(NOT_FOUND),
        e => ApiError::client(format!("taskDefinition: {e}")),
    })
}

/// The newest ACTIVE revision of a family.
pub(super) fn latest_active(r: &Reader<'_>, family: &str) -> Result<Option<TaskDefinition>, StoreError> {
    let prefix = family_prefix(family);
    let end = prefix_end(&prefix);
    let mut found = None;
    r.scan(
        TASK_DEFINITIONS,
        Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: true },
        |_, td: TaskDefinition| {
            if td.status.as_deref() == Some(ACTIVE) {
                found = Some(td);
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    )?;
    Ok(found)
}

/// DescribeTaskDefinition, the hottest read: the stored JSON of the revision (and of its
/// tags) goes into the answer as it is, from memory when it was read before.
pub async fn describe(ctx: &Arc<Ctx>, req: DescribeTaskDefinitionRequest) -> Result<Vec<u8>, ApiError> {
    let reference = parse_ref(ctx, req.task_definition.as_deref().unwrap_or_default())?;
    let with_tags = req.include.as_deref().unwrap_or_default().iter().any(|i| i == "TAGS");
    let revision = match reference.revision {
        Some(rev) => rev,
        None => {
            let family = reference.family.clone();
            let latest =
                super::blocking(ctx, move |ctx| Ok(ctx.store.read(|r| latest_active(r, &family))?)).await?;
            let Some(td) = latest else {
                return Err(ApiError::client(format!(
                    "{NOT_FOUND} Family '{}' has no ACTIVE revision.",
                    reference.family
                )));
            };
            td.revision
        }
    };
    let key = task_definition_key(&reference.family, revision);
    let Some(td) = super::cached(ctx, TASK_DEFINITIONS, &key).await? else {
        return Err(ApiError::client(format!("{NOT_FOUND} Revision {reference} does not exist.")));
    };
    let mut out = Vec::with_capacity(td.len() + 32);
    out.extend_from_slice(b"{\"taskDefinition\":");
    out.extend_from_slice(&td);
    if with_tags {
        let arn = ctx.identity.task_definition_arn(&reference.family, revision);
        let tags = super::cached(ctx, TAGS, &arn).await?;
        out.extend_from_slice(b",\"tags\":");
        out.extend_from_slice(tags.as_deref().unwrap_or(b"[]"));
    }
    out.push(b'}');
    Ok(out)
}

pub fn list(ctx: &Ctx, req: ListTaskDefinitionsRequest) -> Result<ListTaskDefinitionsResponse, ApiError> {
    let page = Page::new(req.max_results, req.next_token.as_deref(), 100)?;
    let status = req.status.unwrap_or_else(|| ACTIVE.to_owned());
    let reverse = req.sort.as_deref() == Some("DESC");
    let prefix = req.family_prefix.as_deref().map(family_prefix);
    let end = prefix.as_deref().map(prefix_end);
    let scan = match (&prefix, &end) {
        (Some(p), Some(e)) => Scan { from: Bound::Included(p), to: Bound::Excluded(e), reverse },
        _ => Scan { reverse, ..Scan::all() },
    };
    let (arns, next) = ctx.store.read(|r| {
        page.collect(r, TASK_DEFINITIONS, scan, |_, td: TaskDefinition| {
            (td.status.as_deref() == Some(status.as_str()))
                .then(|| td.task_definition_arn.unwrap_or_default())
        })
    })?;
    Ok(ListTaskDefinitionsResponse { task_definition_arns: Some(arns), next_token: next })
}

pub fn list_families(
    ctx: &Ctx,
    req: ListTaskDefinitionFamiliesRequest,
) -> Result<ListTaskDefinitionFamiliesResponse, ApiError> {
    let page = Page::new(req.max_results, req.next_token.as_deref(), 100)?;
    let status = req.status.unwrap_or_else(|| "ALL".to_owned());
    let prefix = req.family_prefix.unwrap_or_default();
    let end = prefix_end(&prefix);
    let scan = Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false };
    let (families, next) = ctx.store.read(|r| {
        page.collect(r, FAMILIES, scan, |name, f| {
            let keep = match status.as_str() {
                "ACTIVE" => f.active > 0,
                "INACTIVE" => f.active == 0,
                _ => true,
            };
            keep.then(|| name.to_owned())
        })
    })?;
    Ok(ListTaskDefinitionFamiliesResponse { families: Some(families), next_token: next })
}

/// Requires `family:revision` or an ARN: deregistering and deleting name one revision.
fn revision_ref(ctx: &Ctx, reference: &str) -> Result<(String, i32), ApiError> {
    let r = parse_ref(ctx, reference)?;
    match r.revision {
        Some(rev) => Ok((r.family, rev)),
        None => Err(ApiError::client(format!(
            "The task definition '{reference}' has no revision: name one revision as family:revision or with its full ARN"
        ))),
    }
}

fn set_inactive(
    w: &Writer<'_>,
    ctx: &Ctx,
    family: &str,
    rev: i32,
) -> Result<Option<TaskDefinition>, ApiError> {
    let key = task_definition_key(family, rev);
    let Some(mut td) = w.get(TASK_DEFINITIONS, &key)? else {
        return Ok(None);
    };
    if td.status.as_deref() == Some(ACTIVE) {
        td.status = Some(INACTIVE.into());
        td.deregistered_at = Some(ctx.now());
        w.put(TASK_DEFINITIONS, &key, &td)?;
        let mut f = w.get(FAMILIES, family)?.unwrap_or_default();
        f.active = f.active.saturating_sub(1);
        w.put(FAMILIES, family, &f)?;
    }
    Ok(Some(td))
}

pub fn deregister(
    ctx: &Ctx,
    req: DeregisterTaskDefinitionRequest,
) -> Result<DeregisterTaskDefinitionResponse, ApiError> {
    let reference = req.task_definition.unwrap_or_default();
    let (family, rev) = revision_ref(ctx, &reference)?;
    let td = ctx.store.write(|w| {
        set_inactive(w, ctx, &family, rev)?
            .ok_or_else(|| ApiError::client(format!("The task definition '{family}:{rev}' does not exist.")))
    })?;
    Ok(DeregisterTaskDefinitionResponse { task_definition: Some(td) })
}

pub fn delete(
    ctx: &Ctx,
    req: DeleteTaskDefinitionsRequest,
) -> Result<DeleteTaskDefinitionsResponse, ApiError> {
    let refs = req.task_definitions.unwrap_or_default();
    if refs.is_empty() || refs.len() > 10 {
        return Err(ApiError::invalid_parameter(format!(
            "taskDefinitions must name 1 to 10 task definitions; it names {}",
            refs.len()
        )));
    }
    let now = ctx.now();
    ctx.store.write(|w| {
        let mut deleted = vec![];
        let mut failures = vec![];
        for reference in refs {
            let failure = |reason: &str| Failure {
                arn: Some(reference.clone()),
                reason: Some(reason.to_owned()),
                detail: None,
            };
            let Ok((family, rev)) = revision_ref(ctx, &reference) else {
                failures.push(failure(
                    "The specified task definition identifier is invalid. Specify a valid name or ARN and try again.",
                ));
                continue;
            };
            let key = task_definition_key(&family, rev);
            match w.get(TASK_DEFINITIONS, &key)? {
                None => failures.push(failure("The specified task definition does not exist.")),
                Some(td) if td.status.as_deref() == Some(ACTIVE) => failures.push(failure(
                    "The specified task definition is still in ACTIVE status. Please deregister the target and try again.",
                )),
                Some(mut td) => {
                    if td.status.as_deref() != Some(DELETE_IN_PROGRESS) {
                        td.status = Some(DELETE_IN_PROGRESS.into());
                        td.delete_requested_at = Some(now);
                        w.put(TASK_DEFINITIONS, &key, &td)?;
                    }
                    deleted.push(td);
                }
            }
        }
        Ok(DeleteTaskDefinitionsResponse { task_definitions: Some(deleted), failures: Some(failures) })
    })
}

/// Whether a task definition revision exists (for tagging).
pub fn exists(r: &Reader<'_>, family: &str, revision: i32) -> Result<bool, StoreError> {
    Ok(r.get(TASK_DEFINITIONS, &task_definition_key(family, revision))?.is_some())
}
