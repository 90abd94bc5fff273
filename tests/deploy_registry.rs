//! `ecsd deploy render` reading its template from an image label in the registry lab
//! (Debian's docker-registry on 127.0.0.1, `hack/registry`): only the manifest and the
//! config blob are fetched, never a layer; an image without the label is exit 3 listing the
//! labels it has.
//!
//! Run by the root tier with the other registry-lab tests: `flock -o /tmp/ecsd-root.lock hack/test root`.

use std::path::{Path, PathBuf};
use std::process::Output;

fn hack(script: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack").join(script).display().to_string()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A registry of the lab with its images pushed; stopped when dropped.
struct Registry {
    dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    fn start() -> Registry {
        let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/lab-images");
        run(&hack("registry"), &["images", images.to_str().unwrap()]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let addr = run(&hack("registry"), &["start", &d, "none"]).trim().to_owned();
        let registry = Registry { dir, addr };
        run(&hack("registry"), &["push", &d, images.to_str().unwrap()]);
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = std::process::Command::new(hack("registry"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

fn render(image: &str, label: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["deploy", "render", "--image", image, "--template-label", label, "--set", "/cpu=\"256\""])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root and containerd"]
fn the_template_comes_from_the_image_label_without_a_layer_download() {
    let registry = Registry::start();
    let image = format!("{}/labelled:latest", registry.addr);
    let out = render(&image, "com.example.ecs.task-definition");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{{\n  \"family\": \"from-label\",\n  \"containerDefinitions\": [\n    {{\n      \"name\": \"app\",\n      \
             \"image\": \"{image}\",\n      \"memory\": 32\n    }}\n  ],\n  \"cpu\": \"256\"\n}}\n"
        )
    );
    let log = registry.log();
    assert!(log.contains("\"GET /v2/labelled/manifests/latest "), "the manifest was read: {log}");
    let blob_gets = log.lines().filter(|l| l.contains("\"GET /v2/labelled/blobs/")).count();
    assert_eq!(blob_gets, 1, "only the config blob is fetched: {log}");

    // The same image, a label it does not have: exit 3 listing the labels it has.
    let out = render(&image, "ECS_TASK_TEMPLATE");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: image {image} has no label 'ECS_TASK_TEMPLATE' (labels: com.example.ecs.task-definition); build \
             with --build-arg ECS_TASK_TEMPLATE=\"$(cat ecs_task_template.json)\" and LABEL \
             ECS_TASK_TEMPLATE=$ECS_TASK_TEMPLATE, or pass --template\n"
        )
    );
    let out = render(&format!("{}/busybox:latest", registry.addr), "ECS_TASK_TEMPLATE");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no label 'ECS_TASK_TEMPLATE' (labels: ecsd.test.image)"), "{stderr}");
}
