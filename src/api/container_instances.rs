//! ListContainerInstances, DescribeContainerInstances: this host, as one container instance
//! in every ACTIVE cluster, with its registered and remaining CPU, MEMORY and PORTS as the
//! engine's placement accounts them. The host is shared by every cluster, so what tasks hold
//! is counted across clusters.

use std::collections::BTreeSet;

use super::pagination::Page;
use super::{ApiError, Ctx, cluster_name, clusters};
use crate::model::arn::ResourceArn;
use crate::model::shapes::{
    Attribute, ContainerInstance, DescribeContainerInstancesRequest, DescribeContainerInstancesResponse,
    Failure, ListContainerInstancesRequest, ListContainerInstancesResponse, Resource, VersionInfo,
};
use crate::model::task::TaskStatus;
use crate::store::records::META;

/// The id of this host as a container instance: made once, kept in the store.
pub fn instance_id(ctx: &Ctx) -> Result<String, ApiError> {
    if let Some(id) = ctx.store.read(|r| r.get(META, "instance_id"))? {
        return Ok(id);
    }
    Ok(ctx.store.write(|w| match w.get(META, "instance_id")? {
        Some(id) => Ok::<_, crate::store::StoreError>(id),
        None => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            w.put(META, "instance_id", &id)?;
            Ok(id)
        }
    })?)
}

pub fn arn(ctx: &Ctx, cluster: &str) -> Result<String, ApiError> {
    Ok(ctx.identity.container_instance_arn(cluster, &instance_id(ctx)?))
}

/// Whether `reference` (an id or ARN) names this host in `cluster`.
pub fn is_ours(ctx: &Ctx, cluster: &str, reference: &str) -> Result<bool, ApiError> {
    let id = instance_id(ctx)?;
    Ok(if reference.starts_with("arn:") {
        matches!(ctx.identity.parse(reference), Ok(ResourceArn::ContainerInstance { cluster: c, id: i }) if c == cluster && i == id)
    } else {
        reference == id
    })
}

fn integer(name: &str, v: i64) -> Resource {
    Resource {
        name: Some(name.into()),
        r#type: Some("INTEGER".into()),
        integer_value: v as i32,
        ..Default::default()
    }
}

fn ports(name: &str, ports: impl IntoIterator<Item = u16>) -> Resource {
    Resource {
        name: Some(name.into()),
        r#type: Some("STRINGSET".into()),
        string_set_value: Some(ports.into_iter().map(|p| p.to_string()).collect()),
        ..Default::default()
    }
}

fn attribute(name: &str, value: Option<&str>) -> Attribute {
    Attribute { name: Some(name.into()), value: value.map(str::to_owned), ..Default::default() }
}

/// The attributes ECS itself puts on an instance: platform and capabilities.
pub fn builtin_attributes(ctx: &Ctx) -> Vec<Attribute> {
    let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH };
    let mut attributes = vec![
        attribute("ecs.os-type", Some("linux")),
        attribute("ecs.os-family", Some("LINUX")),
        attribute("ecs.cpu-architecture", Some(arch)),
        attribute("ecs.availability-zone", Some(&ctx.engine.availability_zone())),
    ];
    for cap in [
        "com.amazonaws.ecs.capability.docker-remote-api.1.17",
        "com.amazonaws.ecs.capability.docker-remote-api.1.18",
        "com.amazonaws.ecs.capability.docker-remote-api.1.19",
        "com.amazonaws.ecs.capability.docker-remote-api.1.21",
        "com.amazonaws.ecs.capability.docker-remote-api.1.25",
        "com.amazonaws.ecs.capability.task-iam-role",
        "ecs.capability.task-eni",
        "ecs.capability.container-health-check",
        "ecs.capability.container-ordering",
        "ecs.capability.execution-role-awslogs",
    ] {
        attributes.push(attribute(cap, None));
    }
    // ECS_INSTANCE_ATTRIBUTES, as the agent registers them.
    for (name, value) in &ctx.engine.cfg.instance.attributes {
        attributes.push(attribute(name, Some(value)));
    }
    attributes
}

