//! Which credentials a pull uses, in the ECS agent's order:
//!
//! 1. ECR: a registry host `<account>.dkr.ecr.<region>.amazonaws.com` (or, with
//!    `AWS_ENDPOINT_URL_ECR` set, any `<account>.dkr.ecr.<region>.<domain>`, and any registry
//!    in `ECSD_ECR_REGISTRIES`) gets a GetAuthorizationToken login signed with the task's
//!    execution role (ecsd's own keys without one), cached until 30 minutes before it expires;
//! 2. the container's `repositoryCredentials.credentialsParameter`: a Secrets Manager secret
//!    `{"username","password"}` read with the execution role;
//! 3. `ECS_ENGINE_AUTH_TYPE`/`ECS_ENGINE_AUTH_DATA`;
//! 4. the host's docker config (`auths`, `credHelpers`, `credsStore`);
//! 5. none.
//!
//! No credential is logged or put in an error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tracing::debug;

use super::images::ImageSettings;
use crate::aws::{Aws, AwsError, Keys};
use crate::endpoints::credentials::CredentialError;
use crate::runtime::reference::Reference;
use crate::runtime::registry::Credentials;
use crate::runtime::registry::credentials::{self, CredentialSourceError};

/// A cached ECR login is renewed this long before it expires (the agent: 30 min + jitter).
const ECR_REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);

/// Where the keys for ECR and Secrets Manager come from: the task's execution role (engine)
/// or ecsd's own identity (`ecsd image pull`).
#[async_trait]
pub trait AwsKeys: Send + Sync {
    async fn keys(&self) -> Result<Keys, KeysError>;
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Execution(CredentialError),
    #[error("{0}")]
    Own(AwsError),
}

/// Why a pull's credentials could not be had: the task's stopped reason.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("CannotPullECRContainerError: engine ecr credentials: not found: {0}")]
    EcrKeys(KeysError),
    #[error(
        "CannotPullECRContainerError: unable to get an ECR authorization token for registry {registry}: {error}"
    )]
    Ecr { registry: String, error: AwsError },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: {0}"
    )]
    AsmKeys(KeysError),
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secret from asm: failed to fetch secret {value_from} from secrets manager: \
         {error}"
    )]
    Asm { value_from: String, error: AwsError },
    #[error(
        "CannotPullContainerAuthError: asm fetching authorization data for {value_from}: unable to unmarshal \
         secret value, invalid schema (want {{\"username\":\"…\",\"password\":\"…\"}})"
    )]
    AsmSchema { value_from: String },
    #[error(
        "CannotPullContainerAuthError: asm fetching {field} of {value_from}: AuthorizationData is malformed, empty field"
    )]
    AsmEmpty { value_from: String, field: &'static str },
    #[error("CannotPullContainerError: {0}")]
    Source(CredentialSourceError),
}

/// An ECR registry: its account (when the host names it) and region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrRegistry {
    pub account: Option<String>,
    pub region: String,
}

/// Whether registry `domain` (`host[:port]`) is ECR, and which.
pub fn ecr_registry(domain: &str, settings: &ImageSettings, default_region: &str) -> Option<EcrRegistry> {
    let host = domain.split(':').next().unwrap_or(domain);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() >= 5
        && parts[0].len() == 12
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1] == "dkr"
        && (parts[2] == "ecr" || parts[2] == "ecr-fips")
    {
        let rest = parts[4..].join(".");
        let aws = rest == "amazonaws.com" || rest == "amazonaws.com.cn";
        if aws || settings.ecr_endpoint_configured {
            return Some(EcrRegistry { account: Some(parts[0].to_owned()), region: parts[3].to_owned() });
        }
    }
    settings
        .ecr_registries
        .iter()
        .any(|r| r == "*" || r.eq_ignore_ascii_case(domain))
        .then(|| EcrRegistry { account: None, region: default_region.to_owned() })
}

/// Resolves a pull's credentials; one per daemon (it caches ECR logins).
#[derive(Debug)]
pub struct RegistryAuth {
    settings: ImageSettings,
    aws: Aws,
    /// ECR logins by (region, account, keys), with their expiry.
    ecr: Mutex<HashMap<String, (Credentials, SystemTime)>>,
}

impl RegistryAuth {
    pub fn new(settings: ImageSettings, aws: Aws) -> RegistryAuth {
        RegistryAuth { settings, aws, ecr: Mutex::new(HashMap::new()) }
    }

    pub fn settings(&self) -> &ImageSettings {
        &self.settings
    }

