//! The registry lab of `hack/registry` (Debian's docker-registry on 127.0.0.1 with the lab's
//! images pushed) for tests that pull: no auth, Basic auth (`basic`) or Bearer tokens
//! (`token`). Stopped when dropped.

use std::path::{Path, PathBuf};

fn hack_registry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/registry")
}

fn run(args: &[&str]) -> String {
    run_with(args, &[])
}

fn run_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(hack_registry())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run hack/registry: {e}"));
    assert!(
        out.status.success(),
        "hack/registry {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab's images (`target/lab-images`), built once for every test run.
fn lab_images() -> PathBuf {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lab-images");
    run(&["images", images.to_str().unwrap()]);
    images
}

/// The OCI layout directory of lab image `name` (`busybox`, `labelled`, …).
pub fn lab_image_layout(name: &str) -> String {
    lab_images().join(name).display().to_string()
}

/// A running lab registry with the lab's images (`busybox`, `labelled`, `multi`, …).
pub struct LabRegistry {
    dir: tempfile::TempDir,
    pub addr: String,
}

impl LabRegistry {
    /// Builds the lab's images once (`target/lab-images`), starts a registry in `mode`
    /// (`none`, `basic`, `token`) and pushes them.
    pub fn start(mode: &str) -> LabRegistry {
        LabRegistry::start_with(mode, &[])
    }

    /// [`LabRegistry::start`] with `env` for hack/registry (e.g. `ECSD_LAB_USER` and
    /// `ECSD_LAB_PASSWORD` for another login).
    pub fn start_with(mode: &str, env: &[(&str, &str)]) -> LabRegistry {
        let images = lab_images();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let addr = run_with(&["start", &d, mode], env).trim().to_owned();
        let r = LabRegistry { dir, addr };
        run(&["push", &d, images.to_str().unwrap()]);
        r
    }

    /// `ADDR/name:latest`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}:latest", self.addr)
    }

    /// The digest the registry gives `name:latest`: that of its stored manifest's bytes
    /// (read with skopeo, so that every auth mode works).
    pub fn digest(&self, name: &str) -> String {
        use sha2::Digest;
        let mut args = vec!["inspect".to_owned(), "--raw".into(), "--tls-verify=false".into()];
        if let Some((user, password)) = self.credentials() {
            args.extend(["--creds".to_owned(), format!("{user}:{password}")]);
        }
        args.push(format!("docker://{}", self.image(name)));
        let raw = std::process::Command::new("skopeo").args(&args).output().expect("run skopeo");
        assert!(raw.status.success(), "skopeo inspect {name}: {}", String::from_utf8_lossy(&raw.stderr));
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw.stdout)))
    }

    /// The registry's access log (a line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (dropping it does too).
    pub fn stop(&self) {
        let _ = std::process::Command::new(hack_registry())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }

    /// The user name and password of a `basic` or `token` registry.
    pub fn credentials(&self) -> Option<(String, String)> {
        let creds = std::fs::read_to_string(self.dir.path().join("creds")).ok()?;
        let (user, password) = creds.trim().split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
    }
}

impl Drop for LabRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
