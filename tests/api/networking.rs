//! Task networking through the API, on the in-memory runtime and network: awsvpc tasks'
//! network interfaces on the subnet they name, and host ports (dynamic and fixed, bridge,
//! host and awsvpc mode) handed out at placement, held until the task stops, and shown on
//! the container instance.

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerDefinition, LaunchType, NetworkBinding,
    NetworkConfiguration, NetworkMode, PortMapping, Resource, Task, TransportProtocol,
};

use crate::common::{Ecsd, arn, err, eventually};

fn vpc(subnets: &[&str]) -> NetworkConfiguration {
    let mut c = AwsVpcConfiguration::builder();
    for s in subnets {
        c = c.subnets(*s);
    }
    NetworkConfiguration::builder().awsvpc_configuration(c.build().unwrap()).build()
}

fn tcp(container_port: i32, host_port: Option<i32>) -> PortMapping {
    PortMapping::builder().container_port(container_port).set_host_port(host_port).build()
}

async fn register(e: &Ecsd, family: &str, mode: NetworkMode, ports: Vec<PortMapping>) {
    let c = ContainerDefinition::builder()
        .name("app")
        .image("busybox")
        .memory(16)
        .set_port_mappings(Some(ports))
        .build();
    e.client
        .register_task_definition()
        .family(family)
        .network_mode(mode)
        .container_definitions(c)
        .send()
        .await
        .unwrap();
}

async fn describe(e: &Ecsd, task_arn: &str) -> Task {
    e.client.describe_tasks().tasks(task_arn).send().await.unwrap().tasks()[0].clone()
}

async fn wait_status(e: &Ecsd, task_arn: &str, status: &str) -> Task {
    eventually(10, &format!("task {status}"), || async {
        let t = describe(e, task_arn).await;
        (t.last_status() == Some(status)).then_some(t)
    })
    .await
}

/// Runs one task that must be placed and waits until it runs.
async fn run_running(e: &Ecsd, family: &str) -> Task {
    let out = e.client.run_task().task_definition(family).send().await.unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    wait_status(e, out.tasks()[0].task_arn().unwrap(), "RUNNING").await
}

async fn stop(e: &Ecsd, task_arn: &str) -> Task {
    e.client.stop_task().task(task_arn).send().await.unwrap();
    wait_status(e, task_arn, "STOPPED").await
}

fn bindings(t: &Task) -> Vec<NetworkBinding> {
    t.containers()[0].network_bindings().to_vec()
}

fn details(t: &Task) -> Vec<(String, String)> {
    t.attachments()[0]
        .details()
        .iter()
        .map(|kv| (kv.name().unwrap_or_default().to_owned(), kv.value().unwrap_or_default().to_owned()))
        .collect()
}

fn detail<'a>(d: &'a [(String, String)], name: &str) -> &'a str {
    &d.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} in {d:?}")).1
}

/// The port strings of a container instance resource.
fn port_set(resources: &[Resource], name: &str) -> Vec<String> {
    resources.iter().find(|r| r.name() == Some(name)).unwrap().string_set_value().to_vec()
}

async fn instance_ports(e: &Ecsd) -> (Vec<String>, Vec<String>, Vec<String>) {
    let ci = e.client.list_container_instances().send().await.unwrap().container_instance_arns()[0].clone();
    let d = e.client.describe_container_instances().container_instances(ci).send().await.unwrap();
    let i = &d.container_instances()[0];
    (
        port_set(i.registered_resources(), "PORTS"),
        port_set(i.remaining_resources(), "PORTS"),
        port_set(i.remaining_resources(), "PORTS_UDP"),
    )
}

/// ecsd with a config file that adds network `blue` (10.30.0.0/24) to the default one.
async fn with_blue_network() -> (Ecsd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ecsd.toml");
    std::fs::write(&config, "[networks.blue]\nsubnet = \"10.30.0.0/24\"\n").unwrap();
    (Ecsd::start_with(&[("ECSD_CONFIG", config.to_str().unwrap())]).await, dir)
}

