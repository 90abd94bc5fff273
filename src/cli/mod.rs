//! The client subcommands of the `ecsd` binary: API clients of an ecsd (or any ECS endpoint),
//! never reaching into a daemon's internals.

pub mod deploy;
pub mod exec;
pub mod services;

use crate::aws::{Aws, AwsError, Keys, Service, Settings};

/// The `X-Amz-Target` prefix of every ECS operation.
const TARGET: &str = "AmazonEC2ContainerServiceV20141113.";

/// Keys for an endpoint that does not check signatures (ecsd does not) when none are found;
/// an endpoint that checks refuses them with its own error.
fn placeholder() -> Keys {
    Keys::new("ECSDEXECNOCREDENTIALS", "ecsd-exec-has-no-credentials", None)
}

/// The ECS calls of the client subcommands, made through the `aws` module like every AWS
/// call (signing, retries, bounded answers, ECS's errors as `Code: message`).
struct Ecs {
    client: crate::aws::Client,
}

impl Ecs {
    fn new(endpoint: &str, region: &str, keys: Keys) -> Ecs {
        let mut settings = Settings::new(region);
        settings.endpoints.set(Service::Ecs, endpoint);
        // Quick to fail against a local ecsd that is not there.
        settings.limits.attempts = 2;
        settings.limits.backoff = std::time::Duration::from_millis(200);
        Ecs { client: Aws::new(settings).client(keys) }
    }

    async fn call<O: serde::de::DeserializeOwned>(
        &self,
        target: &'static str,
        input: serde_json::Value,
    ) -> Result<O, AwsError> {
        debug_assert!(target.starts_with(TARGET));
        self.client.json(Service::Ecs, target, &input).await
    }
}
