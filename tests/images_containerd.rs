//! Pulls from real registries into the real containerd, through a whole in-process ecsd:
//! Debian's docker-registry on 127.0.0.1 (`hack/registry`) with no auth, Basic auth and
//! Bearer tokens, the lab's images (busybox, a multi-arch index, Docker v2s2, 50 MB in three
//! layers, a labelled image), counted by the registry's access log.
//!
//! Run by the root tier: `flock /tmp/ecsd-root.lock hack/test root`.

mod harness;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_ecs::types::RepositoryCredentials;
use harness::*;

/// The lab's images, built once per test run.
static IMAGES: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

async fn lab_images() -> &'static Path {
    IMAGES
        .get_or_init(|| async {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lab-images");
            run_cmd(&hack("registry"), &["images", out.to_str().unwrap()]).await;
            out
        })
        .await
}

fn hack(script: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack").join(script).display().to_string()
}

/// A registry of the lab with the images pushed; stopped when dropped.
struct Registry {
    dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    async fn start(mode: &str) -> Registry {
        Registry::start_as(mode, &[]).await
    }

    async fn start_as(mode: &str, env: &[(&str, &str)]) -> Registry {
        let images = lab_images().await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let out = tokio::process::Command::new(hack("registry"))
            .args(["start", &d, mode])
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "hack/registry start: {}", String::from_utf8_lossy(&out.stderr));
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let r = Registry { dir, addr };
        run_cmd(&hack("registry"), &["push", &d, images.to_str().unwrap()]).await;
        r
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{name}:latest", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Lines of the access log for GET `path` (e.g. `/v2/big/blobs/sha256:…`).
    fn gets(&self, path: &str) -> Vec<String> {
        let needle = format!("\"GET {path} ");
        self.log().lines().filter(|l| l.contains(&needle)).map(str::to_owned).collect()
    }

    /// The manifest (or index) the registry holds for `name:latest`, exactly as stored, read with
    /// skopeo so that every auth mode of the lab (Basic, Bearer tokens) works.
    async fn manifest(&self, name: &str) -> Vec<u8> {
        let mut args = vec!["inspect".to_owned(), "--raw".into(), "--tls-verify=false".into()];
        if let Ok(creds) = std::fs::read_to_string(self.dir.path().join("creds")) {
            args.extend(["--creds".to_owned(), creds]);
        }
        args.push(format!("docker://{}", self.image(name)));
        let out = tokio::process::Command::new("skopeo").args(&args).output().await.unwrap();
        assert!(out.status.success(), "skopeo inspect {name}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// The digest the registry answers for `name:latest`: that of the stored manifest's bytes.
    async fn digest(&self, name: &str) -> String {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(self.manifest(name).await)))
    }

    /// Pushes `name`: busybox plus `n` new layers of `mib` MiB no containerd has seen.
    async fn fresh(&self, name: &str, mib: u32, n: u32) {
        let images = lab_images().await.to_str().unwrap().to_owned();
        let d = self.dir.path().to_str().unwrap().to_owned();
        run_cmd(&hack("registry"), &["fresh", &d, &images, name, &mib.to_string(), &n.to_string()]).await;
    }

    /// The layer digests of single-platform image `name`.
    async fn layers(&self, name: &str) -> Vec<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.manifest(name).await).unwrap();
        let layers = body["layers"].as_array().unwrap_or_else(|| panic!("{name} has no layers: {body}"));
        layers.iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
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

fn app(image: &str) -> aws_sdk_ecs::types::ContainerDefinition {
    sh("app", "echo ran; exit 0").image(image).build()
}

