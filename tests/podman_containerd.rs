//! ecsd beside Podman on one host: `ecsd image import --from-podman` copies an image of
//! Podman's store into containerd with the registry's digest, and ecsd's task networks and
//! Podman's networks are kept apart in both directions (a task joined to a Podman network
//! with ECS_EXTERNAL_NETWORKS still reaches it).
//!
//! Same set-up as tests/tasks_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`).
//! Podman images go to a private store of the test (`CONTAINERS_STORAGE_CONF`), pulled from
//! the registry lab on 127.0.0.1 (`hack/registry`); Podman networks and containers the tests
//! make are removed by id.

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use harness::*;

/// A Podman image store of the test's own (graph root and run root in a temporary
/// directory); its images are removed and its overlay mount undone on drop.
struct PodmanStore {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl PodmanStore {
    fn new() -> PodmanStore {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("storage.conf");
        let root = dir.path().join("root");
        let run = dir.path().join("run");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.display(),
                run.display()
            ),
        )
        .unwrap();
        PodmanStore { dir, conf }
    }

    fn podman(&self, args: &[&str]) -> Output {
        std::process::Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &self.conf)
            .args(args)
            .output()
            .expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `ecsd image import --from-podman REF` into `e`'s namespace, with this store.
    fn import(&self, e: &Ecsd, reference: &str, env: &[(&str, &str)]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
            .env("CONTAINERS_STORAGE_CONF", &self.conf)
            .envs(env.iter().copied())
            .args(["image", "import", "--from-podman", reference, "--namespace", &e.namespace])
            .arg("--containerd-address")
            .arg(socket())
            .output()
            .expect("run ecsd image import")
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        for id in self.ok_lines(&["images", "-q", "--no-trunc"]) {
            let _ = self.podman(&["rmi", "-f", &id]);
        }
        let overlay = self.dir.path().join("root/overlay");
        let _ = std::process::Command::new("umount").arg(&overlay).output();
    }
}