#[tokio::test]
async fn awsvpc_tasks_get_an_interface_on_the_subnet_they_name() {
    let (e, _config) = with_blue_network().await;
    register(&e, "vpc", NetworkMode::Awsvpc, vec![tcp(8080, None)]).await;
    let nc = NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets("subnet-blue")
                .security_groups("sg-0123")
                .assign_public_ip(AssignPublicIp::Disabled)
                .build()
                .unwrap(),
        )
        .build();
    let out = e.client.run_task().task_definition("vpc").network_configuration(nc).send().await.unwrap();
    let t = &out.tasks()[0];
    let a = &t.attachments()[0];
    assert_eq!((a.r#type(), a.status()), (Some("ElasticNetworkInterface"), Some("PRECREATED")));
    let d = details(t);
    let names: Vec<&str> = d.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["subnetId", "networkInterfaceId"]);
    assert_eq!(detail(&d, "subnetId"), "subnet-blue");
    let eni = detail(&d, "networkInterfaceId");
    assert!(
        eni.len() == 21 && eni.starts_with("eni-") && eni[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{eni}"
    );
    assert!(t.containers()[0].network_interfaces().is_empty(), "no address before it is attached");

    let running = wait_status(&e, t.task_arn().unwrap(), "RUNNING").await;
    let a = &running.attachments()[0];
    assert_eq!((a.id(), a.status()), (t.attachments()[0].id(), Some("ATTACHED")));
    let d = details(&running);
    let names: Vec<&str> = d.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["subnetId", "networkInterfaceId", "macAddress", "privateDnsName", "privateIPv4Address"]
    );
    assert_eq!(detail(&d, "networkInterfaceId"), eni, "the interface keeps its id");
    let ip = detail(&d, "privateIPv4Address");
    assert!(ip.starts_with("10.30.0."), "an address of subnet-blue's network: {ip}");
    assert_eq!(detail(&d, "privateDnsName"), format!("ip-{}.ec2.internal", ip.replace('.', "-")));
    let ni = &running.containers()[0].network_interfaces()[0];
    assert_eq!((ni.attachment_id(), ni.private_ipv4_address()), (a.id(), Some(ip)));
    assert!(bindings(&running).is_empty(), "awsvpc ports are not published on the host by default");

    let stopped = stop(&e, t.task_arn().unwrap()).await;
    assert_eq!(stopped.attachments()[0].status(), Some("DETACHED"));

    // The default network answers to subnet-default.
    let out = e
        .client
        .run_task()
        .task_definition("vpc")
        .network_configuration(vpc(&["subnet-default"]))
        .send()
        .await
        .unwrap();
    let t = &out.tasks()[0];
    let running = wait_status(&e, t.task_arn().unwrap(), "RUNNING").await;
    let d = details(&running);
    assert_eq!(detail(&d, "subnetId"), "subnet-default");
    assert!(detail(&d, "privateIPv4Address").starts_with("10.217."), "{d:?}");
}

#[tokio::test]
async fn network_configuration_is_checked_as_ecs_checks_it() {
    let (e, _config) = with_blue_network().await;
    register(&e, "vpc", NetworkMode::Awsvpc, vec![]).await;
    register(&e, "bridged", NetworkMode::Bridge, vec![]).await;
    let run = |family: &str, nc: NetworkConfiguration| {
        e.client.run_task().task_definition(family).network_configuration(nc).send()
    };

    let (code, msg) = err(run("vpc", vpc(&["subnet-foo", "subnet-default"])).await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        msg,
        "Error retrieving subnet information for [subnet-foo, subnet-default]: The subnet ID 'subnet-foo' does not exist (ecsd networks: subnet-default, subnet-blue)"
    );
    let many: Vec<String> = (0..17).map(|i| format!("subnet-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (code, msg) = err(run("vpc", vpc(&many)).await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "subnets can have at most 16 items.")
    );
    let mut groups = AwsVpcConfiguration::builder().subnets("subnet-default");
    for i in 0..6 {
        groups = groups.security_groups(format!("sg-{i}"));
    }
    let nc = NetworkConfiguration::builder().awsvpc_configuration(groups.build().unwrap()).build();
    let (code, msg) = err(run("vpc", nc).await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "securityGroups can have at most 5 items.")
    );
    let public = AwsVpcConfiguration::builder()
        .subnets("subnet-default")
        .assign_public_ip(AssignPublicIp::Enabled)
        .build()
        .unwrap();
    let nc = NetworkConfiguration::builder().awsvpc_configuration(public).build();
    let (code, msg) = err(run("vpc", nc).await.unwrap_err());
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("InvalidParameterException", "Assign public IP is not supported for this launch type.")
    );

    let (code, msg) = err(run("bridged", vpc(&["subnet-default"])).await.unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "Network Configuration is not valid for the given networkMode of this task definition.");

    let ci = e.client.list_container_instances().send().await.unwrap().container_instance_arns()[0].clone();
    let (code, msg) = err(e
        .client
        .start_task()
        .task_definition("vpc")
        .container_instances(ci)
        .network_configuration(vpc(&["subnet-nope"]))
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert!(msg.starts_with("Error retrieving subnet information for [subnet-nope]"), "{msg}");
    assert!(e.client.list_tasks().send().await.unwrap().task_arns().is_empty(), "nothing was launched");
}