/// Runs a one-container task of `image` until STOPPED.
async fn run_image(e: &Ecsd, family: &str, image: &str) -> aws_sdk_ecs::types::Task {
    e.register(family, vec![app(image)]).await;
    let arn = arn_of(&e.run(family).await);
    e.wait_status(&arn, "STOPPED").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn every_lab_image_runs_with_the_registrys_digest() {
    let _g = CONTAINERD.read().await;
    let reg = Registry::start("none").await;
    let e = Ecsd::start(&[("ECS_IMAGE_PULL_BEHAVIOR", "default")]).await;
    for (i, name) in ["busybox", "multi", "bb-v2s2", "big", "labelled"].iter().enumerate() {
        let t = run_image(&e, &format!("lab{i}"), &reg.image(name)).await;
        let c = named(&t, "app");
        assert_eq!(c.exit_code(), Some(0), "{name}: {:?} {:?}", t.stopped_reason(), c.reason());
        assert_eq!(c.image_digest(), Some(reg.digest(name).await.as_str()), "{name}");
        assert!(secs(t.pull_started_at()) <= secs(t.pull_stopped_at()), "{name}");
        assert!(secs(t.pull_stopped_at()) <= secs(t.started_at()), "{name}");
        assert_eq!(e.logs(&arn_of(&t), "app"), "ran\n", "{name}");
    }
    // Indistinguishable from `ctr images pull` for containerd: complete and unpacked.
    let check = e.ctr(&["images", "check"]).await;
    for name in ["busybox", "multi", "bb-v2s2", "big", "labelled"] {
        let line =
            check.lines().find(|l| l.starts_with(&reg.image(name))).unwrap_or_else(|| panic!("{check}"));
        assert!(line.contains("complete") && line.trim_end().ends_with("true"), "{line}");
    }
    let index_type = check.lines().find(|l| l.starts_with(&reg.image("multi"))).unwrap();
    assert!(index_type.contains("application/vnd.oci.image.index.v1+json"), "{index_type}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn missing_tags_wrong_passwords_and_stopped_registries_have_their_own_reasons() {
    let _g = CONTAINERD.read().await;
    let open = Registry::start("none").await;
    let basic = Registry::start("basic").await;
    let auth = format!(r#"{{"{}":{{"username":"ecsuser","password":"wrong"}}}}"#, basic.addr);
    let e = Ecsd::start(&[
        ("ECS_IMAGE_PULL_BEHAVIOR", "always"),
        ("ECS_ENGINE_AUTH_TYPE", "docker"),
        ("ECS_ENGINE_AUTH_DATA", &auth),
    ])
    .await;
    let missing = format!("{}/busybox:nope", open.addr);
    let t = run_image(&e, "missing", &missing).await;
    assert_eq!(t.stop_code().map(|c| c.as_str()), Some("TaskFailedToStart"));
    assert_eq!(
        t.stopped_reason().unwrap(),
        format!(
            "CannotPullContainerError: The task can\u{2019}t pull the image. Check whether the image exists. \
             failed to resolve reference \"{missing}\": {missing}: not found: manifest unknown: manifest unknown"
        )
    );
    let t = run_image(&e, "denied", &basic.image("busybox")).await;
    let reason = t.stopped_reason().unwrap();
    assert!(
        reason.starts_with(&format!(
            "CannotPullContainerError: failed to authorize: pull access denied for {}: unauthorized:",
            basic.image("busybox")
        )) && reason.ends_with(&format!("(credentials for {} were sent and refused)", basic.addr)),
        "{reason}"
    );
    assert!(!reason.contains("wrong"), "no password in reasons: {reason}");
    open.stop();
    let t = run_image(&e, "gone", &open.image("big")).await;
    let reason = t.stopped_reason().unwrap();
    assert!(
        reason.starts_with(&format!(
            "CannotPullContainerError: The task can\u{2019}t pull the image. Check your network configuration. \
             failed to do request: GET {}/v2/big/manifests/latest: ",
            open.addr
        )),
        "{reason}"
    );
    assert_eq!(named(&t, "app").reason(), Some(reason));
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn ten_tasks_of_one_uncached_image_download_each_blob_once() {
    let _g = CONTAINERD.read().await;
    let reg = Registry::start("token").await;
    // Content is shared by all of containerd's namespaces: an uncached image needs layers
    // no test has pulled before.
    reg.fresh("ten", 4, 3).await;
    let creds = format!(r#"{{"{}":{{"username":"ecsuser","password":"s3cret!"}}}}"#, reg.addr);
    let e = Ecsd::start(&[
        ("ECS_IMAGE_PULL_BEHAVIOR", "default"),
        ("ECS_ENGINE_AUTH_TYPE", "docker"),
        ("ECS_ENGINE_AUTH_DATA", &creds),
    ])
    .await;
    let layers = reg.layers("ten").await;
    let image = reg.image("ten");
    e.register("ten", vec![sh("app", IDLE).image(&image).build()]).await;
    let out = e.client.run_task().task_definition("ten").count(10).send().await.unwrap();
    assert_eq!(out.tasks().len(), 10, "{:?}", out.failures());
    for t in out.tasks() {
        let t = e.wait_status(&arn_of(t), "RUNNING").await;
        assert_eq!(named(&t, "app").image_digest(), Some(reg.digest("ten").await.as_str()));
    }
    // The busybox layer was there already (the harness imported it); each new one came once.
    for l in &layers[1..] {
        let gets = reg.gets(&format!("/v2/ten/blobs/{l}"));
        assert_eq!(gets.len(), 1, "layer {l}: {gets:?}");
    }
    assert_eq!(reg.gets(&format!("/v2/ten/blobs/{}", layers[0])).len(), 0);
    e.finish().await;
}

/// Forwards 127.0.0.1:<port> to `target`, sending the answers at about `bytes_per_sec`.
async fn throttle(target: String, bytes_per_sec: u64) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { return };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 32 << 10];
                    loop {
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec as f64))
                                    .await;
                            }
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn a_pull_killed_midway_resumes_after_a_restart() {
    let _g = CONTAINERD.read().await;
    let reg = Registry::start("none").await;
    reg.fresh("resume", 16, 3).await;
    let slow = throttle(reg.addr.clone(), 12 << 20).await;
    let mut e =
        Ecsd::start(&[("ECS_IMAGE_PULL_BEHAVIOR", "default"), ("ECSD_MAX_CONCURRENT_DOWNLOADS", "1")]).await;
    e.down().await;
    let mut p = e.spawn_binary();
    let c = client(&p.url);
    let image = format!("{slow}/resume:latest");
    let layers = reg.layers("resume").await;
    let path = |l: &str| format!("/v2/resume/blobs/{l}");
    c.register_task_definition()
        .family("resume")
        .container_definitions(sh("app", IDLE).image(&image).build())
        .volumes(
            aws_sdk_ecs::types::Volume::builder()
                .name("ctl")
                .host(
                    aws_sdk_ecs::types::HostVolumeProperties::builder()
                        .source_path(e.ctl.path().to_str().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let arn = c.run_task().task_definition("resume").send().await.unwrap().tasks()[0]
        .task_arn()
        .unwrap()
        .to_owned();
    // Kill it once the last layer's download is under way: the two before are complete
    // (one download at a time, in order).
    let last = layers.last().unwrap().clone();
    eventually(WAIT, "the last layer's download to start", || async {
        let active = e.try_ctr(&["content", "active"]).await.unwrap_or_default();
        (!reg.gets(&path(&last)).is_empty() && active.contains(&last)).then_some(())
    })
    .await;
    p.kill();
    e.up().await;
    let t = e.wait_status_for(&arn, "RUNNING", 120).await;
    assert_eq!(named(&t, "app").image_digest(), Some(reg.digest("resume").await.as_str()));
    for l in &layers[1..layers.len() - 1] {
        let gets = reg.gets(&path(l));
        assert_eq!(gets.len(), 1, "a finished layer is not downloaded again: {gets:?}");
    }
    let resumed = reg.gets(&path(&last));
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert!(resumed[1].contains("\" 206 "), "the second GET asked for the rest only: {resumed:?}");
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn repository_credentials_come_from_secrets_manager_and_ecr_from_its_api() {
    let _g = CONTAINERD.read().await;
    let moto = Moto::start();
    let basic = Registry::start("basic").await;
    // moto's ECR answers GetAuthorizationToken with AWS:<account>-auth-token.
    let ecr = Registry::start_as(
        "basic",
        &[("ECSD_LAB_USER", "AWS"), ("ECSD_LAB_PASSWORD", "123456789012-auth-token")],
    )
    .await;
    let secret = moto
        .aws(&[
            "secretsmanager",
            "create-secret",
            "--name",
            "registry-login",
            "--secret-string",
            r#"{"username":"ecsuser","password":"s3cret!"}"#,
        ])
        .await;
    let secret_arn = secret["ARN"].as_str().unwrap().to_owned();
    let mut env: Vec<(&str, String)> = moto.env();
    env.push(("AWS_ENDPOINT_URL_ECR", moto.url.clone()));
    env.push(("ECSD_ECR_REGISTRIES", ecr.addr.clone()));
    env.push(("ECS_IMAGE_PULL_BEHAVIOR", "default".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = Ecsd::start(&env).await;
    let with_creds = sh("app", "echo ran; exit 0")
        .image(basic.image("labelled"))
        .repository_credentials(
            RepositoryCredentials::builder().credentials_parameter(&secret_arn).build().unwrap(),
        )
        .build();
    e.client
        .register_task_definition()
        .family("asm")
        .execution_role_arn("arn:aws:iam::123456789012:role/exec")
        .container_definitions(with_creds)
        .volumes(
            aws_sdk_ecs::types::Volume::builder()
                .name("ctl")
                .host(
                    aws_sdk_ecs::types::HostVolumeProperties::builder()
                        .source_path(e.ctl.path().to_str().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let t = e.wait_status(&arn_of(&e.run("asm").await), "STOPPED").await;
    assert_eq!(named(&t, "app").exit_code(), Some(0), "{:?} {:?}", t.stopped_reason(), named(&t, "app"));
    // Without the credentials parameter an image of the same registry is refused: the secret did
    // it. (Not the same image: with the default behaviour a failed pull falls back to the copy
    // the first task left, as the agent does.)
    let t = run_image(&e, "noasm", &basic.image("busybox")).await;
    assert!(t.stopped_reason().unwrap().contains("failed to authorize"), "{:?}", t.stopped_reason());
    // ECR: the login comes from GetAuthorizationToken.
    let t = run_image(&e, "ecr", &ecr.image("busybox")).await;
    let logs = e.logs(&arn_of(&t), "app");
    assert_eq!(
        named(&t, "app").exit_code(),
        Some(0),
        "{:?} {:?} {logs}",
        t.stopped_reason(),
        named(&t, "app")
    );
    e.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and containerd"]
async fn once_and_prefer_cached_skip_the_registry_and_cleanup_keeps_used_images() {
    let _g = CONTAINERD.read().await;
    let reg = Registry::start("none").await;
    let manifests = |name: &str| reg.gets(&format!("/v2/{name}/manifests/latest")).len();
    let mut e =
        Ecsd::start(&[("ECS_IMAGE_PULL_BEHAVIOR", "once"), ("ECS_IMAGE_MINIMUM_CLEANUP_AGE", "0s")]).await;
    let first = run_image(&e, "once1", &reg.image("busybox")).await;
    assert!(first.pull_started_at().is_some());
    let n = manifests("busybox");
    let second = run_image(&e, "once2", &reg.image("busybox")).await;
    assert_eq!(manifests("busybox"), n, "once: no second request to the registry");
    assert_eq!(second.pull_started_at(), None);
    assert_eq!(named(&second, "app").image_digest(), named(&first, "app").image_digest());
    // always: asks the registry every time.
    e.down().await;
    e.env.retain(|(k, _)| k != "ECS_IMAGE_PULL_BEHAVIOR");
    e.env.push(("ECS_IMAGE_PULL_BEHAVIOR".into(), "always".into()));
    e.up().await;
    run_image(&e, "always", &reg.image("busybox")).await;
    assert_eq!(manifests("busybox"), n + 1, "always asks the registry");
    // Cleanup: the labelled image's task stopped; the multi image's task runs.
    run_image(&e, "unused", &reg.image("labelled")).await;
    e.register("used", vec![sh("app", IDLE).image(reg.image("multi")).build()]).await;
    let used = arn_of(&e.run("used").await);
    e.wait_status(&used, "RUNNING").await;
    let engine = e.daemon.as_ref().unwrap().engine().clone();
    let removed = engine.clean_images().await.unwrap();
    assert!(removed.contains(&reg.image("labelled")), "{removed:?}");
    assert!(!removed.contains(&reg.image("multi")), "{removed:?}");
    let listed = e.ctr(&["images", "ls", "-q"]).await;
    assert!(!listed.contains(&reg.image("labelled")) && listed.contains(&reg.image("multi")), "{listed}");
    e.stop(&used, "done").await;
    e.finish().await;
}
