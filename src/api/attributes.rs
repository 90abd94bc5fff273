//! PutAttributes, ListAttributes, DeleteAttributes: custom attributes on this host's container
//! instance, per cluster, next to the attributes ECS itself sets.

use std::ops::{Bound, ControlFlow};

use super::pagination::{decode_token, encode_token};
use super::{ApiError, Ctx, Exception, cluster_name, clusters, container_instances};
use crate::model::attribute::{valid_name, valid_value};
use crate::model::shapes::{
    Attribute, DeleteAttributesRequest, DeleteAttributesResponse, ListAttributesRequest,
    ListAttributesResponse, PutAttributesRequest, PutAttributesResponse,
};
use crate::store::records::{ATTRIBUTES, attribute_key};
use crate::store::{Reader, Scan, StoreError, prefix_end};

const TARGET_TYPE: &str = "container-instance";
/// ECS's limit of custom attributes per resource, and per PutAttributes call.
const MAX_ATTRIBUTES: usize = 10;

/// The custom attributes of the instance in `cluster`.
pub fn custom(r: &Reader<'_>, cluster: &str) -> Result<Vec<Attribute>, StoreError> {
    let prefix = attribute_key(cluster, "");
    let end = prefix_end(&prefix);
    let mut out = vec![];
    r.scan(
        ATTRIBUTES,
        Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false },
        |_, a| {
            out.push(a);
            ControlFlow::Continue(())
        },
    )?;
    Ok(out)
}

/// Checks each attribute targets this host's instance and is well formed; returns the
/// cluster and the attributes with their target as the instance ARN.
fn targeted(
    ctx: &Ctx,
    cluster: Option<&str>,
    attributes: Vec<Attribute>,
    values: bool,
) -> Result<(String, Vec<Attribute>), ApiError> {
    let name = cluster_name(ctx, cluster)?;
    if !ctx.store.read(|r| clusters::exists(r, &name))? {
        return Err(ApiError::cluster_not_found());
    }
    if attributes.is_empty() || attributes.len() > MAX_ATTRIBUTES {
        return Err(ApiError::invalid_parameter(format!(
            "attributes must hold 1 to {MAX_ATTRIBUTES} attributes; it holds {}",
            attributes.len()
        )));
    }
    let instance = container_instances::arn(ctx, &name)?;
    let mut out = vec![];
    for (i, mut a) in attributes.into_iter().enumerate() {
        let attr_name = a.name.clone().unwrap_or_default();
        if !valid_name(&attr_name) {
            return Err(ApiError::invalid_parameter(format!(
                "attributes[{i}].name '{attr_name}' is not valid: 1 to 128 letters, numbers, hyphens, underscores, slashes, backslashes or periods"
            )));
        }
        if values
            && let Some(v) = &a.value
            && !valid_value(v)
        {
            return Err(ApiError::invalid_parameter(format!(
                "attributes[{i}].value '{v}' is not valid: 1 to 128 letters, numbers, hyphens, underscores, periods, at signs, slashes, backslashes, colons or spaces, not starting or ending with a space"
            )));
        }
        if a.target_type.as_deref().is_some_and(|t| t != TARGET_TYPE) {
            return Err(ApiError::invalid_parameter(format!(
                "attributes[{i}].targetType must be {TARGET_TYPE}"
            )));
        }
        let target = a.target_id.clone().unwrap_or_default();
        if target.is_empty() || !container_instances::is_ours(ctx, &name, &target)? {
            return Err(ApiError::new(Exception::TargetNotFound, format!("Could not find {target}.")));
        }
        a.target_type = Some(TARGET_TYPE.into());
        a.target_id = Some(instance.clone());
        out.push(a);
    }
    Ok((name, out))
}

pub fn put(ctx: &Ctx, req: PutAttributesRequest) -> Result<PutAttributesResponse, ApiError> {
    let (cluster, attributes) =
        targeted(ctx, req.cluster.as_deref(), req.attributes.unwrap_or_default(), true)?;
    ctx.store.write(|w| {
        let existing = custom(&w.reader(), &cluster)?;
        let added = attributes
            .iter()
            .filter(|a| !existing.iter().any(|e| e.name == a.name))
            .filter_map(|a| a.name.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if existing.len() + added > MAX_ATTRIBUTES {
            return Err(ApiError::new(
                Exception::Client,
                format!("A container instance can have at most {MAX_ATTRIBUTES} custom attributes"),
            ));
        }
        for a in &attributes {
            w.put(ATTRIBUTES, &attribute_key(&cluster, a.name.as_deref().unwrap_or_default()), a)?;
        }
        Ok(())
    })?;
    Ok(PutAttributesResponse { attributes: Some(attributes) })
}

pub fn delete(ctx: &Ctx, req: DeleteAttributesRequest) -> Result<DeleteAttributesResponse, ApiError> {
    let (cluster, attributes) =
        targeted(ctx, req.cluster.as_deref(), req.attributes.unwrap_or_default(), false)?;
    ctx.store.write(|w| {
        for a in &attributes {
            w.delete(ATTRIBUTES, &attribute_key(&cluster, a.name.as_deref().unwrap_or_default()))?;
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(DeleteAttributesResponse { attributes: Some(attributes) })
}

pub fn list(ctx: &Ctx, req: ListAttributesRequest) -> Result<ListAttributesResponse, ApiError> {
    let page = super::pagination::Page::new(req.max_results, None, 100)?;
    let offset = match req.next_token.as_deref() {
        None | Some("") => 0,
        Some(t) => decode_token(t).and_then(|s| s.parse::<usize>().ok()).ok_or_else(|| {
            ApiError::invalid_parameter(
                "The nextToken is not valid: pass the nextToken of the previous response unchanged",
            )
        })?,
    };
    if req.attribute_value.is_some() && req.attribute_name.is_none() {
        return Err(ApiError::invalid_parameter("attributeValue can only be given with attributeName"));
    }
    let cluster = cluster_name(ctx, req.cluster.as_deref())?;
    if !ctx.store.read(|r| clusters::exists(r, &cluster))? {
        return Err(ApiError::cluster_not_found());
    }
    let instance = container_instances::arn(ctx, &cluster)?;
    let mut all = container_instances::builtin_attributes(ctx);
    all.extend(ctx.store.read(|r| custom(r, &cluster))?);
    let matching: Vec<Attribute> = all
        .into_iter()
        .map(|mut a| {
            a.target_type = Some(TARGET_TYPE.into());
            a.target_id = Some(instance.clone());
            a
        })
        .filter(|a| req.attribute_name.as_ref().is_none_or(|n| a.name.as_ref() == Some(n)))
        .filter(|a| req.attribute_value.as_ref().is_none_or(|v| a.value.as_ref() == Some(v)))
        .collect();
    let end = (offset + page.limit).min(matching.len());
    let attributes = matching.get(offset..end).unwrap_or_default().to_vec();
    let next_token = (end < matching.len()).then(|| encode_token(&end.to_string()));
    Ok(ListAttributesResponse { attributes: Some(attributes), next_token })
}
