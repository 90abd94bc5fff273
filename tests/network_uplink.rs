//! Rootless networking, the runtime-neutral part, as root: task namespaces made in-process
//! (also inside a user namespace that does not own the host's network namespace, where
//! `ip netns add` fails), and task networks in an uplink namespace of ecsd's own
//! (`ECSD_NETWORK_UPLINK=netns`) with published ports forwarded by ecsd.
//!
//! The uplink's way out is slirp4netns: the only "outside" a task reaches here is a namespace
//! the test makes, on a veth pair to the host (`10.251.<n>.0/30`).
//!
//! Same set-up as tests/network_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`).
//! All traffic stays between the host's loopback and namespaces these tests create.

mod harness;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerOverride, KeyValuePair, PortMapping, TaskOverride};
use ecsd::network::Namespaces;
use harness::*;
use support::outside::Outside;

/// A key of the form task namespaces have (32 hex characters).
fn key(n: u32) -> String {
    format!("{:08x}{:024x}", std::process::id(), n)
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

/// Makes a task namespace with [`Namespaces::add`] and checks it the way other tools see it:
/// listed by `ip netns`, loopback up with 169.254.170.2 and the endpoints' DNAT inside, a
/// namespace other than this process's; then deletes it.
async fn make_check_delete(prefix: &str, n: u32) {
    let namespaces = Namespaces::new(prefix);
    let key = key(n);
    let name = format!("{prefix}{key}");
    let path = namespaces.add(&key).await.expect("the namespace is made");
    assert_eq!(path, Path::new("/run/netns").join(&name));
    let listed = String::from_utf8(ip(&["netns", "list"]).stdout).unwrap();
    assert!(listed.lines().any(|l| l.split_whitespace().next() == Some(name.as_str())), "{listed}");
    let lo = ip(&["-n", &name, "-o", "addr", "show", "dev", "lo", "up"]);
    assert!(lo.status.success(), "{lo:?}");
    assert!(String::from_utf8_lossy(&lo.stdout).contains("169.254.170.2/32"), "{lo:?}");
    let nat = ip(&["netns", "exec", &name, "iptables", "-w", "5", "-t", "nat", "-S", "OUTPUT"]);
    assert!(String::from_utf8_lossy(&nat.stdout).contains("--to-destination 169.254.170.2:51679"), "{nat:?}");
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), own, "a namespace of its own");

    namespaces.delete(&key).await.expect("the namespace is deleted");
    assert!(!path.exists());
    let listed = String::from_utf8(ip(&["netns", "list"]).stdout).unwrap();
    assert!(!listed.contains(&name), "{listed}");
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn namespaces_made_in_process_are_seen_and_deleted_by_iproute2() {
    make_check_delete("ecsd-uplinktest-", 1).await;
    // Positive interop the other way: iproute2 deletes one made in-process.
    let namespaces = Namespaces::new("ecsd-uplinktest-");
    let path = namespaces.add(&key(2)).await.unwrap();
    let deleted = ip(&["netns", "delete", path.file_name().unwrap().to_str().unwrap()]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(!path.exists());
}

/// Set in the child the next test starts inside a user namespace.
const PROBE: &str = "ECSD_TEST_NETNS_PROBE";

/// Runs [`probe_in_a_user_namespace`] inside `unshare -Urm` (a user namespace of its own,
/// with the host's network namespace, which it does not own: rootlesskit `--net=host`),
/// over a private tmpfs on /run/netns.
#[tokio::test]
#[ignore = "needs root and containerd"]
async fn namespaces_are_made_inside_a_user_namespace_that_does_not_own_the_hosts() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args([
            "-Urm",
            "--",
            "sh",
            "-c",
            "mkdir -p /run/netns && mount -t tmpfs ecsd-probe /run/netns && exec \"$@\"",
            "sh",
        ])
        .arg(&exe)
        .args(["--exact", "probe_in_a_user_namespace", "--ignored", "--nocapture", "--test-threads=1"])
        .env(PROBE, "1")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("probe: in-process namespace ok"), "the probe ran: {said}");
    assert!(said.contains("probe: uplink ok"), "the uplink works in the user namespace: {said}");
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn probe_in_a_user_namespace() {
    if std::env::var_os(PROBE).is_none() {
        return;
    }
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(!uid_map.contains("4294967295"), "inside a user namespace of its own: {uid_map}");
    // Negative control: iproute2 makes the namespace but cannot switch back to the host's.
    let old = ip(&["netns", "add", "ecsd-probe-iproute2"]);
    assert!(!old.status.success(), "ip netns add fails here: {old:?}");
    assert!(String::from_utf8_lossy(&old.stderr).contains("setns"), "{old:?}");
    let _ = ip(&["netns", "delete", "ecsd-probe-iproute2"]);

    make_check_delete("ecsd-probe-", 3).await;
    println!("probe: in-process namespace ok");

    // Nor can it make a bridge there, which is why task networks go to an uplink namespace.
    let bridge = ip(&["link", "add", "ecsdprobex", "type", "bridge"]);
    assert!(!bridge.status.success(), "no bridge in the host's namespace: {bridge:?}");
    uplink_in_a_user_namespace().await;
    println!("probe: uplink ok");
}