impl PodmanStore {
    fn ok_lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.podman(args);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// The digest of the manifest containerd holds for image `name` (`ctr images ls`).
async fn stored_digest(e: &Ecsd, name: &str) -> String {
    let listed = e.ctr(&["images", "ls"]).await;
    let line =
        listed.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{listed}"));
    line.split_whitespace().nth(2).unwrap().to_owned()
}

#[test]
fn import_from_podman_without_podman_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .env("ECSD_PODMAN", "/nonexistent/podman")
        .args(["image", "import", "--from-podman", "busybox", "--containerd-address", "/nonexistent.sock"])
        .output()
        .unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (
            1,
            "",
            "ecsd: Podman is not installed: there is no /nonexistent/podman (install podman, or set ECSD_PODMAN to its path)"
        )
    );
    // Neither an archive nor Podman's image: clap says what is missing.
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_ecsd")).args(["image", "import"]).output().unwrap();
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 2);
    assert!(stderr.contains("<FILE|--from-podman <REF>>"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd and podman"]
async fn an_image_from_podmans_store_runs_with_its_registry_digest() {
    let _g = CONTAINERD.read().await;
    let registry = support::registry::LabRegistry::start("none");
    let store = PodmanStore::new();
    let reference = format!("{}/busybox:latest", registry.addr);
    store.ok(&["pull", "-q", "--tls-verify=false", &reference]);
    let registry_digest = registry.digest("busybox");
    // From here on only Podman's store and containerd have the image.
    registry.stop();
    let e = Ecsd::start(&[]).await;

    // Podman lacks it: exit 2, and nothing is imported.
    let missing = format!("{}/no-such-image:v1", registry.addr);
    let (code, stdout, stderr) = text(&store.import(&e, &missing, &[]));
    assert_eq!(
        (code, stdout.as_str(), stderr),
        (
            2,
            "",
            format!(
                "ecsd: Podman has no image {missing} (`podman images` lists the images it has; `podman pull {missing}` fetches one)"
            )
        )
    );

    let started = Instant::now();
    let out = store.import(&e, &reference, &[]);
    let took = started.elapsed();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 0, "{stderr}");
    eprintln!("import --from-podman of busybox took {took:?}");
    assert_eq!(stdout, format!("{reference} {registry_digest}"));
    // containerd holds Podman's re-compressed manifest, whose digest is not the registry's.
    assert_ne!(stored_digest(&e, &reference).await, registry_digest);

    // A task of it reports the registry's digest, as a pulled one does; so does one naming
    // the image by that digest.
    let pinned = format!("{}/busybox@{registry_digest}", registry.addr);
    for (family, image) in [("by-tag", reference.as_str()), ("by-digest", pinned.as_str())] {
        e.register(family, vec![sh("app", "echo ran; exit 0").image(image).build()]).await;
        let arn = arn_of(&e.run(family).await);
        let t = e.wait_status(&arn, "STOPPED").await;
        let c = named(&t, "app");
        assert_eq!(c.exit_code(), Some(0), "{family}: {t:?}");
        assert_eq!(c.image_digest(), Some(registry_digest.as_str()), "{family}");
        assert!(e.logs(&arn, "app").contains("ran"));
    }

    // An image loaded from an archive: Podman's digest of it is the loaded manifest's, which
    // its save writes again, so containerd's image has that digest and tasks report it.
    let archive = store.dir.path().join("saved.tar");
    store.ok(&["save", "--format", "oci-archive", "-o", archive.to_str().unwrap(), &reference]);
    let id = store.ok(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    store.ok(&["rmi", "-f", &id]);
    store.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
    store.ok(&["tag", &id, "localhost/loaded:v1"]);
    let (code, stdout, stderr) = text(&store.import(&e, "localhost/loaded:v1", &[]));
    assert_eq!(code, 0, "{stderr}");
    let (name, digest) = stdout.split_once(' ').unwrap();
    assert_eq!(name, "localhost/loaded:v1");
    assert_ne!(digest, registry_digest);
    assert_eq!(stored_digest(&e, "localhost/loaded:v1").await, digest);
    e.finish().await;
}

/// `podman` on the host's own store and networks (containers run from a root filesystem of
/// Debian's static busybox, so no image is needed).
fn podman(args: &[&str]) -> Output {
    std::process::Command::new("podman").args(args).output().expect("run podman")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A Podman network of the test (`podman network create`), removed by id on drop.
struct PodmanNet {
    id: String,
    name: String,
}

impl PodmanNet {
    fn create(name: &str, subnet: &str) -> PodmanNet {
        podman_ok(&["network", "create", "--subnet", subnet, name]);
        let id = podman_ok(&["network", "inspect", "--format", "{{.ID}}", name]);
        PodmanNet { id, name: name.to_owned() }
    }

    fn bridge(&self) -> String {
        podman_ok(&["network", "inspect", "--format", "{{.NetworkInterface}}", &self.id])
    }

    fn remove(&self) {
        let _ = podman(&["network", "rm", "-f", &self.id]);
    }
}

impl Drop for PodmanNet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A busybox httpd that Podman runs on `network`, answering `answer` on port 8080; removed by
/// id on drop.
struct PodmanBox {
    id: String,
    ip: String,
    _rootfs: tempfile::TempDir,
}

impl PodmanBox {
    fn start(network: &str, answer: &str) -> PodmanBox {
        let rootfs = tempfile::tempdir().unwrap();
        let root = rootfs.path();
        for dir in ["bin", "www", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        std::fs::write(root.join("www/index.html"), format!("{answer}\n")).unwrap();
        // This host lacks CAP_SYS_RESOURCE: Podman's default ulimits are above its limits.
        let id = podman_ok(&[
            "run",
            "-d",
            "--network",
            network,
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            "--rootfs",
            root.to_str().unwrap(),
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ]);
        let mut b = PodmanBox { id, ip: String::new(), _rootfs: rootfs };
        b.ip = podman_ok(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &b.id,
        ]);
        b
    }

    /// What `url` answers from inside the container; `None` when it does not answer in time.
    fn fetch(&self, url: &str, secs: u32) -> Option<String> {
        let secs = secs.to_string();
        let out = podman(&[
            "exec",
            &self.id,
            "/bin/busybox",
            "timeout",
            &secs,
            "/bin/busybox",
            "wget",
            "-qO-",
            url,
        ]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `fetch`, retried until it answers (a new address may take a moment to be reachable).
    async fn fetch_eventually(&self, url: &str) -> String {
        eventually(WAIT, &format!("podman container to fetch {url}"), || async { self.fetch(url, 3) }).await
    }

    fn remove(&self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.id]);
    }
}

impl Drop for PodmanBox {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A task's client: fetches `http://$TARGET/` ($TRIES tries of up to $SECS seconds) and
/// exits 0 when it answers.
const FETCH: &str = "for i in $(seq $TRIES); do if timeout $SECS wget -qO- http://$TARGET/; then exit 0; fi; \
                     sleep 0.1; done; exit 1";

/// Runs the client task against `target` on ecsd's default network; its exit code.
async fn task_fetch(e: &Ecsd, target: &str, patient: bool) -> i32 {
    use aws_sdk_ecs::types::{ContainerOverride, KeyValuePair, TaskOverride};
    let (tries, secs) = if patient { ("10", "3") } else { ("3", "2") };
    let nc = aws_sdk_ecs::types::NetworkConfiguration::builder()
        .awsvpc_configuration(
            aws_sdk_ecs::types::AwsVpcConfiguration::builder().subnets("subnet-default").build().unwrap(),
        )
        .build();
    let env = |k: &str, v: &str| KeyValuePair::builder().name(k).value(v).build();
    let overrides = TaskOverride::builder()
        .container_overrides(
            ContainerOverride::builder()
                .name("client")
                .environment(env("TARGET", target))
                .environment(env("TRIES", tries))
                .environment(env("SECS", secs))
                .build(),
        )
        .build();
    let out = e
        .client
        .run_task()
        .task_definition("client")
        .network_configuration(nc)
        .overrides(overrides)
        .send()
        .await
        .unwrap();
    assert_eq!(out.failures(), &[]);
    let arn = arn_of(&out.tasks()[0]);
    let t = e.wait_status_for(&arn, "STOPPED", 90).await;
    named(&t, "client").exit_code().unwrap_or(-1)
}

/// The ECSD-ISOLATION rules naming Podman's bridges.
async fn podman_rules() -> Vec<String> {
    let rules = run_cmd("iptables-save", &["-t", "mangle"]).await;
    rules
        .lines()
        .filter(|l| l.starts_with("-A ECSD-ISOLATION") && l.contains("podman+"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, containerd, netavark and podman"]
async fn podmans_networks_and_ecsds_cannot_reach_each_other() {
    let _g = CONTAINERD.read().await;
    let k = std::process::id() % 250;
    let net = PodmanNet::create(&format!("ecsd-iso-{}", std::process::id()), &format!("10.228.{k}.0/24"));
    // One container on Podman's default network (podman0), one on the network made above.
    let p0 = PodmanBox::start("podman", "podman-0");
    let p1 = PodmanBox::start(&net.name, "podman-1");
    assert!(net.bridge().starts_with("podman"), "{}", net.bridge());
    let e = Ecsd::start(&[]).await;
    e.register_mode(
        "web",
        "awsvpc",
        vec![
            sh("web", "mkdir -p /www && echo ecsd-web > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait")
                .build(),
        ],
    )
    .await;
    e.register_mode("client", "awsvpc", vec![sh("client", FETCH).build()]).await;
    let web = arn_of(&e.run_awsvpc("web", "subnet-default").await);
    let t = e.wait_status(&web, "RUNNING").await;
    let web_ip = t.attachments()[0]
        .details()
        .iter()
        .find(|kv| kv.name() == Some("privateIPv4Address"))
        .and_then(|kv| kv.value())
        .unwrap()
        .to_owned();
    let web_url = format!("http://{web_ip}:8080/");
    let rules = podman_rules().await;
    assert_eq!(rules.len(), 4, "one rule per direction and bridge pattern, not repeated: {rules:?}");

    // Podman → ecsd: dropped from both Podman networks. Control: the same containers fetch
    // across Podman's own two bridges, so they and forwarding work.
    assert_eq!(p0.fetch_eventually(&format!("http://{}:8080/", p1.ip)).await, "podman-1");
    assert_eq!(p1.fetch_eventually(&format!("http://{}:8080/", p0.ip)).await, "podman-0");
    for (name, p) in [("podman0", &p0), ("podman network create", &p1)] {
        assert_eq!(p.fetch(&web_url, 3), None, "a container on {name} reached the ecsd task");
    }

    // ecsd → Podman: dropped to both. Control: a task on the same network reaches the web task.
    assert_eq!(task_fetch(&e, &format!("{web_ip}:8080"), true).await, 0, "same ecsd network");
    for p in [&p0, &p1] {
        assert_eq!(task_fetch(&e, &format!("{}:8080", p.ip), false).await, 1, "a task reached {}", p.ip);
    }

    // A port a bridge-mode task publishes on the host is public on purpose: a Podman
    // container reaches it at the host's address on its bridge (DNAT'd, so not dropped).
    let port = 42700 + e.network_index as i32;
    let published = sh(
        "pub",
        "mkdir -p /www && echo ecsd-pub > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait",
    )
    .port_mappings(aws_sdk_ecs::types::PortMapping::builder().container_port(80).host_port(port).build())
    .build();
    e.register("pub", vec![published]).await;
    let pub_task = arn_of(&e.run("pub").await);
    e.wait_status(&pub_task, "RUNNING").await;
    let gateway =
        podman_ok(&["network", "inspect", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}", "podman"]);
    assert_eq!(p0.fetch_eventually(&format!("http://{gateway}:{port}/")).await, "ecsd-pub");
    e.stop(&pub_task, "done").await;

    // Tearing Podman's network down leaves ecsd's working.
    let podman_bridge = net.bridge();
    p1.remove();
    net.remove();
    assert!(!Path::new(&format!("/sys/class/net/{podman_bridge}")).exists(), "{podman_bridge} is gone");
    assert_eq!(task_fetch(&e, &format!("{web_ip}:8080"), true).await, 0, "ecsd after Podman's teardown");
    assert_eq!(p0.fetch(&web_url, 3), None);

    // Tearing ecsd's down leaves Podman's working: a new container on podman0 reaches p0.
    e.stop(&web, "done").await;
    e.wait_status(&web, "STOPPED").await;
    // (finish checks that ecsd's bridge went with its last task.)
    e.finish().await;
    let p2 = PodmanBox::start("podman", "podman-2");
    assert_eq!(p2.fetch_eventually(&format!("http://{}:8080/", p0.ip)).await, "podman-0");
    // The rules stay, as the other isolation rules do, and were never added twice.
    assert_eq!(podman_rules().await, rules);
}
