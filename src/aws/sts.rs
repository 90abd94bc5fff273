//! STS over the Query protocol: AssumeRole and GetCallerIdentity.

use std::time::{Duration, SystemTime};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

use super::xml::Element;
use super::{AwsError, Client, Keys, Malformed, Service};

const VERSION: &str = "2011-06-15";

/// AssumeRole's answer. `Debug` hides the keys' secret parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumedRole {
    pub keys: Keys,
    pub expiration: SystemTime,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    pub assumed_role_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub account: String,
    pub arn: String,
    pub user_id: String,
}

impl Client {
    /// Assumes `role_arn` as session `session_name` for `duration` (whole seconds).
    pub async fn assume_role(
        &self,
        role_arn: &str,
        session_name: &str,
        duration: Duration,
    ) -> Result<AssumedRole, AwsError> {
        const OP: &str = "AssumeRole";
        let seconds = duration.as_secs().to_string();
        let params =
            [("RoleArn", role_arn), ("RoleSessionName", session_name), ("DurationSeconds", &seconds)];
        let root = self.query(Service::Sts, OP, VERSION, &params).await?;
        let result = root.child("AssumeRoleResult");
        let creds = result.and_then(|r| r.child("Credentials")).ok_or_else(|| missing(OP, "Credentials"))?;
        let text = |name: &'static str| {
            creds.child(name).map(Element::text).filter(|t| !t.is_empty()).ok_or_else(|| missing(OP, name))
        };
        let keys = Keys::new(text("AccessKeyId")?, text("SecretAccessKey")?, Some(text("SessionToken")?));
        let expiration = DateTime::from_str(text("Expiration")?, Format::DateTime)
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
            .ok_or(AwsError::Malformed {
                service: Service::Sts,
                operation: OP,
                problem: Malformed::Invalid("Expiration"),
            })?;
        let assumed_role_arn =
            result.and_then(|r| r.at(&["AssumedRoleUser", "Arn"])).map(|e| e.text().to_owned());
        Ok(AssumedRole { keys, expiration, assumed_role_arn })
    }

    /// Who the client's keys belong to.
    pub async fn get_caller_identity(&self) -> Result<CallerIdentity, AwsError> {
        const OP: &str = "GetCallerIdentity";
        let root = self.query(Service::Sts, OP, VERSION, &[]).await?;
        let result =
            root.child("GetCallerIdentityResult").ok_or_else(|| missing(OP, "GetCallerIdentityResult"))?;
        let text = |name: &'static str| {
            result.child(name).map(|e| e.text().to_owned()).ok_or_else(|| missing(OP, name))
        };
        Ok(CallerIdentity { account: text("Account")?, arn: text("Arn")?, user_id: text("UserId")? })
    }
}

fn missing(operation: &'static str, what: &'static str) -> AwsError {
    AwsError::Malformed { service: Service::Sts, operation, problem: Malformed::Missing(what) }
}
