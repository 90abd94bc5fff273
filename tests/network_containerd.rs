//! Task networking on a real containerd and the real netavark: awsvpc interfaces, networks
//! kept apart, bridge-mode published ports, host and none modes, DNS files, teardown after
//! a crash, and a leak check over 300 task starts and stops.
//!
//! Same set-up as tests/tasks_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`).
//! Each ecsd gets its own default network (`10.223.<n>.0/24`, bridge `ecsdt<n>`), and the
//! tests that need a second one declare `10.224.<n>.0/24` on `ecsdu<n>`. All traffic stays
//! between the host and namespaces these tests create.

mod harness;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ecs::types::{
    ContainerOverride, KeyValuePair, PortMapping, Task, TaskOverride, TransportProtocol,
};
use harness::*;

/// A busybox httpd on `port` answering with the container's hostname.
const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html; cat /etc/hosts /etc/resolv.conf; \
                     trap 'exit 0' TERM; httpd -f -p $PORT -h /www & wait";

fn httpd(name: &str, port: u16) -> aws_sdk_ecs::types::builders::ContainerDefinitionBuilder {
    sh(name, HTTPD).environment(KeyValuePair::builder().name("PORT").value(port.to_string()).build())
}

/// A client that fetches `http://$TARGET/` ($TRIES tries, each up to $SECS seconds: a loaded
/// machine answers slowly) and exits 0 on success.
const FETCH: &str = "for i in $(seq $TRIES); do if timeout $SECS wget -qO- http://$TARGET/; then exit 0; fi; \
                     sleep 0.1; done; exit 1";

/// Tries that should succeed may take long; one that must fail needs to give up in time.
const PATIENT: (&str, &str) = ("10", "3");
const BRIEF: (&str, &str) = ("3", "2");

fn details(t: &Task) -> BTreeMap<String, String> {
    let a = &t.attachments()[0];
    a.details().iter().map(|kv| (kv.name().unwrap().to_owned(), kv.value().unwrap().to_owned())).collect()
}

async fn run_with_env(
    e: &Ecsd,
    family: &str,
    subnet: &str,
    container: &str,
    target: &str,
    (tries, secs): (&str, &str),
) -> String {
    let nc = aws_sdk_ecs::types::NetworkConfiguration::builder()
        .awsvpc_configuration(
            aws_sdk_ecs::types::AwsVpcConfiguration::builder().subnets(subnet).build().unwrap(),
        )
        .build();
    let overrides = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name(container)
                .environment(KeyValuePair::builder().name("TARGET").value(target).build())
                .environment(KeyValuePair::builder().name("TRIES").value(tries).build())
                .environment(KeyValuePair::builder().name("SECS").value(secs).build())
                .build(),
        )
        .build();
    let out = e
        .client
        .run_task()
        .task_definition(family)
        .network_configuration(nc)
        .overrides(overrides)
        .send()
        .await
        .unwrap();
    assert_eq!(out.failures(), &[]);
    arn_of(&out.tasks()[0])
}