#[tokio::test]
async fn bridge_tasks_get_dynamic_host_ports_from_the_configured_range() {
    let e = Ecsd::start_with(&[("ECS_DYNAMIC_HOST_PORT_RANGE", "41000-41007")]).await;
    let range =
        PortMapping::builder().container_port_range("9000-9002").protocol(TransportProtocol::Udp).build();
    register(&e, "dyn", NetworkMode::Bridge, vec![tcp(80, None), tcp(81, Some(0)), range]).await;

    let out = e.client.run_task().task_definition("dyn").send().await.unwrap();
    assert!(bindings(&out.tasks()[0]).is_empty(), "bindings show once the container runs");
    let first = wait_status(&e, out.tasks()[0].task_arn().unwrap(), "RUNNING").await;
    let b = bindings(&first);
    assert_eq!(b.len(), 3, "{b:?}");
    let in_range = |p: i32| (41000..=41007).contains(&p);
    for (i, container_port) in [(0, 80), (1, 81)] {
        assert_eq!(b[i].bind_ip(), Some("0.0.0.0"));
        assert_eq!(b[i].protocol(), Some(&TransportProtocol::Tcp));
        assert_eq!(b[i].container_port(), Some(container_port));
        assert!(b[i].host_port().is_some_and(in_range), "{:?}", b[i]);
        assert!(b[i].container_port_range().is_none() && b[i].host_port_range().is_none());
    }
    assert_ne!(b[0].host_port(), b[1].host_port());
    let r = &b[2];
    assert_eq!((r.protocol(), r.container_port_range()), (Some(&TransportProtocol::Udp), Some("9000-9002")));
    assert!(r.container_port().is_none() && r.host_port().is_none(), "a range shows as ranges only: {r:?}");
    let (lo, hi) = r.host_port_range().unwrap().split_once('-').unwrap();
    let (lo, hi): (i32, i32) = (lo.parse().unwrap(), hi.parse().unwrap());
    assert!(in_range(lo) && in_range(hi) && hi - lo == 2, "{r:?}");

    let second = run_running(&e, "dyn").await;
    let tcp_ports =
        |t: &Task| -> Vec<i32> { bindings(t)[..2].iter().filter_map(|b| b.host_port()).collect() };
    assert!(
        tcp_ports(&second).iter().all(|p| in_range(*p) && !tcp_ports(&first).contains(p)),
        "{:?} and {:?}",
        bindings(&first),
        bindings(&second)
    );

    // Eight ports: two tasks hold two runs of three UDP ports; a third run does not fit.
    let third = e.client.run_task().task_definition("dyn").send().await.unwrap();
    assert!(third.tasks().is_empty());
    assert_eq!(third.failures()[0].reason(), Some("RESOURCE:PORTS_UDP"));
    stop(&e, first.task_arn().unwrap()).await;
    run_running(&e, "dyn").await;
}