fn instance(ctx: &Ctx, cluster: &str, connected: bool) -> Result<ContainerInstance, ApiError> {
    let reg = ctx.engine.registered();
    let usage = ctx.engine.usage();
    let used = usage.demand;
    let tasks = ctx.engine.tasks(cluster, None);
    let live: Vec<_> = tasks.iter().filter(|t| t.last != TaskStatus::Stopped).collect();
    let running = live.iter().filter(|t| t.last == TaskStatus::Running).count() as i32;
    let reserved: BTreeSet<u16> = ctx.network.reserved_ports.iter().copied().collect();
    let reserved_udp: BTreeSet<u16> = ctx.network.reserved_ports_udp.iter().copied().collect();
    let mut attributes = builtin_attributes(ctx);
    attributes.extend(ctx.store.read(|r| super::attributes::custom(r, cluster))?);
    Ok(ContainerInstance {
        container_instance_arn: Some(arn(ctx, cluster)?),
        version: 1,
        version_info: Some(VersionInfo {
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            agent_hash: Some("ecsd".into()),
            docker_version: Some("containerd".into()),
        }),
        // As ECS does, the PORTS sets list the ports that are *not* available: reserved ones,
        // and (remaining) those tasks hold. The reserved ports are TCP, like the agent's
        // ECS_RESERVED_PORTS; the UDP ones are ECS_RESERVED_PORTS_UDP.
        remaining_resources: Some(vec![
            integer("CPU", (reg.cpu - used.cpu).max(0)),
            integer("MEMORY", (reg.memory - used.memory).max(0)),
            ports("PORTS", &usage.ports.tcp | &reserved),
            ports("PORTS_UDP", &usage.ports.udp | &reserved_udp),
        ]),
        registered_resources: Some(vec![
            integer("CPU", reg.cpu),
            integer("MEMORY", reg.memory),
            ports("PORTS", ctx.network.reserved_ports.iter().copied()),
            ports("PORTS_UDP", ctx.network.reserved_ports_udp.iter().copied()),
        ]),
        status: Some("ACTIVE".into()),
        // The "agent" is ecsd itself; what it can be disconnected from is containerd.
        agent_connected: connected,
        running_tasks_count: running,
        pending_tasks_count: live.iter().filter(|t| t.last.is_pending()).count() as i32,
        attributes: Some(attributes),
        registered_at: ctx.store.read(|r| r.get(META, "registered_at"))?.and_then(|s| s.parse().ok()),
        attachments: Some(vec![]),
        ..Default::default()
    })
}

pub fn list(
    ctx: &Ctx,
    req: ListContainerInstancesRequest,
) -> Result<ListContainerInstancesResponse, ApiError> {
    Page::new(req.max_results, req.next_token.as_deref(), 100)?;
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    if !ctx.store.read(|r| clusters::exists(r, &name))? {
        return Err(ApiError::cluster_not_found());
    }
    let active = req.status.as_deref().is_none_or(|s| s == "ACTIVE");
    let arns = if active { vec![arn(ctx, &name)?] } else { vec![] };
    Ok(ListContainerInstancesResponse { container_instance_arns: Some(arns), next_token: None })
}

pub async fn describe(
    ctx: &std::sync::Arc<Ctx>,
    req: DescribeContainerInstancesRequest,
) -> Result<DescribeContainerInstancesResponse, ApiError> {
    let connected = ctx.engine.runtime_ready().await.is_ok();
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    if !ctx.store.read(|r| clusters::exists(r, &name))? {
        return Err(ApiError::cluster_not_found());
    }
    let refs = req.container_instances.unwrap_or_default();
    if refs.is_empty() || refs.len() > 100 {
        return Err(ApiError::invalid_parameter(format!(
            "containerInstances must name 1 to 100 container instances; it names {}",
            refs.len()
        )));
    }
    let mut instances = vec![];
    let mut failures = vec![];
    for r in refs {
        if is_ours(ctx, &name, &r)? {
            instances.push(instance(ctx, &name, connected)?);
        } else {
            let arn = if r.starts_with("arn:") { r } else { ctx.identity.container_instance_arn(&name, &r) };
            failures.push(Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None });
        }
    }
    Ok(DescribeContainerInstancesResponse { container_instances: Some(instances), failures: Some(failures) })
}
