//! Secrets Manager over AWS JSON 1.1: GetSecretValue, DescribeSecret.

use std::fmt;

use serde::Deserialize;

use super::{AwsError, Client, Service};

/// GetSecretValue's answer. `Debug` hides the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretValue {
    #[serde(rename = "ARN", default)]
    pub arn: String,
    #[serde(default)]
    pub name: String,
    pub version_id: Option<String>,
    /// The text of a text secret; `None` for a binary one.
    pub secret_string: Option<String>,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("arn", &self.arn)
            .field("name", &self.name)
            .field("version_id", &self.version_id)
            .field("secret_string", &self.secret_string.as_ref().map(|_| "** redacted **"))
            .finish()
    }
}

impl Client {
    /// The value of secret `secret_id` (a name or ARN), at `version_stage` or
    /// `version_id` when given (else AWSCURRENT).
    pub async fn get_secret_value(
        &self,
        secret_id: &str,
        version_stage: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<SecretValue, AwsError> {
        let mut input = serde_json::json!({ "SecretId": secret_id });
        if let Some(stage) = version_stage {
            input["VersionStage"] = stage.into();
        }
        if let Some(id) = version_id {
            input["VersionId"] = id.into();
        }
        self.json(Service::SecretsManager, "secretsmanager.GetSecretValue", &input).await
    }
}

/// DescribeSecret's answer: what a secret is, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretDescription {
    #[serde(rename = "ARN")]
    pub arn: String,
    #[serde(default)]
    pub name: String,
}

impl Client {
    /// The ARN and name of secret `secret_id` (a name or ARN), from DescribeSecret: no
    /// value is read. A secret that does not exist is `ResourceNotFoundException`.
    pub async fn describe_secret(&self, secret_id: &str) -> Result<SecretDescription, AwsError> {
        let input = serde_json::json!({ "SecretId": secret_id });
        self.json(Service::SecretsManager, "secretsmanager.DescribeSecret", &input).await
    }
}
