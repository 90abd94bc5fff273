//! TagResource, UntagResource, ListTagsForResource.

use super::{ApiError, Ctx, Exception, clusters, services, task_definitions};
use crate::model::arn::{ArnError, ResourceArn};
use crate::model::shapes::{
    ListTagsForResourceRequest, ListTagsForResourceResponse, TagResourceRequest, TagResourceResponse,
    UntagResourceRequest, UntagResourceResponse,
};
use crate::model::tags;
use crate::store::Reader;
use crate::store::records::TAGS;

fn not_found() -> ApiError {
    ApiError::new(Exception::ResourceNotFound, "The specified resource could not be found.")
}

/// Checks that the ARN names a taggable resource that exists.
fn existing(ctx: &Ctx, r: &Reader<'_>, arn: &str) -> Result<(), ApiError> {
    let parsed = ctx.identity.parse(arn).map_err(|e| match e {
        ArnError::Foreign(_) => not_found(),
        e => ApiError::invalid_parameter(format!("resourceArn: {e}")),
    })?;
    let exists = match parsed {
        ResourceArn::Cluster { name } => {
            if !clusters::exists(r, &name)? {
                return Err(ApiError::cluster_not_found());
            }
            true
        }
        ResourceArn::TaskDefinition { family, revision } => task_definitions::exists(r, &family, revision)?,
        ResourceArn::Service { cluster, name } => services::exists(r, &cluster, &name)?,
        // While DescribeTasks shows it (STOPPED ones until the retention ends).
        ResourceArn::Task { cluster, id } => ctx.engine.task(&cluster, &id).is_some(),
        // The container instance and the rest are not taggable here yet.
        _ => false,
    };
    if exists { Ok(()) } else { Err(not_found()) }
}

pub fn tag(ctx: &Ctx, req: TagResourceRequest) -> Result<TagResourceResponse, ApiError> {
    let arn = req.resource_arn.unwrap_or_default();
    let new = req.tags.unwrap_or_default();
    tags::validate(&new)?;
    ctx.store.write(|w| {
        existing(ctx, &w.reader(), &arn)?;
        let current = w.get(TAGS, &arn)?.unwrap_or_default();
        let merged = tags::merge(&current, &new)?;
        w.put(TAGS, &arn, &merged)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(TagResourceResponse {})
}

pub fn untag(ctx: &Ctx, req: UntagResourceRequest) -> Result<UntagResourceResponse, ApiError> {
    let arn = req.resource_arn.unwrap_or_default();
    let keys = req.tag_keys.unwrap_or_default();
    ctx.store.write(|w| {
        existing(ctx, &w.reader(), &arn)?;
        let current = w.get(TAGS, &arn)?.unwrap_or_default();
        let left = tags::remove(&current, &keys);
        if left.is_empty() {
            w.delete(TAGS, &arn)?;
        } else {
            w.put(TAGS, &arn, &left)?;
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(UntagResourceResponse {})
}

pub fn list(ctx: &Ctx, req: ListTagsForResourceRequest) -> Result<ListTagsForResourceResponse, ApiError> {
    let arn = req.resource_arn.unwrap_or_default();
    ctx.store.read(|r| {
        existing(ctx, r, &arn)?;
        Ok(ListTagsForResourceResponse { tags: Some(r.get(TAGS, &arn)?.unwrap_or_default()) })
    })
}