#[tokio::test]
async fn a_fixed_host_port_is_held_until_its_task_stops() {
    let e = Ecsd::start_with(&[("ECS_RESERVED_PORTS", "[22, 41100]")]).await;
    register(&e, "fixed", NetworkMode::Bridge, vec![tcp(80, Some(41101))]).await;
    let (registered, remaining, _) = instance_ports(&e).await;
    assert_eq!(registered, ["22", "41100"]);
    assert_eq!(remaining, ["22", "41100"]);

    let out = e.client.run_task().task_definition("fixed").count(3).send().await.unwrap();
    assert_eq!(out.tasks().len(), 1, "{:?}", out.failures());
    let reasons: Vec<Option<&str>> = out.failures().iter().map(|f| f.reason()).collect();
    assert_eq!(reasons, [Some("RESOURCE:PORTS"), Some("RESOURCE:PORTS")]);
    assert!(out.failures()[0].arn().unwrap().starts_with(&arn("container-instance/default/")));
    let first = wait_status(&e, out.tasks()[0].task_arn().unwrap(), "RUNNING").await;
    let b = &bindings(&first)[0];
    assert_eq!((b.container_port(), b.host_port(), b.bind_ip()), (Some(80), Some(41101), Some("0.0.0.0")));

    let (registered, remaining, remaining_udp) = instance_ports(&e).await;
    assert_eq!(registered, ["22", "41100"], "registered ports are the reserved ones");
    assert_eq!(remaining, ["22", "41100", "41101"], "remaining lists the ports that are taken");
    assert!(remaining_udp.is_empty());

    // The host is shared: another cluster's task cannot have the port either.
    e.client.create_cluster().cluster_name("other").send().await.unwrap();
    let other = e.client.run_task().cluster("other").task_definition("fixed").send().await.unwrap();
    assert_eq!(other.failures()[0].reason(), Some("RESOURCE:PORTS"));
    assert!(other.failures()[0].arn().unwrap().starts_with(&arn("container-instance/other/")));

    stop(&e, first.task_arn().unwrap()).await;
    assert_eq!(instance_ports(&e).await.1, ["22", "41100"]);
    run_running(&e, "fixed").await;

    register(&e, "reserved", NetworkMode::Bridge, vec![tcp(80, Some(41100))]).await;
    let out = e.client.run_task().task_definition("reserved").send().await.unwrap();
    assert_eq!(out.failures()[0].reason(), Some("RESOURCE:PORTS"), "a reserved port is never handed out");
}

#[tokio::test]
async fn a_udp_port_conflict_is_a_ports_udp_failure() {
    let e = Ecsd::start().await;
    let udp =
        PortMapping::builder().container_port(53).host_port(41200).protocol(TransportProtocol::Udp).build();
    register(&e, "dns", NetworkMode::Bridge, vec![udp]).await;
    register(&e, "web", NetworkMode::Bridge, vec![tcp(80, Some(41200))]).await;
    let dns = run_running(&e, "dns").await;
    assert_eq!(bindings(&dns)[0].protocol(), Some(&TransportProtocol::Udp));
    assert_eq!(instance_ports(&e).await.2, ["41200"]);
    run_running(&e, "web").await;
    let out = e.client.run_task().task_definition("dns").send().await.unwrap();
    assert_eq!(out.failures()[0].reason(), Some("RESOURCE:PORTS_UDP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_run_tasks_never_share_a_host_port() {
    let e = Ecsd::start().await;
    register(&e, "race", NetworkMode::Bridge, vec![tcp(80, Some(41300))]).await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let client = e.client.clone();
            tokio::spawn(async move { client.run_task().task_definition("race").send().await })
        })
        .collect();
    let mut placed = 0;
    for call in calls {
        placed += call.await.unwrap().unwrap().tasks().len();
    }
    assert_eq!(placed, 1);
}

#[tokio::test]
async fn host_mode_publishes_the_container_ports_themselves() {
    let e = Ecsd::start().await;
    register(&e, "hosted", NetworkMode::Host, vec![tcp(41400, None)]).await;
    let t = run_running(&e, "hosted").await;
    let b = &bindings(&t)[0];
    assert_eq!((b.container_port(), b.host_port()), (Some(41400), Some(41400)));
    let out = e.client.run_task().task_definition("hosted").send().await.unwrap();
    assert_eq!(out.failures()[0].reason(), Some("RESOURCE:PORTS"));
}

#[tokio::test]
async fn awsvpc_ports_are_published_when_configured() {
    let e = Ecsd::start_with(&[("ECSD_PUBLISH_AWSVPC_PORTS", "true")]).await;
    register(&e, "vpc", NetworkMode::Awsvpc, vec![tcp(41500, None)]).await;
    let run = || {
        e.client
            .run_task()
            .task_definition("vpc")
            .launch_type(LaunchType::Ec2)
            .network_configuration(vpc(&["subnet-default"]))
            .send()
    };
    let out = run().await.unwrap();
    let t = wait_status(&e, out.tasks()[0].task_arn().unwrap(), "RUNNING").await;
    let b = &bindings(&t)[0];
    assert_eq!((b.container_port(), b.host_port()), (Some(41500), Some(41500)));
    assert_eq!(run().await.unwrap().failures()[0].reason(), Some("RESOURCE:PORTS"));
}
