//! Starting ecsd for a test and talking to it.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use ecsd::Daemon;
use ecsd::model::time::{Clock, ManualClock, SystemClock};
use ecsd::network::fake::FakeNetwork;
use ecsd::runtime::ImageConfig;
use ecsd::runtime::fake::FakeRuntime;

/// A daemon on a free port with its own data dir, and an SDK client for it.
pub struct Ecsd {
    pub daemon: Option<Daemon>,
    pub client: Client,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// The runtime tasks run on: in memory, driven by the test.
    pub fake: Arc<FakeRuntime>,
    /// The network tasks get: made-up namespaces and addresses from the configured subnets.
    pub network: Arc<FakeNetwork>,
    /// The daemon's clock: it moves only when the test advances it.
    pub clock: Arc<ManualClock>,
    env: Vec<(String, String)>,
}

pub use crate::support::{client, config, eventually};

impl Ecsd {
    pub async fn start() -> Ecsd {
        Self::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> Ecsd {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Arc::new(FakeRuntime::default());
        fake.add_image(
            "docker.io/library/busybox:latest",
            ImageConfig {
                env: vec!["PATH=/bin".into()],
                cmd: Some(vec!["sh".into()]),
                ..ImageConfig::default()
            },
        );
        let cfg = config(dir.path(), env);
        let network = Arc::new(FakeNetwork::new(cfg.network.clone()));
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let daemon =
            ecsd::start_with(&cfg, fake.clone(), network.clone(), clock.clone()).await.expect("ecsd starts");
        let url = format!("http://{}", daemon.addr());
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ecsd { daemon: Some(daemon), client: client(&url), url, dir, fake, network, clock, env }
    }

    /// Stops the daemon and starts a new one on the same data dir and runtime.
    pub async fn restart(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await.expect("clean shutdown");
        }
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let daemon = ecsd::start_with(
            &config(self.dir.path(), &env),
            self.fake.clone(),
            self.network.clone(),
            self.clock.clone(),
        )
        .await
        .expect("ecsd restarts");
        self.url = format!("http://{}", daemon.addr());
        self.client = client(&self.url);
        self.daemon = Some(daemon);
    }
}

impl Ecsd {
    /// Polls `f` until it returns `Some`, moving the daemon's clock by `step` before each
    /// poll, for up to `secs` seconds of real time.
    pub async fn advancing<T, F, Fut>(&self, step: Duration, secs: u64, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually(secs, what, || {
            self.clock.advance(step);
            f()
        })
        .await
    }
}

/// The exception name and message of a failed call.
pub fn err<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> (String, String) {
    match e {
        SdkError::ServiceError(s) => {
            let e = s.into_err();
            (e.code().unwrap_or_default().to_owned(), e.message().unwrap_or_default().to_owned())
        }
        other => panic!("expected a service error, got {other:?}"),
    }
}

/// A small valid task definition request body for raw-HTTP and bulk use.
pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "us-east-1";

pub fn arn(resource: &str) -> String {
    format!("arn:aws:ecs:{REGION}:{ACCOUNT}:{resource}")
}
