//! ECR over AWS JSON 1.1: GetAuthorizationToken, the password of a registry's `AWS` user.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::Deserialize;

use super::{AwsError, Client, Malformed, Service};

const OPERATION: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";

/// A registry login from GetAuthorizationToken. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EcrLogin {
    /// `AWS` for ECR.
    pub username: String,
    pub password: String,
    pub expires_at: SystemTime,
    /// `https://<account>.dkr.ecr.<region>.amazonaws.com`.
    pub proxy_endpoint: String,
}

impl fmt::Debug for EcrLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcrLogin")
            .field("username", &self.username)
            .field("password", &"** redacted **")
            .field("expires_at", &self.expires_at)
            .field("proxy_endpoint", &self.proxy_endpoint)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    #[serde(default)]
    authorization_data: Vec<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    #[serde(default)]
    authorization_token: Option<String>,
    #[serde(default)]
    expires_at: Option<f64>,
    #[serde(default)]
    proxy_endpoint: Option<String>,
}

impl Client {
    /// A login for the registry of account `registry_id` (the caller's own when `None`).
    pub async fn get_authorization_token(&self, registry_id: Option<&str>) -> Result<EcrLogin, AwsError> {
        let input = match registry_id {
            // Deprecated by ECR but still sent by the agent; ECR answers for that registry.
            Some(id) => serde_json::json!({ "registryIds": [id] }),
            None => serde_json::json!({}),
        };
        let out: Output = self.json(Service::Ecr, OPERATION, &input).await?;
        let malformed =
            |problem| AwsError::Malformed { service: Service::Ecr, operation: OPERATION, problem };
        let data = out
            .authorization_data
            .into_iter()
            .next()
            .ok_or(malformed(Malformed::Missing("authorizationData")))?;
        let token = data.authorization_token.ok_or(malformed(Malformed::Missing("authorizationToken")))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(malformed(Malformed::Invalid("authorizationToken")))?;
        let (username, password) =
            decoded.split_once(':').ok_or(malformed(Malformed::Invalid("authorizationToken")))?;
        // ECR's tokens last 12 hours; an answer without a time is taken as that.
        let expires_at = match data.expires_at {
            Some(t) if t.is_finite() && t > 0.0 => SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t),
            _ => SystemTime::now() + Duration::from_secs(12 * 3600),
        };
        Ok(EcrLogin {
            username: username.to_owned(),
            password: password.to_owned(),
            expires_at,
            proxy_endpoint: data.proxy_endpoint.unwrap_or_default(),
        })
    }
}