async fn http_get(url: &str) -> Result<String, reqwest::Error> {
    reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?.get(url).send().await?.text().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and netavark"]
async fn awsvpc_tasks_get_an_interface_and_reach_each_other_on_one_network_only() {
    let _g = CONTAINERD.read().await;
    let blue = "[networks.blue]\nsubnet = \"10.224.{n}.0/24\"\nbridge = \"ecsdu{n}\"\n";
    let e = Ecsd::start_with_networks(&[], blue).await;
    let n = e.network_index;
    e.register_mode("web", "awsvpc", vec![httpd("web", 8080).build()]).await;
    e.register_mode("client", "awsvpc", vec![sh("client", FETCH).build()]).await;

    let web = arn_of(&e.run_awsvpc("web", "subnet-default").await);
    let first = e.describe(&web).await;
    let a = &first.attachments()[0];
    assert_eq!(a.r#type(), Some("ElasticNetworkInterface"));
    let t = e.wait_status(&web, "RUNNING").await;
    let a = &t.attachments()[0];
    assert_eq!(a.status(), Some("ATTACHED"));
    let names: Vec<&str> = a.details().iter().map(|kv| kv.name().unwrap()).collect();
    assert_eq!(
        names,
        ["subnetId", "networkInterfaceId", "macAddress", "privateDnsName", "privateIPv4Address"]
    );
    let d = details(&t);
    let ip = d["privateIPv4Address"].clone();
    assert!(ip.starts_with(&format!("10.223.{n}.")), "{ip} is on the default network");
    assert_eq!(d["subnetId"], "subnet-default");
    assert!(d["networkInterfaceId"].starts_with("eni-"));
    let dns_name = format!("ip-{}.ec2.internal", ip.replace('.', "-"));
    assert_eq!(d["privateDnsName"], dns_name);
    let ni = &named(&t, "web").network_interfaces()[0];
    assert_eq!(ni.private_ipv4_address(), Some(ip.as_str()));
    assert_eq!(ni.attachment_id(), a.id());
    assert_eq!(named(&t, "web").network_bindings(), &[], "awsvpc publishes nothing by default");

    // The namespace has the interface (with the attachment's MAC), 169.254.170.2 on lo.
    let addrs = run_cmd("ip", &["-n", &e.netns_name(&web), "addr", "show"]).await;
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    assert!(addrs.contains(&d["macAddress"]), "{addrs}");
    assert!(addrs.contains("inet 169.254.170.2/32 scope global lo"), "{addrs}");

    // /etc/hosts names the task's own address; resolv.conf points at the network's DNS.
    e.wait_log(&web, "web", "nameserver").await;
    let files = e.logs(&web, "web");
    assert!(files.contains(&format!("{ip}\t{dns_name}\n")), "{files}");
    assert!(files.contains(&format!("nameserver 10.223.{n}.1\n")), "{files}");
    assert!(files.contains("search dns.podman"), "{files}");

    // The host reaches the task at its address; the answer is the task's hostname.
    let body = eventually(WAIT, "the host to reach the task", || async {
        http_get(&format!("http://{ip}:8080/")).await.ok()
    })
    .await;
    assert_eq!(body.trim(), dns_name);

    // A task on the same network reaches it by address and by name; one on another does not.
    let by_ip = run_with_env(&e, "client", "subnet-default", "client", &format!("{ip}:8080"), PATIENT).await;
    let short = dns_name.split('.').next().unwrap().to_owned();
    let by_name =
        run_with_env(&e, "client", "subnet-default", "client", &format!("{short}:8080"), PATIENT).await;
    let other = run_with_env(&e, "client", "blue", "client", &format!("{ip}:8080"), BRIEF).await;
    for (arn, code) in [(&by_ip, 0), (&by_name, 0), (&other, 1)] {
        let t = e.wait_status_for(arn, "STOPPED", 60).await;
        assert_eq!(
            named(&t, "client").exit_code(),
            Some(code),
            "client on {}: {}",
            details(&t)["subnetId"],
            e.logs(arn, "client")
        );
    }
    let t = e.describe(&other).await;
    assert_eq!(details(&t)["subnetId"], "subnet-blue");
    assert!(details(&t)["privateIPv4Address"].starts_with(&format!("10.224.{n}.")));
    assert_eq!(t.attachments()[0].status(), Some("DETACHED"));

    e.stop(&web, "done").await;
    let t = e.wait_status(&web, "STOPPED").await;
    assert_eq!(t.attachments()[0].status(), Some("DETACHED"));
    e.finish().await;
    assert!(!std::path::Path::new(&format!("/sys/class/net/ecsdu{n}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and netavark"]
async fn bridge_mode_publishes_dynamic_and_fixed_host_ports() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[("ECS_DYNAMIC_HOST_PORT_RANGE", "42100-42199")]).await;
    let fixed = 42300 + e.network_index as i32;
    // Two containers, each in a namespace of its own, both on port 80.
    let web = httpd("web", 80).port_mappings(PortMapping::builder().container_port(80).build()).build();
    let fixed_web = httpd("fixed", 80)
        .port_mappings(PortMapping::builder().container_port(80).host_port(fixed).build())
        .build();
    e.register("web", vec![web, fixed_web]).await;
    let arn = arn_of(&e.run("web").await);
    let t = e.wait_status(&arn, "RUNNING").await;
    let dynamic = named(&t, "web").network_bindings()[0].host_port().unwrap();
    assert!((42100..=42199).contains(&dynamic), "{dynamic} is from the dynamic range");
    assert_eq!(named(&t, "fixed").network_bindings()[0].host_port(), Some(fixed));
    for name in ["web", "fixed"] {
        let c = named(&t, name);
        let b = &c.network_bindings()[0];
        assert_eq!(
            (b.container_port(), b.bind_ip(), b.protocol()),
            (Some(80), Some("0.0.0.0"), Some(&TransportProtocol::Tcp))
        );
        let body = eventually(WAIT, "the published port to answer", || async {
            http_get(&format!("http://127.0.0.1:{}/", b.host_port().unwrap())).await.ok()
        })
        .await;
        assert_eq!(body.trim(), &c.runtime_id().unwrap()[..12], "{name} answers with its hostname");
    }

    // The fixed port is taken: a second task cannot be placed.
    let out = e.client.run_task().task_definition("web").send().await.unwrap();
    assert_eq!(out.tasks(), &[]);
    assert_eq!(out.failures()[0].reason(), Some("RESOURCE:PORTS"));

    e.stop(&arn, "done").await;
    e.wait_status(&arn, "STOPPED").await;
    assert!(http_get(&format!("http://127.0.0.1:{fixed}/")).await.is_err(), "the port is unpublished");
    let nat = run_cmd("iptables-save", &["-t", "nat"]).await;
    assert!(!nat.contains(&format!("--dport {fixed} ")), "no DNAT rule left for {fixed}: {nat}");
    // Now the port is free again.
    let again = arn_of(&e.run("web").await);
    e.wait_status(&again, "RUNNING").await;
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and netavark"]
async fn host_mode_uses_the_host_namespace_and_none_has_loopback_only() {
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[]).await;
    let port = 42400 + e.network_index as i32;
    let host = sh("app", IDLE).port_mappings(PortMapping::builder().container_port(port).build()).build();
    e.register_mode("host", "host", vec![host]).await;
    e.register_mode("none", "none", vec![sh("app", "ip addr; cat /etc/resolv.conf; exit 0").build()]).await;
    let h = arn_of(&e.run("host").await);
    let t = e.wait_status(&h, "RUNNING").await;
    let b = &named(&t, "app").network_bindings()[0];
    assert_eq!((b.container_port(), b.host_port()), (Some(port), Some(port)));
    let pid = e.runtime_tasks().await[named(&t, "app").runtime_id().unwrap()].0;
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap(),
        "host mode shares the host's namespace"
    );

    let none = arn_of(&e.run("none").await);
    let t = e.wait_status(&none, "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0));
    let out = e.logs(&none, "app");
    assert!(out.contains("lo:") && !out.contains("eth0"), "loopback only: {out}");
    assert!(out.contains("169.254.170.2/32"), "{out}");
    e.finish().await;
}

/// Counts what this ecsd's tasks leave on the host: namespaces, interfaces on its bridge,
/// firewall rules naming its subnet, bridge or port range, held addresses, DNS records, the
/// runtime's containers and (on Podman) conmon processes. (Only its own: other containers on
/// the host come and go meanwhile.)
async fn footprint(e: &Ecsd) -> BTreeMap<&'static str, usize> {
    let n = e.network_index;
    let bridge = format!("ecsdt{n}");
    let links = run_cmd("ip", &["-o", "link", "show"]).await;
    let rules = run_cmd("iptables-save", &[]).await;
    let ours = |l: &&str| {
        l.starts_with('-')
            && (l.contains(&format!("10.223.{n}.")) || l.contains(&bridge) || l.contains("--dport 43"))
    };
    let aardvark = std::fs::read_dir(e.data.path().join("network/netavark/aardvark-dns"))
        .map(|d| d.flatten().filter(|f| f.file_name() != "aardvark.pid").count())
        .unwrap_or(0);
    BTreeMap::from([
        ("namespaces", e.netns_left().len()),
        (
            "interfaces on the bridge",
            links.lines().filter(|l| l.contains(&format!("master {bridge} "))).count(),
        ),
        ("bridge", links.lines().filter(|l| l.contains(&format!(": {bridge}:"))).count()),
        ("rules", rules.lines().filter(ours).count()),
        ("addresses", e.sandboxes_left().len()),
        ("dns records", aardvark),
        ("containers", e.runtime_containers().await.len()),
        ("conmon processes", if on_podman() { support::podman::conmons(e.data.path()).len() } else { 0 }),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and netavark"]
async fn three_hundred_starts_and_stops_leave_nothing_behind() {
    // 310 tasks: the first ten warm up, the 300 after them are counted. (On Podman too: the
    // checklist's "300 tasks leave no containers, conmon processes, netns, cgroups or IPs".)
    let _g = CONTAINERD.read().await;
    let e = Ecsd::start(&[("ECS_DYNAMIC_HOST_PORT_RANGE", "43000-43999")]).await;
    let published =
        sh("app", "exit 0").port_mappings(PortMapping::builder().container_port(80).build()).build();
    e.register_mode("vpc", "awsvpc", vec![sh("app", "exit 0").build()]).await;
    e.register("br", vec![published]).await;
    // The first task on a network makes the host-wide parts that stay (netavark's base
    // chains, ecsd's isolation rules): count from after it.
    let mut before = BTreeMap::new();
    let mut done = 0;
    let mut all = vec![];
    while done < 310 {
        if done == 10 {
            before = footprint(&e).await;
        }
        // Ten at a time: five awsvpc tasks and five bridge tasks with a published port.
        let mut arns = vec![];
        let nc = aws_sdk_ecs::types::NetworkConfiguration::builder()
            .awsvpc_configuration(
                aws_sdk_ecs::types::AwsVpcConfiguration::builder().subnets("subnet-default").build().unwrap(),
            )
            .build();
        let vpc = e
            .client
            .run_task()
            .task_definition("vpc")
            .count(5)
            .network_configuration(nc)
            .send()
            .await
            .unwrap();
        let br = e.client.run_task().task_definition("br").count(5).send().await.unwrap();
        assert_eq!((vpc.failures(), br.failures()), (&[][..], &[][..]));
        arns.extend(vpc.tasks().iter().chain(br.tasks()).map(arn_of));
        for arn in &arns {
            let t = e.wait_status(arn, "STOPPED").await;
            assert_eq!(t.stop_code().map(|c| c.as_str()), Some("EssentialContainerExited"), "{t:?}");
            assert_eq!(named(&t, "app").exit_code(), Some(0));
        }
        done += arns.len();
        all.extend(arns);
    }
    let after = footprint(&e).await;
    eprintln!("before {before:?}\nafter  {after:?}");
    assert_eq!(before, after, "what 300 task starts and stops left behind");
    // No task's cgroup is left in any hierarchy (the runtime's own below it included).
    let hierarchies: Vec<_> =
        std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|h| h.path().join("ecs")).collect();
    assert!(hierarchies.iter().any(|h| h.is_dir()), "a control: ecsd's /ecs cgroups exist: {hierarchies:?}");
    let cgroups: Vec<_> = all
        .iter()
        .flat_map(|arn| hierarchies.iter().map(move |h| h.join(task_id(arn))))
        .filter(|dir| dir.exists())
        .collect();
    assert_eq!(cgroups, Vec::<std::path::PathBuf>::new(), "task cgroups left");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and netavark"]
async fn a_task_that_ends_while_ecsd_is_killed_is_torn_down_at_restart() {
    let _g = CONTAINERD.read().await;
    let mut e = Ecsd::start(&[]).await;
    e.down().await;
    let mut child = e.spawn_binary();
    let url = child.url.clone();
    let client = client(&url);
    let port = 42500 + e.network_index as i32;
    let web = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("web")
        .image("busybox")
        .memory(32)
        .command("sh")
        .command("-c")
        .command(HTTPD)
        .environment(KeyValuePair::builder().name("PORT").value("80").build())
        .port_mappings(PortMapping::builder().container_port(80).host_port(port).build())
        .build();
    client.register_task_definition().family("web").container_definitions(web).send().await.unwrap();
    let arn = arn_of(&client.run_task().task_definition("web").send().await.unwrap().tasks()[0]);
    let t = eventually(WAIT, "RUNNING", || async {
        let t = client.describe_tasks().tasks(&arn).send().await.unwrap().tasks()[0].clone();
        (t.last_status() == Some("RUNNING")).then_some(t)
    })
    .await;
    let runtime_id = named(&t, "web").runtime_id().unwrap().to_owned();
    assert_eq!(e.sandboxes_left().len(), 1);

    // SIGKILL ecsd, then the container dies while nobody watches.
    child.kill();
    // (A loaded machine may have ended it already: either way it ends while ecsd is down.)
    e.kill_container(&runtime_id).await;
    eventually(WAIT, "the container to exit", || async {
        e.runtime_tasks().await.get(&runtime_id).is_none_or(|(_, s)| s == "STOPPED").then_some(())
    })
    .await;

    // The restarted ecsd records the exit and releases everything the task held.
    e.up().await;
    let t = e.wait_status(&arn, "STOPPED").await;
    assert!(named(&t, "web").exit_code().is_some(), "the exit is recorded: {t:?}");
    assert_eq!(e.sandboxes_left(), Vec::<String>::new());
    let nat = run_cmd("iptables-save", &["-t", "nat"]).await;
    assert!(!nat.contains(&format!("--dport {port} ")), "no DNAT rule left for {port}");
    e.finish().await;
}

/// A task network of a test's own, straight on the host without an ecsd: network
/// `10.225.<k>.0/24` with DNS on bridge `ecsdv<k>`, namespaces `ecsd-nv<k>-<random>-…`,
/// state under a temporary directory, host ports `44<k>00`–`44<k>99`.
struct Direct {
    net: std::sync::Arc<ecsd::network::Netavark>,
    dir: tempfile::TempDir,
    prefix: String,
    k: u16,
}

impl Direct {
    fn new(k: u16) -> Direct {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let settings = ecsd::network::Settings {
            networks: vec![
                ecsd::network::NetworkDef::new(
                    "default",
                    &format!("10.225.{k}.0/24"),
                    Some(&format!("ecsdv{k}")),
                    true,
                )
                .unwrap(),
            ],
            ..ecsd::network::Settings::default()
        };
        let prefix = format!("ecsd-nv{k}-{}-", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let namespaces = ecsd::network::Namespaces::new(&prefix);
        let net = ecsd::network::Netavark::new(settings, namespaces, dir.path()).unwrap();
        Direct { net: std::sync::Arc::new(net), dir, prefix, k }
    }

    /// One sandbox on the network, publishing host port `44<k>00 + i` (TCP, to port 80).
    fn spec(&self, i: u16) -> Vec<ecsd::network::SandboxSpec> {
        vec![ecsd::network::SandboxSpec {
            container: None,
            attach: Some(ecsd::network::Attach {
                network: "default".into(),
                aliases: vec![],
                dns_domain: "ec2.internal".into(),
                ports: vec![ecsd::network::PortMap {
                    host_port: 44000 + 100 * self.k + i,
                    container_port: 80,
                    range: 1,
                    protocol: ecsd::network::Protocol::Tcp,
                }],
            }),
        }]
    }

    /// What the network has on the host, as [`footprint`] counts an ecsd's.
    async fn footprint(&self) -> BTreeMap<&'static str, usize> {
        let k = self.k;
        let bridge = format!("ecsdv{k}");
        let links = run_cmd("ip", &["-o", "link", "show"]).await;
        let rules = run_cmd("iptables-save", &[]).await;
        let ports = format!("--dport 44{k}");
        let ours = |l: &&str| {
            l.starts_with('-')
                && (l.contains(&format!("10.225.{k}.")) || l.contains(&bridge) || l.contains(&ports))
        };
        let files = |dir: std::path::PathBuf, skip: &str| {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter(|f| f.file_type().is_ok_and(|t| t.is_file()))
                        .filter(|f| !f.file_name().to_string_lossy().ends_with(skip))
                        .count()
                })
                .unwrap_or(0)
        };
        let namespaces = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&self.prefix)).count()
            })
            .unwrap_or(0);
        BTreeMap::from([
            ("namespaces", namespaces),
            (
                "interfaces on the bridge",
                links.lines().filter(|l| l.contains(&format!("master {bridge} "))).count(),
            ),
            ("bridge", links.lines().filter(|l| l.contains(&format!(": {bridge}:"))).count()),
            ("rules", rules.lines().filter(ours).count()),
            ("addresses", files(self.dir.path().to_owned(), ".lock")),
            ("dns records", files(self.dir.path().join("netavark/aardvark-dns"), "aardvark.pid")),
        ])
    }

    /// Waits until the host holds what it held at `baseline` and nothing is listed.
    async fn back_to(&self, baseline: &BTreeMap<&'static str, usize>) {
        let mut last = BTreeMap::new();
        let settled = tokio::time::timeout(Duration::from_secs(WAIT), async {
            loop {
                last = self.footprint().await;
                let listed = ecsd::network::Network::list(&*self.net).await.unwrap();
                if &last == baseline && listed.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(settled.is_ok(), "the host never went back to {baseline:?}; it holds {last:?}");
    }
}

impl Drop for Direct {
    /// After a failed test: removes what it left (a passing test has removed everything;
    /// an aardvark-dns kept up by a DNS record left would outlive the test). Then the
    /// isolation rule ecsd added for this test's bridge (other ecsds' stay).
    fn drop(&mut self) {
        let net = self.net.clone();
        let _ = std::thread::spawn(move || {
            use ecsd::network::Network;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for id in net.list().await.unwrap_or_default() {
                    let _ = net.remove(&id).await;
                }
            })
        })
        .join();
        let bridge = format!("ecsdv{}", self.k);
        let _ = std::process::Command::new("iptables")
            .args([
                "-w",
                "30",
                "-t",
                "mangle",
                "-D",
                "ECSD-ISOLATION",
                "-i",
                &bridge,
                "-o",
                &bridge,
                "-j",
                "RETURN",
            ])
            .output();
    }
}