/// Two sandboxes on a network in the uplink namespace, made by a user namespace that owns
/// none of the host's: one reaches the other, and a port the second publishes answers on
/// this namespace's 127.0.0.1 through ecsd's forwarder.
async fn uplink_in_a_user_namespace() {
    use ecsd::network::{
        Attach, Netavark, Network, NetworkDef, PortMap, Protocol, SandboxSpec, Settings, Uplink,
    };
    use std::io::{Read, Write};
    let data = tempfile::tempdir().unwrap();
    let settings = Settings {
        networks: vec![NetworkDef::new("default", "10.229.7.0/24", Some("ecsdprobe0"), true).unwrap()],
        uplink: Uplink::Netns,
        ..Settings::default()
    };
    let net = Netavark::new(settings, Namespaces::new("ecsd-probe-"), &data.path().join("network")).unwrap();
    let host_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec = |ports| {
        let attach =
            Attach { network: "default".into(), aliases: vec![], dns_domain: "ec2.internal".into(), ports };
        vec![SandboxSpec { container: None, attach: Some(attach) }]
    };
    let a = net.create(&key(10), &spec(vec![])).await.expect("sandbox a");
    let published = PortMap { host_port, container_port: 8080, range: 1, protocol: Protocol::Tcp };
    let b = net.create(&key(11), &spec(vec![published])).await.expect("sandbox b");
    let b_ip = b[0].iface.as_ref().unwrap().address;
    let listener =
        ecsd::network::netns::in_netns(&b[0].netns, move || std::net::TcpListener::bind((b_ip, 8080)))
            .await
            .unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"hi from b").unwrap();
        }
    });
    let read = |mut s: std::net::TcpStream| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut said = String::new();
        s.read_to_string(&mut said).unwrap();
        said
    };
    let from_a = ecsd::network::netns::in_netns(&a[0].netns, move || {
        std::net::TcpStream::connect_timeout(&(b_ip, 8080).into(), std::time::Duration::from_secs(5))
    })
    .await
    .expect("a reaches b on the uplink's bridge");
    assert_eq!(read(from_a), "hi from b");
    let forwarded =
        tokio::task::spawn_blocking(move || std::net::TcpStream::connect(("127.0.0.1", host_port)))
            .await
            .unwrap()
            .expect("the published port listens");
    assert_eq!(tokio::task::spawn_blocking(move || read(forwarded)).await.unwrap(), "hi from b");
    server.join().unwrap();
    net.remove(&key(10)).await.unwrap();
    net.remove(&key(11)).await.unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", host_port)).is_err(), "closed with the sandbox");
    net.shutdown().await;
    assert!(!Path::new("/run/netns/ecsd-probe-uplink").exists(), "shutdown removes the uplink");
}

/// A busybox httpd on `port` answering with the container's hostname.
const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html; trap 'exit 0' TERM; \
                     httpd -f -p $PORT -h /www & wait";

fn httpd(name: &str, port: u16) -> aws_sdk_ecs::types::builders::ContainerDefinitionBuilder {
    sh(name, HTTPD).environment(KeyValuePair::builder().name("PORT").value(port.to_string()).build())
}

/// Fetches `http://$TARGET/` (10 tries of up to 3 s: a loaded machine answers slowly).
const FETCH: &str = "for i in $(seq 10); do if timeout 3 wget -qO- http://$TARGET/; then exit 0; fi; \
                     sleep 0.2; done; exit 1";

/// Fetches the task's own metadata (v4) from inside the task.
const METADATA: &str = "for i in $(seq 10); do if timeout 3 wget -qO- $ECS_CONTAINER_METADATA_URI_V4/task; \
                        then exit 0; fi; sleep 0.2; done; exit 1";

async fn http_get(url: &str) -> Result<String, reqwest::Error> {
    reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?.get(url).send().await?.text().await
}