    /// The credentials for pulling `r`, for a container whose `repositoryCredentials` name
    /// `repository_credentials`; `keys` are asked for only when ECR or Secrets Manager is.
    pub async fn for_image(
        &self,
        r: &Reference,
        repository_credentials: Option<&str>,
        keys: &dyn AwsKeys,
    ) -> Result<Option<Credentials>, AuthError> {
        if let Some(ecr) = ecr_registry(&r.domain, &self.settings, &self.aws.settings().region) {
            let keys = keys.keys().await.map_err(AuthError::EcrKeys)?;
            return self.ecr_login(&r.domain, &ecr, keys).await.map(Some);
        }
        if let Some(value_from) = repository_credentials.filter(|v| !v.is_empty()) {
            let keys = keys.keys().await.map_err(AuthError::AsmKeys)?;
            return self.asm(value_from, keys).await.map(Some);
        }
        if let Some(c) = self.settings.engine_auth.lookup(&r.domain, &r.path) {
            debug!(registry = %r.domain, "registry credentials from ECS_ENGINE_AUTH_DATA");
            return Ok(Some(c));
        }
        if let Some(dir) = &self.settings.docker_config
            && let Some(c) =
                credentials::docker_config_lookup(dir, &r.domain).await.map_err(AuthError::Source)?
        {
            debug!(registry = %r.domain, "registry credentials from the docker config");
            return Ok(Some(c));
        }
        Ok(None)
    }

    async fn ecr_login(&self, domain: &str, ecr: &EcrRegistry, keys: Keys) -> Result<Credentials, AuthError> {
        let key = format!("{}\0{}\0{}", ecr.region, ecr.account.as_deref().unwrap_or(""), keys.access_key_id);
        let now = SystemTime::now();
        if let Some((c, expires)) = self.ecr.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *expires > now + ECR_REFRESH_MARGIN
        {
            return Ok(c.clone());
        }
        let client = self.aws.client(keys).in_region(&ecr.region);
        let login = client
            .get_authorization_token(ecr.account.as_deref())
            .await
            .map_err(|error| AuthError::Ecr { registry: domain.to_owned(), error })?;
        let creds = Credentials::Basic { username: login.username, password: login.password };
        let mut cache = self.ecr.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (_, until)| *until > now);
        cache.insert(key, (creds.clone(), login.expires_at));
        debug!(registry = %domain, "ECR login");
        Ok(creds)
    }

    async fn asm(&self, value_from: &str, keys: Keys) -> Result<Credentials, AuthError> {
        // A secret ARN names its region; a name is in the daemon's.
        let region = value_from
            .strip_prefix("arn:")
            .and_then(|rest| rest.split(':').nth(2))
            .filter(|r| !r.is_empty())
            .unwrap_or(&self.aws.settings().region)
            .to_owned();
        let client = self.aws.client(keys).in_region(&region);
        let value = client
            .get_secret_value(value_from, None, None)
            .await
            .map_err(|error| AuthError::Asm { value_from: value_from.to_owned(), error })?;
        let schema = || AuthError::AsmSchema { value_from: value_from.to_owned() };
        let text = value.secret_string.ok_or_else(schema)?;
        let map: HashMap<String, serde_json::Value> = serde_json::from_str(&text).map_err(|_| schema())?;
        // Go decodes the keys case-insensitively.
        let field = |name: &'static str| -> Result<String, AuthError> {
            match map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(serde_json::Value::String(_)) | None => {
                    Err(AuthError::AsmEmpty { value_from: value_from.to_owned(), field: name })
                }
                Some(_) => Err(schema()),
            }
        };
        Ok(Credentials::Basic { username: field("username")?, password: field("password")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_are_recognised() {
        let s = ImageSettings::default();
        assert_eq!(
            ecr_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com", &s, "us-east-1"),
            Some(EcrRegistry { account: Some("123456789012".into()), region: "eu-west-1".into() })
        );
        assert!(ecr_registry("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", &s, "x").is_some());
        assert!(ecr_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", &s, "x").is_some());
        assert_eq!(ecr_registry("docker.io", &s, "x"), None);
        assert_eq!(ecr_registry("127.0.0.1:5000", &s, "x"), None);
        let local = "000000000000.dkr.ecr.us-east-1.localhost.localstack.cloud:4566";
        assert_eq!(ecr_registry(local, &s, "x"), None);
        let with_endpoint = ImageSettings { ecr_endpoint_configured: true, ..ImageSettings::default() };
        assert_eq!(ecr_registry(local, &with_endpoint, "x").map(|e| e.region), Some("us-east-1".into()));
        let listed =
            ImageSettings { ecr_registries: vec!["127.0.0.1:5000".into()], ..ImageSettings::default() };
        assert_eq!(
            ecr_registry("127.0.0.1:5000", &listed, "us-west-2"),
            Some(EcrRegistry { account: None, region: "us-west-2".into() })
        );
        assert_eq!(ecr_registry("127.0.0.1:5001", &listed, "us-west-2"), None);
    }
}
