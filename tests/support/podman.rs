//! Podman for the root tests: the private store of a data dir (the one `ecsd serve --runtime
//! podman` and `ecsd::runtime::podman::service` use, under `DATA_DIR/podman/`), the test images
//! copied into it, the podman CLI pointed at it, and its removal.

use std::path::Path;
use std::time::{Duration, Instant};

use super::image_tar;

/// The images of `hack/build-test-image`.
pub const IMAGES: [&str; 2] =
    ["docker.io/library/busybox:latest", "docker.io/library/busybox-stopsignal:latest"];

/// Whether podman and skopeo are installed. A test that needs them and does not find them
/// fails, unless `ECSD_TEST_SKIPPED` names a file: then it writes its name there and returns,
/// and hack/test reports it as skipped by name, never as passed.
pub fn podman_tools(test: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = ["podman", "skopeo"]
        .into_iter()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    match std::env::var_os("ECSD_TEST_SKIPPED") {
        Some(file) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
            writeln!(f, "{test}: {} not installed", missing.join(" and ")).unwrap();
            false
        }
        None => panic!("{test} needs {} on PATH", missing.join(" and ")),
    }
}

/// The global flags that point the podman CLI at the store of data dir `dir`.
pub fn store_flags(dir: &Path) -> Vec<String> {
    let p = dir.join("podman");
    vec![
        "--root".into(),
        p.join("root").display().to_string(),
        "--runroot".into(),
        p.join("runroot").display().to_string(),
        "--tmpdir".into(),
        p.join("tmp").display().to_string(),
        "--storage-driver".into(),
        "overlay".into(),
    ]
}

/// Copies the test images into the Podman store of data dir `dir` (made if missing). The
/// archive holds two images that skopeo can only tell apart by full name, so the layout's
/// `ref.name` annotations are set to the names first.
pub fn load_test_images(dir: &Path) {
    let layout = tempfile::tempdir().unwrap();
    let file = std::fs::File::open(image_tar()).unwrap();
    tar::Archive::new(file).unpack(layout.path()).unwrap();
    let index_path = layout.path().join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        let name = m["annotations"]["io.containerd.image.name"].clone();
        m["annotations"]["org.opencontainers.image.ref.name"] = name;
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let p = dir.join("podman");
    let store =
        format!("containers-storage:[overlay@{}+{}]", p.join("root").display(), p.join("runroot").display());
    for name in IMAGES {
        let out = std::process::Command::new("skopeo")
            .args([
                "copy",
                "-q",
                &format!("oci:{}:{name}", layout.path().display()),
                &format!("{store}{name}"),
            ])
            .output()
            .expect("run skopeo");
        assert!(out.status.success(), "skopeo copy {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Removes every container of data dir `dir`'s store, stops its service (pid `pid`, if any)
/// and unmounts what containers/storage left mounted, so the temp dir can go.
pub fn clean_store(dir: &Path, pid: u32) {
    let p = dir.join("podman");
    if !p.exists() {
        return;
    }
    let _ = std::process::Command::new("podman")
        .env("CONTAINERS_CONF", p.join("containers.conf"))
        .args(store_flags(dir))
        .args(["rm", "--all", "--force", "--time", "0"])
        .output();
    if pid != 0 {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&*p.to_string_lossy()))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = std::process::Command::new("umount").arg("-l").arg(m).output();
    }
}

/// The podman CLI on the store of data dir `dir` (with the containers.conf ecsd's service
/// wrote there): it reads the store itself, so it answers while the service is down too.
pub fn cli(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("podman");
    cmd.env("CONTAINERS_CONF", dir.join("podman/containers.conf")).args(store_flags(dir));
    cmd
}

/// Runs the podman CLI on the store of `dir` and returns its stdout; panics when it fails.
pub fn run(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir).args(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One container of `podman ps --all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// 0 unless it runs.
    pub pid: u32,
    /// Podman's state: created, running, exited, stopped...
    pub state: String,
}

/// Every container of the store of `dir`.
pub fn ps(dir: &Path) -> Vec<Listed> {
    let out = run(dir, &["ps", "--all", "--format", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    listed
        .iter()
        .map(|c| Listed {
            name: c["Names"][0].as_str().unwrap_or_default().to_owned(),
            pid: c["Pid"].as_u64().unwrap_or(0) as u32,
            state: c["State"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// `podman inspect` of container `name` in the store of `dir`.
pub fn inspect(dir: &Path, name: &str) -> serde_json::Value {
    let out = run(dir, &["container", "inspect", name]);
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[0].take()
}

/// The conmon processes (containers and exec sessions) of the store of `dir`: conmon's
/// arguments name the store's run root and exit directories.
pub fn conmons(dir: &Path) -> Vec<String> {
    let store = dir.join("podman").display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_conmon = args.first().is_some_and(|a| a.rsplit('/').next() == Some("conmon"));
        if is_conmon && args.iter().any(|a| a.contains(&store)) {
            found.push(format!("{} {}", entry.file_name().to_string_lossy(), args.join(" ")));
        }
    }
    found
}
