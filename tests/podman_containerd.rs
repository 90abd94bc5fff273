//! ecsd beside Podman on one host: `ecsd image import --from-podman` copies an image of
//! Podman's store into containerd with the registry's digest.
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

fn hack(script: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack").join(script).display().to_string()
}

/// The registry lab with its images pushed, stopped on drop.
struct Registry {
    dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    async fn start() -> Registry {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lab-images");
        run_cmd(&hack("registry"), &["images", images.to_str().unwrap()]).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let addr = run_cmd(&hack("registry"), &["start", &d, "none"]).await.trim().to_owned();
        let r = Registry { dir, addr };
        run_cmd(&hack("registry"), &["push", &d, images.to_str().unwrap()]).await;
        r
    }

    /// The digest the registry gives `name:latest`: that of its stored manifest's bytes.
    async fn digest(&self, name: &str) -> String {
        use sha2::Digest;
        let image = format!("docker://{}/{name}:latest", self.addr);
        let raw = tokio::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &image])
            .output()
            .await
            .unwrap();
        assert!(raw.status.success(), "skopeo inspect {image}: {}", String::from_utf8_lossy(&raw.stderr));
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw.stdout)))
    }

    fn stop(&self) {
        let _ = std::process::Command::new(hack("registry"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

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
    let registry = Registry::start().await;
    let store = PodmanStore::new();
    let reference = format!("{}/busybox:latest", registry.addr);
    store.ok(&["pull", "-q", "--tls-verify=false", &reference]);
    let registry_digest = registry.digest("busybox").await;
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
