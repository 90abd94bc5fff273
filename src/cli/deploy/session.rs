//! Where `ecsd deploy`'s calls go: the ECS endpoint, region and keys as the aws CLI finds
//! them, each other service's endpoint from the SDKs' `AWS_ENDPOINT_URL_<SERVICE>`, and the
//! registry settings and credentials `ecsd image pull` uses, for reading a template label.

use async_trait::async_trait;

use crate::aws::{Aws, Client, Keys, Service, Settings};
use crate::engine::images::ImageSettings;
use crate::engine::registry_auth::{AwsKeys, KeysError};

use super::args::Flags;
use super::error::DeployError;

/// The variables naming each service's endpoint, first set wins (the SDKs' names, then the
/// names local-ecs-api users set).
const ENDPOINT_VARIABLES: [(Service, &[&str]); 6] = [
    (Service::Ecs, &["AWS_ENDPOINT_URL_ECS", "AWS_ENDPOINT_URL"]),
    (Service::Iam, &["AWS_ENDPOINT_URL_IAM", "IAM_ENDPOINT"]),
    (Service::Sts, &["AWS_ENDPOINT_URL_STS", "STS_ENDPOINT"]),
    (Service::SecretsManager, &["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_SECRETSMANAGER"]),
    (Service::Ssm, &["AWS_ENDPOINT_URL_SSM"]),
    (Service::Ecr, &["AWS_ENDPOINT_URL_ECR"]),
];

/// The client every call of one run goes through.
#[derive(Debug)]
pub struct Session {
    pub client: Client,
    pub region: String,
    pub aws: Aws,
    pub keys: Keys,
    /// Registry settings and credential sources as `ecsd image pull` reads them
    /// (`ECS_ENGINE_AUTH_*`, the docker config, `ECSD_ECR_REGISTRIES`, `ECSD_INSECURE_REGISTRIES`…),
    /// with `--insecure-registry` added.
    pub images: ImageSettings,
}

pub async fn open(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Session, DeployError> {
    let (_, region, keys) =
        super::super::sdk_identity(flags.region.clone(), flags.profile.clone(), env).await;
    let mut settings = Settings::new(&region);
    for (service, names) in ENDPOINT_VARIABLES {
        if let Some(url) = names.iter().find_map(|n| env(n).filter(|v| !v.is_empty())) {
            settings.endpoints.set(service, &url);
        }
    }
    if let Some(url) = &flags.endpoint_url {
        settings.endpoints.set(Service::Ecs, url);
    }
    let ecr_endpoint = settings.endpoints.get(Service::Ecr).is_some();
    let mut images = crate::config::resolve_images(env, ecr_endpoint).map_err(DeployError::Settings)?;
    images.registry.insecure.extend(flags.insecure_registry.iter().cloned());
    let aws = Aws::new(settings);
    Ok(Session { client: aws.client(keys.clone()), region, aws, keys, images })
}

/// The run's own keys, for an ECR login.
pub struct SessionKeys<'a>(pub &'a Keys);

#[async_trait]
impl AwsKeys for SessionKeys<'_> {
    async fn keys(&self) -> Result<Keys, KeysError> {
        Ok(self.0.clone())
    }
}