async fn run_client(e: &Ecsd, family: &str, target: &str) -> String {
    let nc = aws_sdk_ecs::types::NetworkConfiguration::builder()
        .awsvpc_configuration(
            aws_sdk_ecs::types::AwsVpcConfiguration::builder().subnets("subnet-default").build().unwrap(),
        )
        .build();
    let overrides = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name(family)
                .environment(KeyValuePair::builder().name("TARGET").value(target).build())
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

/// What a network namespace holds of an ecsd network: its bridge, veths on it, and firewall
/// rules naming its subnet or its published port (`ip netns exec NAME …`; `None`: the host's).
async fn footprint(netns: Option<&str>, bridge: &str, subnet: &str, port: u16) -> (bool, usize, usize, bool) {
    let run = |argv: &[&str]| {
        let mut cmd = Command::new(if netns.is_some() { "ip" } else { argv[0] });
        if let Some(n) = netns {
            cmd.args(["netns", "exec", n]).arg(argv[0]);
        }
        let out = cmd.args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let links = run(&["ip", "-o", "link", "show"]);
    let has_bridge = links.lines().any(|l| l.split(": ").nth(1).is_some_and(|n| n == bridge));
    let members = links.lines().filter(|l| l.contains(&format!(" master {bridge} "))).count();
    let rules = run(&["iptables-save"]);
    let naming_subnet = rules.lines().filter(|l| l.starts_with("-A ") && l.contains(subnet)).count();
    let isolation = rules.lines().any(|l| l.starts_with(":ECSD-ISOLATION"));
    let dnat = rules.lines().any(|l| l.contains(&format!("--dport {port} ")));
    (has_bridge, members, naming_subnet, isolation && dnat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn with_an_uplink_namespace_tasks_network_and_publish_ports_leaving_the_host_netns_alone() {
    let _g = CONTAINERD.read().await;
    let host_veths = || {
        let out = Command::new("ip").args(["-o", "link", "show", "type", "veth"]).output().unwrap();
        // The outside namespace's veth (`ecsdo<n>h`) of the test running beside this one is not ecsd's.
        let veths = String::from_utf8_lossy(&out.stdout).into_owned();
        veths.lines().filter(|l| !l.split(": ").nth(1).is_some_and(|n| n.starts_with("ecsdo"))).count()
    };
    let veths_before = host_veths();
    let e = Ecsd::start(&[("ECSD_NETWORK_UPLINK", "netns")]).await;
    let n = e.network_index;
    let (bridge, subnet) = (format!("ecsdt{n}"), format!("10.223.{n}."));
    let uplink = format!("ecsd-{}-uplink", e.namespace);
    let fixed = 42600 + n as u16;

    e.register_mode("web", "awsvpc", vec![httpd("web", 8080).build()]).await;
    e.register_mode("client", "awsvpc", vec![sh("client", FETCH).build()]).await;
    e.register_mode("meta", "awsvpc", vec![sh("meta", METADATA).build()]).await;
    let published = httpd("pub", 80)
        .port_mappings(PortMapping::builder().container_port(80).host_port(fixed as i32).build())
        .build();
    e.register("pub", vec![published]).await;

    let web = arn_of(&e.run_awsvpc("web", "subnet-default").await);
    let t = e.wait_status(&web, "RUNNING").await;
    let ip = t.attachments()[0]
        .details()
        .iter()
        .find(|kv| kv.name() == Some("privateIPv4Address"))
        .and_then(|kv| kv.value())
        .unwrap()
        .to_owned();
    assert!(ip.starts_with(&subnet), "{ip}");
    let pubt = arn_of(&e.run("pub").await);
    let t = e.wait_status(&pubt, "RUNNING").await;
    let pub_hostname = named(&t, "pub").runtime_id().unwrap()[..12].to_owned();

    // Tasks on the network reach each other, by address and by name (aardvark-dns in the uplink).
    let short = format!("ip-{}", ip.replace('.', "-"));
    let by_ip = run_client(&e, "client", &format!("{ip}:8080")).await;
    let by_name = run_client(&e, "client", &format!("{short}:8080")).await;
    // The endpoints answer inside the task (bound in its own namespace).
    let meta = arn_of(&e.run_awsvpc("meta", "subnet-default").await);
    for (arn, name) in [(&by_ip, "client"), (&by_name, "client"), (&meta, "meta")] {
        let t = e.wait_status_for(arn, "STOPPED", 90).await;
        assert_eq!(named(&t, name).exit_code(), Some(0), "{name}: {}", e.logs(arn, name));
    }
    let said = e.logs(&meta, "meta");
    assert!(said.contains(&format!("\"TaskARN\":\"{meta}\"")), "the task's own metadata: {said}");

    // The published port answers on the host's loopback, through ecsd's forwarder.
    let body = eventually(WAIT, "the published port to answer", || async {
        http_get(&format!("http://127.0.0.1:{fixed}/")).await.ok()
    })
    .await;
    assert_eq!(body.trim(), pub_hostname);

    // Positive control: ecsd's bridge, veths, rules and the port's DNAT are in the uplink...
    let (has_bridge, members, rules, isolation_and_dnat) =
        footprint(Some(&uplink), &bridge, &subnet, fixed).await;
    assert!(
        has_bridge && members >= 2 && rules > 0 && isolation_and_dnat,
        "in the uplink: {has_bridge} {members} {rules} {isolation_and_dnat}"
    );
    // ...and none of it in the host's namespace.
    let (has_bridge, members, rules, _) = footprint(None, &bridge, &subnet, fixed).await;
    assert_eq!((has_bridge, members, rules), (false, 0, 0), "in the host's namespace");
    assert_eq!(host_veths(), veths_before, "no veth in the host's namespace");
    let host_rules =
        String::from_utf8_lossy(&Command::new("iptables-save").output().unwrap().stdout).into_owned();
    assert!(!host_rules.contains(&format!("--dport {fixed} ")), "no DNAT for {fixed} on the host");

    // Once the task stops, its port is closed (negative control of the answer above).
    e.stop(&pubt, "done").await;
    e.wait_status(&pubt, "STOPPED").await;
    assert!(http_get(&format!("http://127.0.0.1:{fixed}/")).await.is_err(), "the port is unpublished");
    // The next task still networks and publishes (the last teardown took nothing it needs).
    e.stop(&web, "done").await;
    e.wait_status(&web, "STOPPED").await;
    let again = arn_of(&e.run("pub").await);
    e.wait_status(&again, "RUNNING").await;
    eventually(WAIT, "the published port to answer again", || async {
        http_get(&format!("http://127.0.0.1:{fixed}/")).await.ok()
    })
    .await;
    e.stop(&again, "done").await;
    e.wait_status(&again, "STOPPED").await;

    assert_eq!(e.netns_left(), vec![uplink.clone()], "only the uplink is left while ecsd runs");
    assert_eq!(e.sandboxes_left(), Vec::<String>::new());
    let mut e = e;
    e.down().await;
    assert!(!Path::new("/run/netns").join(&uplink).exists(), "shutdown removes the uplink");
    assert_eq!(host_veths(), veths_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_published_port_answers_again_after_an_ecsd_restart_and_the_uplink_outlives_it() {
    let _g = CONTAINERD.read().await;
    let mut e = Ecsd::start(&[("ECSD_NETWORK_UPLINK", "netns")]).await;
    let uplink = Path::new("/run/netns").join(format!("ecsd-{}-uplink", e.namespace));
    let fixed = 42700 + e.network_index as u16;
    let published = httpd("pub", 80)
        .port_mappings(PortMapping::builder().container_port(80).host_port(fixed as i32).build())
        .build();
    e.register("pub", vec![published]).await;
    let arn = arn_of(&e.run("pub").await);
    e.wait_status(&arn, "RUNNING").await;
    let url = format!("http://127.0.0.1:{fixed}/");
    eventually(WAIT, "the published port to answer", || async { http_get(&url).await.ok() }).await;

    // ecsd stops, the task keeps running: its network stays in the uplink, and the port,
    // which ecsd itself served, is closed until ecsd is back.
    e.down().await;
    assert!(uplink.exists(), "the running task's uplink stays");
    assert!(http_get(&url).await.is_err(), "no ecsd, no forwarder");
    e.up().await;
    eventually(WAIT, "the published port to answer again", || async { http_get(&url).await.ok() }).await;

    e.stop(&arn, "done").await;
    e.wait_status(&arn, "STOPPED").await;
    assert!(http_get(&url).await.is_err(), "the port is unpublished");
    e.down().await;
    assert!(!uplink.exists(), "shutdown with no task left removes the uplink");
}

/// One try: `timeout 3 wget http://$TARGET/` (never `wget -T`: busybox 1.35's segfaults).
const FETCH_ONCE: &str = "timeout 3 wget -qO- http://$TARGET/";

/// The pids of the slirp4netns processes attached to the namespace at `netns`.
fn slirps_on(netns: &Path) -> Vec<u32> {
    let netns = netns.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let slirp = argv.first()?.ends_with(b"slirp4netns") && argv.contains(&netns.as_bytes());
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
            (slirp && !zombie).then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn with_an_uplink_namespace_awsvpc_tasks_reach_the_outside_through_slirp4netns() {
    let _g = CONTAINERD.read().await;
    let mut e = Ecsd::start(&[("ECSD_NETWORK_UPLINK", "netns")]).await;
    let uplink = Path::new("/run/netns").join(format!("ecsd-{}-uplink", e.namespace));
    let outside = Outside::start(e.network_index).await;
    e.register_mode("client", "awsvpc", vec![sh("client", FETCH).build()]).await;
    e.register_mode("once", "awsvpc", vec![sh("once", FETCH_ONCE).build()]).await;
    e.register_mode("stay", "awsvpc", vec![sh("stay", "trap 'exit 0' TERM; sleep 600 & wait").build()]).await;
    // The host itself reaches the server (positive control of the set-up).
    let direct = std::net::TcpStream::connect((outside.addr.as_str(), outside.port));
    assert!(direct.is_ok(), "the host reaches {}: {direct:?}", outside.target());
    drop(direct);

    // A task reaches the server; the same task against a port nobody serves fails.
    let reached = run_client(&e, "client", &outside.target()).await;
    let refused = run_client(&e, "once", &outside.closed()).await;
    let t = e.wait_status_for(&reached, "STOPPED", 90).await;
    assert_eq!(named(&t, "client").exit_code(), Some(0), "{}", e.logs(&reached, "client"));
    assert_eq!(e.logs(&reached, "client").trim(), "hello, outside");
    let t = e.wait_status_for(&refused, "STOPPED", 90).await;
    assert_ne!(named(&t, "once").exit_code(), Some(0), "{}", e.logs(&refused, "once"));
    let slirps = slirps_on(&uplink);
    assert_eq!(slirps.len(), 1, "one slirp4netns on {}: {slirps:?}", uplink.display());

    // A clean stop stops slirp4netns and, with no task left, removes the uplink.
    e.down().await;
    assert_eq!(slirps_on(&uplink), Vec::<u32>::new(), "stopped with ecsd");
    assert!(!uplink.exists());

    // Without slirp4netns attached (none installed where ecsd looks), the same request fails,
    // and tasks still run.
    e.env.push(("ECSD_SLIRP4NETNS".into(), "/nonexistent/slirp4netns".into()));
    e.up().await;
    let cut_off = run_client(&e, "once", &outside.target()).await;
    let t = e.wait_status_for(&cut_off, "STOPPED", 90).await;
    assert_ne!(named(&t, "once").exit_code(), Some(0), "{}", e.logs(&cut_off, "once"));
    assert_eq!(slirps_on(&uplink), Vec::<u32>::new());
    e.down().await;
    e.env.retain(|(k, _)| k != "ECSD_SLIRP4NETNS");

    // A task that keeps running keeps the uplink. An ecsd process started on it attaches
    // slirp4netns at once; SIGKILLed, it leaves none behind (slirp4netns's exit pipe closes).
    e.up().await;
    let stay = arn_of(&e.run_awsvpc("stay", "subnet-default").await);
    e.wait_status(&stay, "RUNNING").await;
    e.down().await;
    assert!(uplink.exists(), "the running task's uplink stays");
    assert_eq!(slirps_on(&uplink), Vec::<u32>::new());
    let mut spawned = e.spawn_binary();
    eventually(WAIT, "the spawned ecsd to attach slirp4netns", || async {
        (slirps_on(&uplink).len() == 1).then_some(())
    })
    .await;
    spawned.kill();
    eventually(WAIT, "slirp4netns to exit with the SIGKILLed ecsd", || async {
        slirps_on(&uplink).is_empty().then_some(())
    })
    .await;

    // The next start attaches again, and tasks reach the outside again.
    e.up().await;
    eventually(WAIT, "the next ecsd to attach slirp4netns", || async {
        (slirps_on(&uplink).len() == 1).then_some(())
    })
    .await;
    let again = run_client(&e, "client", &outside.target()).await;
    let t = e.wait_status_for(&again, "STOPPED", 90).await;
    assert_eq!(named(&t, "client").exit_code(), Some(0), "{}", e.logs(&again, "client"));
    e.stop(&stay, "done").await;
    e.wait_status(&stay, "STOPPED").await;
    assert_eq!(e.sandboxes_left(), Vec::<String>::new());
    e.down().await;
    assert!(!uplink.exists(), "shutdown with no task left removes the uplink");
    assert_eq!(slirps_on(&uplink), Vec::<u32>::new());
    drop(outside);
}
