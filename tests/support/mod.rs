//! What every integration test of ecsd shares: an SDK client for a daemon, the daemon's
//! config for a test, waiting for a condition instead of sleeping, and where the root tier's
//! private containerd and test image are. Each test crate includes it with `mod support;`
//! (the API tests with a `#[path]`).
#![allow(dead_code)]

pub mod outside;
pub mod podman;
pub mod registry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use ecsd::config::{Config, ServeArgs};

/// An SDK client for the ecsd at `url`, with any credentials (ecsd does not check them) and
/// no retries, so a test sees every answer as it is.
pub fn client(url: &str) -> Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(url)
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

/// A daemon config for a test: a free port, `dir` as the data dir, and `extra` as the only
/// environment it sees.
pub fn config(dir: &Path, extra: &[(&str, &str)]) -> Config {
    config_with(ServeArgs::default(), dir, extra)
}

/// [`config`] starting from `args` (a containerd address, a namespace...).
pub fn config_with(args: ServeArgs, dir: &Path, extra: &[(&str, &str)]) -> Config {
    let args = ServeArgs { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.to_owned()), ..args };
    // Tests run side by side: each introspection API on a free port, and no host ecs.config.
    let mut vars: Vec<(String, String)> = vec![
        ("ECSD_INTROSPECTION_LISTEN".into(), "127.0.0.1:0".into()),
        ("ECSD_ECS_CONFIG".into(), "/dev/null".into()),
    ];
    vars.retain(|(k, _)| !extra.iter().any(|(n, _)| n == k));
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::resolve(&args, &|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).expect("config")
}

/// Polls `f` every 10 ms until it returns `Some`, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `RUST_LOG=ecsd=debug` shows an in-process daemon's logs with the test's output.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The root tier's private containerd (`hack/containerd start DIR`).
pub fn socket() -> PathBuf {
    match std::env::var_os("ECSD_TEST_CONTAINERD") {
        Some(s) => PathBuf::from(s),
        None => panic!(
            "ECSD_TEST_CONTAINERD is not set: start a private containerd with `hack/containerd start DIR` \
             and export ECSD_TEST_CONTAINERD=DIR/containerd.sock (hack/test does this for the root tier)"
        ),
    }
}

/// The test image `hack/build-test-image` builds.
pub fn image_tar() -> PathBuf {
    match std::env::var_os("ECSD_TEST_IMAGE") {
        Some(s) => PathBuf::from(s),
        None => panic!(
            "ECSD_TEST_IMAGE is not set: build the image with `hack/build-test-image` and export \
             ECSD_TEST_IMAGE=target/test-images/busybox.tar (hack/test does this for the root tier)"
        ),
    }
}

/// Writes to `out` the test image archive with its two images renamed by `name` (given each
/// one's `io.containerd.image.name`), as a user would save images of their own.
pub fn test_images_renamed(out: &Path, name: impl Fn(&str) -> String) {
    let mut archive = tar::Archive::new(std::fs::File::open(image_tar()).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(out).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path == Path::new("index.json") {
            let mut index: serde_json::Value = serde_json::from_slice(&data).unwrap();
            for m in index["manifests"].as_array_mut().unwrap() {
                let old = m["annotations"]["io.containerd.image.name"].as_str().unwrap().to_owned();
                m["annotations"]["io.containerd.image.name"] = name(&old).into();
            }
            data = serde_json::to_vec(&index).unwrap();
            header.set_size(data.len() as u64);
            header.set_cksum();
        }
        builder.append_data(&mut header, &path, data.as_slice()).unwrap();
    }
    builder.finish().unwrap();
}

/// A moto_server on 127.0.0.1 (the `.venv` of hack/setup, or `ECSD_MOTO_SERVER`): the STS,
/// IAM, Secrets Manager and SSM that the endpoint tests talk to. Killed when dropped.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
}

impl Moto {
    pub fn start() -> Moto {
        use std::io::BufRead;
        let program = std::env::var_os("ECSD_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
        let mut child = std::process::Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {} ({e}): run hack/setup, or set ECSD_MOTO_SERVER", program.display())
            });
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(at) = line.find("Running on http://127.0.0.1:") {
                url = Some(line[at + "Running on ".len()..].trim().to_owned());
                break;
            }
        }
        let url = url.unwrap_or_else(|| panic!("{} did not say where it listens", program.display()));
        Moto { child, url }
    }

    /// Runs the aws CLI of the .venv against moto; returns its JSON answer.
    pub async fn aws(&self, args: &[&str]) -> serde_json::Value {
        let aws = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws");
        let out = tokio::process::Command::new(&aws)
            .args(["--endpoint-url", &self.url, "--region", "us-east-1", "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", aws.display()));
        assert!(
            out.status.success(),
            "aws {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The environment that points ecsd's STS, Secrets Manager and SSM calls at moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_STS", self.url.clone()),
            ("AWS_ENDPOINT_URL_SECRETSMANAGER", self.url.clone()),
            ("AWS_ENDPOINT_URL_SSM", self.url.clone()),
            ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "test".into()),
            ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }
}

/// `ecsd deploy` (the binary) as a user in `dir` runs it: keys `test`, region us-east-1, no
/// profile files, IAM, STS, Secrets Manager and SSM at moto.
pub fn ecsd_deploy(dir: &Path, moto: &Moto) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecsd"));
    cmd.arg("deploy")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
        .env("AWS_ENDPOINT_URL_IAM", &moto.url)
        .env("AWS_ENDPOINT_URL_STS", &moto.url)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto.url)
        .env("AWS_ENDPOINT_URL_SSM", &moto.url);
    cmd
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
