//! Where `ecsd deploy` sends its calls: the ECS endpoint, region and keys as the aws CLI
//! finds them, and each other service's endpoint from the SDKs' `AWS_ENDPOINT_URL_<SERVICE>`.

use crate::aws::{Aws, Client, Service, Settings};

use super::args::Flags;

/// The variables naming each service's endpoint, first set wins (the SDKs' names, then the
/// names local-ecs-api users set).
const ENDPOINT_VARIABLES: [(Service, &[&str]); 5] = [
    (Service::Ecs, &["AWS_ENDPOINT_URL_ECS", "AWS_ENDPOINT_URL"]),
    (Service::Iam, &["AWS_ENDPOINT_URL_IAM", "IAM_ENDPOINT"]),
    (Service::Sts, &["AWS_ENDPOINT_URL_STS", "STS_ENDPOINT"]),
    (Service::SecretsManager, &["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_SECRETSMANAGER"]),
    (Service::Ssm, &["AWS_ENDPOINT_URL_SSM"]),
];

/// The client every call of one run goes through.
#[derive(Debug)]
pub struct Session {
    pub client: Client,
    pub region: String,
}

pub async fn open(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Session {
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
    Session { client: Aws::new(settings).client(keys), region }
}
