//! Rootless networking, the runtime-neutral part, as root: task namespaces made in-process
//! (also inside a user namespace that does not own the host's network namespace, where
//! `ip netns add` fails).

use std::path::Path;
use std::process::Command;

use ecsd::network::Namespaces;

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
}
