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

/// The region, SDK configuration and keys as the aws CLI finds them: the region from the
/// flag, `AWS_REGION`/`AWS_DEFAULT_REGION`, the profile, else us-east-1 (never instance
/// metadata: these commands often talk to a local ecsd); keys from the standard chain, else
/// a placeholder, which ecsd accepts (it does not check signatures) and an endpoint that
/// checks refuses with its own error.
async fn sdk_identity(
    region: Option<String>,
    profile: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (aws_types::SdkConfig, String, Keys) {
    use aws_config::meta::region::RegionProviderChain;
    use aws_credential_types::provider::ProvideCredentials;
    let profile = profile.or_else(|| env("AWS_PROFILE").filter(|p| !p.is_empty()));
    let mut profile_region = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(p) = &profile {
        profile_region = profile_region.profile_name(p);
    }
    let region = RegionProviderChain::first_try(region.map(aws_config::Region::new))
        .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(profile_region.build())
        .or_else(aws_config::Region::from_static("us-east-1"));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region);
    if let Some(p) = &profile {
        loader = loader.profile_name(p);
    }
    let sdk = loader.load().await;
    let region = sdk.region().map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
    let keys = match sdk.credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            Ok(c) => Keys::new(c.access_key_id(), c.secret_access_key(), c.session_token()),
            Err(e) => {
                tracing::debug!(error = %e, "no AWS credentials found; signing with a placeholder");
                placeholder()
            }
        },
        None => placeholder(),
    };
    (sdk, region, keys)
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
