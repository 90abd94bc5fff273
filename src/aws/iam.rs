//! IAM: the ARN of a role, looked up by name (GetRole).

use super::{AwsError, Client, Malformed, Service};

const VERSION: &str = "2010-05-08";

impl Client {
    /// The ARN of role `name` (its path included), from IAM GetRole. A role that does not
    /// exist is IAM's `NoSuchEntity` error.
    pub async fn get_role_arn(&self, name: &str) -> Result<String, AwsError> {
        const OP: &str = "GetRole";
        let root = self.query(Service::Iam, OP, VERSION, &[("RoleName", name)]).await?;
        root.at(&["GetRoleResult", "Role", "Arn"])
            .map(|e| e.text().to_owned())
            .filter(|a| !a.is_empty())
            .ok_or(AwsError::Malformed {
                service: Service::Iam,
                operation: OP,
                problem: Malformed::Missing("Role Arn"),
            })
    }
}