fn new_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and netavark"]
async fn cancelled_creates_and_racing_removals_leave_nothing_on_the_host() {
    use ecsd::network::Network;
    let d = Direct::new(0);
    // The first sandbox on a network makes the host-wide parts that stay: count from after it.
    let warm = new_task_id();
    d.net.create(&warm, &d.spec(0)).await.unwrap();
    d.net.remove(&warm).await.unwrap();
    let baseline = d.footprint().await;

    // Positive control: a sandbox shows on the host in each count.
    let kept = new_task_id();
    let started = std::time::Instant::now();
    d.net.create(&kept, &d.spec(1)).await.unwrap();
    // How long a create takes on this machine now: the cut points below spread over it, so a
    // loaded machine cuts as many creates at each point as a quiet one.
    let takes = started.elapsed();
    let one = d.footprint().await;
    for what in ["namespaces", "interfaces on the bridge", "bridge", "addresses", "dns records"] {
        assert_eq!(one[what], baseline[what] + 1, "{what}: {one:?}");
    }
    assert!(one["rules"] > baseline["rules"], "{one:?}");
    d.net.remove(&kept).await.unwrap();
    assert_eq!(d.footprint().await, baseline);

    // Creates cut short at every point from before netavark runs to after it is done (the
    // last one is never cut), each raced by two removals of the same task.
    let (mut cut, mut finished) = (0, 0);
    let mut ids = vec![];
    for i in 0..40u16 {
        let id = new_task_id();
        let spec = d.spec(2 + i);
        let limit = if i == 39 { Duration::from_secs(600) } else { takes * u32::from(i) * 3 / 2 / 39 };
        let creating = tokio::time::timeout(limit, d.net.create(&id, &spec));
        let (created, r1, r2) = tokio::join!(creating, d.net.remove(&id), d.net.remove(&id));
        match created {
            Err(_) => cut += 1,
            Ok(created) => {
                created.unwrap();
                finished += 1;
            }
        }
        r1.unwrap();
        r2.unwrap();
        ids.push(id);
    }
    eprintln!("{cut} creates cut short, {finished} finished");
    assert!(cut > 0 && finished > 0, "both kinds happened: {cut} cut, {finished} finished");
    // A finished create that won its turn after both removals keeps its network: remove those.
    for id in &ids {
        d.net.remove(id).await.unwrap();
    }
    d.back_to(&baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and netavark"]
async fn a_namespace_deleted_behind_ecsds_back_is_still_torn_down() {
    use ecsd::network::Network;
    let d = Direct::new(1);
    let warm = new_task_id();
    d.net.create(&warm, &d.spec(0)).await.unwrap();
    d.net.remove(&warm).await.unwrap();
    let baseline = d.footprint().await;

    let id = new_task_id();
    d.net.create(&id, &d.spec(1)).await.unwrap();
    run_cmd("ip", &["netns", "delete", &format!("{}{id}", d.prefix)]).await;
    // The interface goes with the namespace (the kernel destroys it a moment later); the
    // rules, the DNS records, the address and the bridge (now without members) do not.
    let left = eventually(WAIT, "the interface to go with its namespace", || async {
        let left = d.footprint().await;
        (left["interfaces on the bridge"] == 0).then_some(left)
    })
    .await;
    assert_eq!((left["namespaces"], left["interfaces on the bridge"]), (0, 0), "{left:?}");
    assert_eq!((left["bridge"], left["addresses"], left["dns records"]), (1, 1, 1), "{left:?}");
    assert!(left["rules"] > baseline["rules"], "{left:?}");
    assert_eq!(d.net.list().await.unwrap(), vec![id.clone()]);

    d.net.remove(&id).await.unwrap();
    assert_eq!(d.footprint().await, baseline);
    assert_eq!(d.net.list().await.unwrap(), Vec::<String>::new());
}

/// A Podman network and a busybox httpd container on it, removed on drop (also when the test
/// fails). The container runs from a root filesystem of Debian's static busybox, so the test
/// needs no image in Podman's store.
struct PodmanLab {
    network: String,
    container: String,
    rootfs: tempfile::TempDir,
}

impl PodmanLab {
    fn podman(args: &[&str]) -> std::process::Output {
        std::process::Command::new("podman").args(args).output().expect("run podman")
    }

    fn ok(args: &[&str]) -> String {
        let out = Self::podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `podman network create --subnet 10.226.<k>.0/24 --ip-range 10.226.<k>.0/25` and
    /// `podman run -d` of an httpd on it answering `podman-side`.
    fn start(k: usize) -> PodmanLab {
        let tag = std::process::id();
        let lab = PodmanLab {
            network: format!("ecsd-ext-{tag}"),
            container: format!("ecsd-ext-web-{tag}"),
            rootfs: tempfile::tempdir().unwrap(),
        };
        let root = lab.rootfs.path();
        for dir in ["bin", "www", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        std::fs::write(root.join("www/index.html"), "podman-side\n").unwrap();
        let subnet = format!("10.226.{k}.0/24");
        let range = format!("10.226.{k}.0/25");
        Self::ok(&["network", "create", "--subnet", &subnet, "--ip-range", &range, &lab.network]);
        let root = root.display().to_string();
        // This host lacks CAP_SYS_RESOURCE: Podman's default ulimits are above its limits.
        Self::ok(&[
            "run",
            "-d",
            "--name",
            &lab.container,
            "--network",
            &lab.network,
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "--rootfs",
            &root,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ]);
        lab
    }

    fn address(&self) -> String {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.network);
        Self::ok(&["inspect", "--format", &format, &self.container])
    }

    fn bridge(&self) -> String {
        Self::ok(&["network", "inspect", "--format", "{{.NetworkInterface}}", &self.network])
    }

    /// The interfaces on the network's bridge (the container's, and a task's while it runs).
    fn members(&self) -> usize {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for PodmanLab {
    fn drop(&mut self) {
        let _ = Self::podman(&["rm", "-f", "-t", "0", &self.container]);
        let _ = Self::podman(&["network", "rm", "-f", &self.network]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd, netavark and podman"]
async fn tasks_join_existing_podman_networks_and_leave_them_untouched() {
    let _g = CONTAINERD.read().await;
    // A network ECS_EXTERNAL_NETWORKS names that Podman does not have stops ecsd at start.
    let settings =
        ecsd::network::Settings { external: vec!["ecsd-no-such-net".into()], ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let refused =
        ecsd::network::Netavark::new(settings, ecsd::network::Namespaces::new("ecsd-x-"), dir.path())
            .map(drop)
            .unwrap_err()
            .to_string();
    assert!(
        refused.starts_with("ECS_EXTERNAL_NETWORKS: Podman network 'ecsd-no-such-net' cannot be joined: "),
        "{refused}"
    );

    let lab = PodmanLab::start(std::process::id() as usize % 250);
    let podman_ip = lab.address();
    assert!(podman_ip.starts_with("10.226."), "{podman_ip}");
    assert_eq!(lab.members(), 1, "the Podman container alone");
    let e = Ecsd::start(&[("ECS_EXTERNAL_NETWORKS", &lab.network)]).await;

    // A task on its own network has a second interface on Podman's, at the top of the subnet
    // (outside the range Podman leases from).
    e.register_mode("web", "awsvpc", vec![httpd("web", 8080).build()]).await;
    let web = arn_of(&e.run_awsvpc("web", "subnet-default").await);
    let t = e.wait_status(&web, "RUNNING").await;
    let own_ip = details(&t)["privateIPv4Address"].clone();
    let prefix = podman_ip.rsplit_once('.').unwrap().0;
    let eth1 = run_cmd("ip", &["-n", &e.netns_name(&web), "-4", "addr", "show", "eth1"]).await;
    assert!(eth1.contains(&format!("inet {prefix}.254/24")), "{eth1}");
    assert_eq!(lab.members(), 2, "the task's interface joined Podman's bridge");
    // The Podman container reaches the task by that address and, with Podman's DNS, by the
    // task's name.
    let short = format!("ip-{}", own_ip.replace('.', "-"));
    for target in [format!("{prefix}.254"), short] {
        let url = format!("http://{target}:8080/");
        let body = eventually(WAIT, &format!("podman to fetch {url}"), || async {
            let out = PodmanLab::podman(&["exec", &lab.container, "/bin/busybox", "wget", "-qO-", &url]);
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await;
        assert!(body.trim().starts_with("ip-"), "the task's hostname: {body}");
    }

    // A task reaches the Podman container by its address.
    e.register_mode("client", "awsvpc", vec![sh("client", FETCH).build()]).await;
    let target = format!("{podman_ip}:8080");
    let client = run_with_env(&e, "client", "subnet-default", "client", &target, PATIENT).await;
    let done = e.wait_status(&client, "STOPPED").await;
    assert_eq!(named(&done, "client").exit_code(), Some(0), "{:?}", e.logs(&client, "client"));
    assert!(e.logs(&client, "client").contains("podman-side"));

    // Stopped: its interface left Podman's bridge; the network and the container are as they were.
    e.stop(&web, "done").await;
    e.wait_status(&web, "STOPPED").await;
    assert_eq!(lab.members(), 1, "only the Podman container is left on the bridge");
    assert_eq!(PodmanLab::ok(&["inspect", "--format", "{{.State.Running}}", &lab.container]), "true");
    assert!(PodmanLab::podman(&["network", "exists", &lab.network]).status.success());
    assert_eq!(lab.address(), podman_ip);
}
