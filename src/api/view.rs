//! How the API shows a task: the DescribeTasks shape made from the engine's record.

use crate::model::shapes::{
    Attachment, Attribute, Container, EphemeralStorage, KeyValuePair, ManagedAgent, NetworkInterface, Task,
    TaskEphemeralStorage, TaskOverride,
};
use crate::model::task::{ContainerRecord, ContainerStatus, EniAttachment, HealthStatus, TaskRecord};
use crate::model::task_definition::DEFAULT_EPHEMERAL_STORAGE_GIB;

fn kv(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair { name: Some(name.into()), value: Some(value.into()) }
}

/// An awsvpc task's interface as ECS's `ElasticNetworkInterface` attachment.
fn attachment(a: &EniAttachment) -> Attachment {
    let mut details = vec![kv("subnetId", &a.subnet_id), kv("networkInterfaceId", &a.network_interface_id)];
    if let Some(v) = &a.mac_address {
        details.push(kv("macAddress", v));
    }
    if let Some(v) = &a.private_dns_name {
        details.push(kv("privateDnsName", v));
    }
    if let Some(v) = &a.private_ipv4_address {
        details.push(kv("privateIPv4Address", v));
    }
    Attachment {
        id: Some(a.id.clone()),
        r#type: Some("ElasticNetworkInterface".into()),
        status: Some(a.status.as_str().into()),
        details: Some(details),
    }
}

fn cpu_architecture() -> &'static str {
    if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH }
}

/// A Fargate task's ephemeral storage in GiB: its definition's, else Fargate's default.
/// Other launch types show none, as in ECS.
fn fargate_storage(t: &TaskRecord) -> Option<i32> {
    (t.launch_type == "FARGATE").then(|| {
        t.definition.ephemeral_storage.as_ref().map_or(DEFAULT_EPHEMERAL_STORAGE_GIB, |e| e.size_in_gi_b)
    })
}

/// The task as DescribeTasks shows it (without tags, which live with the ARN).
pub fn task(t: &TaskRecord, cluster_arn: &str, availability_zone: &str) -> Task {
    let td = &t.definition;
    Task {
        attachments: Some(t.attachment.iter().map(attachment).collect()),
        attributes: Some(vec![Attribute {
            name: Some("ecs.cpu-architecture".into()),
            value: Some(cpu_architecture().to_owned()),
            ..Default::default()
        }]),
        availability_zone: Some(availability_zone.to_owned()),
        cluster_arn: Some(cluster_arn.to_owned()),
        connectivity: t.connectivity_at.map(|_| "CONNECTED".to_owned()),
        connectivity_at: t.connectivity_at,
        container_instance_arn: t.container_instance_arn.clone(),
        containers: Some(t.containers.iter().map(|c| container(t, c)).collect()),
        cpu: t.cpu.clone(),
        created_at: Some(t.created_at),
        desired_status: Some(t.desired.as_str().to_owned()),
        enable_execute_command: t.enable_execute_command,
        execution_stopped_at: t.execution_stopped_at,
        group: Some(t.group.clone()),
        health_status: Some(t.health().as_str().to_owned()),
        last_status: Some(t.last.as_str().to_owned()),
        launch_type: Some(t.launch_type.clone()),
        memory: t.memory.clone(),
        overrides: Some(t.overrides.clone().unwrap_or_else(|| TaskOverride {
            container_overrides: Some(vec![]),
            inference_accelerator_overrides: Some(vec![]),
            ..Default::default()
        })),
        platform_family: Some("Linux".into()),
        pull_started_at: t.pull_started_at,
        pull_stopped_at: t.pull_stopped_at,
        started_at: t.started_at,
        started_by: t.started_by.clone(),
        stop_code: t.stop_code.map(|c| c.as_str().to_owned()),
        stopped_at: t.stopped_at,
        stopped_reason: t.stopped_reason.clone(),
        stopping_at: t.stopping_at,
        task_arn: Some(t.arn.clone()),
        task_definition_arn: td.task_definition_arn.clone(),
        version: t.version,
        platform_version: t.platform_version.clone(),
        ephemeral_storage: fargate_storage(t).map(|size_in_gi_b| EphemeralStorage { size_in_gi_b }),
        fargate_ephemeral_storage: fargate_storage(t)
            .map(|size_in_gi_b| TaskEphemeralStorage { size_in_gi_b, kms_key_id: None }),
        ..Default::default()
    }
}

/// ECS Exec's agent in a container of a task run with `enableExecuteCommand`: ecsd serves
/// it itself, so it is up exactly while the container is (PENDING, RUNNING, STOPPED).
fn exec_agent(c: &ContainerRecord) -> ManagedAgent {
    ManagedAgent {
        name: Some("ExecuteCommandAgent".into()),
        last_status: Some(c.status.wire().to_owned()),
        last_started_at: c.started_at,
        reason: None,
    }
}

fn container(t: &TaskRecord, c: &ContainerRecord) -> Container {
    let def = t.effective(&c.name);
    Container {
        container_arn: Some(c.arn.clone()),
        task_arn: Some(t.arn.clone()),
        name: Some(c.name.clone()),
        image: Some(c.image.clone()),
        image_digest: c.image_digest.clone(),
        runtime_id: Some(c.runtime_id.clone()),
        last_status: Some(c.status.wire().to_owned()),
        exit_code: c.exit_code,
        reason: c.reason.clone(),
        network_bindings: Some(if c.started_at.is_some() && c.status != ContainerStatus::Stopped {
            c.network_bindings.clone()
        } else {
            vec![]
        }),
        network_interfaces: Some(
            t.attachment
                .iter()
                .filter(|a| a.private_ipv4_address.is_some())
                .map(|a| NetworkInterface {
                    attachment_id: Some(a.id.clone()),
                    private_ipv4_address: a.private_ipv4_address.clone(),
                    ipv6_address: None,
                })
                .collect(),
        ),
        health_status: Some(
            c.health.as_ref().map_or(HealthStatus::Unknown, |h| h.status).as_str().to_owned(),
        ),
        managed_agents: t.enable_execute_command.then(|| vec![exec_agent(c)]),
        cpu: def.map(|d| d.cpu.to_string()),
        memory: def.and_then(|d| d.memory).map(|m| m.to_string()),
        memory_reservation: def.and_then(|d| d.memory_reservation).map(|m| m.to_string()),
        ..Default::default()
    }
}
