//! Resolving a rendered definition's names to ARNs: roles (IAM GetRole), secrets without
//! `valueFrom` and `sm:`/`ssm:` shorthands (Secrets Manager DescribeSecret, SSM
//! GetParameters). Secret values are never read. Every lookup is recorded for the report.

use std::collections::BTreeMap;

use crate::aws::{AwsError, Client, Service};

use super::args::SecretsLookup;
use super::error::{DeployError, ListProblem, ParameterProblem, Unresolved};
use super::value::Json;

/// What a lookup found, for `verify` and the log: `executionRoleArn ← iam:GetRole NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub what: String,
    pub how: String,
    pub arn: String,
}

/// Resolves names through AWS, caching each answer for the run.
#[derive(Debug)]
pub struct Resolver<'a> {
    /// One client reaches IAM, STS, Secrets Manager and SSM (each at its own endpoint).
    aws: &'a Client,
    pub region: String,
    pub secret_prefix: String,
    pub account_id: Option<String>,
    pub lookup: SecretsLookup,
    roles: BTreeMap<String, String>,
    secret_arns: BTreeMap<String, String>,
    /// `--secrets-lookup list`: every secret whose name starts with the prefix, by name.
    listed: Option<BTreeMap<String, String>>,
    pub resolved: Vec<Resolved>,
    pub warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        aws: &'a Client,
        region: &str,
        secret_prefix: &str,
        account_id: Option<String>,
    ) -> Resolver<'a> {
        Resolver {
            aws,
            region: region.to_owned(),
            secret_prefix: secret_prefix.to_owned(),
            account_id,
            lookup: SecretsLookup::Describe,
            roles: BTreeMap::new(),
            secret_arns: BTreeMap::new(),
            listed: None,
            resolved: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Resolves `executionRoleArn`, `taskRoleArn` and every container's secrets in `doc`.
    pub async fn resolve(&mut self, doc: &mut Json) -> Result<(), DeployError> {
        for field in ["executionRoleArn", "taskRoleArn"] {
            let Some(name) = doc.get(field).and_then(Json::as_str).map(str::to_owned) else { continue };
            if name.is_empty() || name.starts_with("arn:") {
                continue;
            }
            let arn = self.role_arn(&name).await?;
            self.resolved.push(Resolved {
                what: field.to_owned(),
                how: format!("iam:GetRole {name}"),
                arn: arn.clone(),
            });
            doc.set(field, Json::String(arn));
        }
        let Some(Json::Array(containers)) = doc.get_mut("containerDefinitions") else { return Ok(()) };
        for (c, container) in containers.iter_mut().enumerate() {
            let container_name = container.get("name").and_then(Json::as_str).unwrap_or_default().to_owned();
            if let Some(Json::Array(secrets)) = container.get_mut("secrets") {
                self.resolve_secrets(secrets, c, &container_name, "secrets").await?;
            }
            let options = container.get_mut("logConfiguration").and_then(|l| l.get_mut("secretOptions"));
            if let Some(Json::Array(secrets)) = options {
                self.resolve_secrets(secrets, c, &container_name, "logConfiguration.secretOptions").await?;
            }
        }
        Ok(())
    }

    async fn resolve_secrets(
        &mut self,
        secrets: &mut [Json],
        container: usize,
        container_name: &str,
        field: &'static str,
    ) -> Result<(), DeployError> {
        for (index, secret) in secrets.iter_mut().enumerate() {
            let Some(name) = secret.get("name").and_then(Json::as_str).map(str::to_owned) else { continue };
            let value_from = secret.get("valueFrom").and_then(Json::as_str).unwrap_or_default().to_owned();
            let at = Place { container, container_name, field, index, name: &name };
            let arn = if value_from.is_empty() {
                let secret_name = format!("{}{name}", self.secret_prefix);
                let arn = self.secret_arn(&secret_name, &at, self.lookup).await?;
                self.note(&at, format!("secretsmanager:{} {secret_name}", self.lookup.operation()), &arn);
                arn
            } else if let Some(reference) = value_from.strip_prefix("sm:") {
                // NAME[:json-key[:version-stage[:version-id]]]; secret names cannot hold ':'.
                let (secret_name, suffix) = match reference.split_once(':') {
                    Some((n, rest)) => (n.to_owned(), format!(":{rest}")),
                    None => (reference.to_owned(), String::new()),
                };
                // Named outright, maybe outside the prefix: looked up by itself.
                let arn =
                    format!("{}{suffix}", self.secret_arn(&secret_name, &at, SecretsLookup::Describe).await?);
                self.note(&at, format!("secretsmanager:DescribeSecret {secret_name}"), &arn);
                arn
            } else if let Some(parameter) = value_from.strip_prefix("ssm:") {
                let arn = self.parameter_arn(parameter, &at).await?;
                self.note(&at, format!("ssm:GetParameters {parameter}"), &arn);
                arn
            } else {
                continue;
            };
            secret.set("valueFrom", Json::String(arn));
        }
        Ok(())
    }

    fn note(&mut self, at: &Place<'_>, how: String, arn: &str) {
        self.resolved.push(Resolved {
            what: format!(
                "containerDefinitions[{}] ('{}').{}[{}] {}",
                at.container, at.container_name, at.field, at.index, at.name
            ),
            how,
            arn: arn.to_owned(),
        });
    }

    /// A role's ARN by name; when IAM denies GetRole, built from the account (flag, else
    /// STS GetCallerIdentity) with path `/`, and a warning.
    pub async fn role_arn(&mut self, name: &str) -> Result<String, DeployError> {
        if let Some(arn) = self.roles.get(name) {
            return Ok(arn.clone());
        }
        let arn = match self.aws.get_role_arn(name).await {
            Ok(arn) => arn,
            Err(e) if service_code(&e) == Some("AccessDenied") => {
                let account = match &self.account_id {
                    Some(a) => a.clone(),
                    None => {
                        self.aws
                            .get_caller_identity()
                            .await
                            .map_err(|_| DeployError::Role { name: name.to_owned(), cause: Box::new(e) })?
                            .account
                    }
                };
                let arn = format!("arn:aws:iam::{account}:role/{name}");
                self.warnings.push(format!("iam:GetRole {name} was denied; assuming {arn} (path /)"));
                arn
            }
            Err(cause) => return Err(DeployError::Role { name: name.to_owned(), cause: Box::new(cause) }),
        };
        self.roles.insert(name.to_owned(), arn.clone());
        Ok(arn)
    }

    async fn secret_arn(
        &mut self,
        secret_name: &str,
        at: &Place<'_>,
        lookup: SecretsLookup,
    ) -> Result<String, DeployError> {
        if let Some(arn) = self.secret_arns.get(secret_name) {
            return Ok(arn.clone());
        }
        if lookup == SecretsLookup::List {
            return self.listed_arn(secret_name, at).await;
        }
        let found = self.aws.describe_secret(secret_name).await.map_err(|cause| {
            DeployError::Unresolved(Box::new(Unresolved::Secret {
                container: at.container,
                container_name: at.container_name.to_owned(),
                field: at.field,
                index: at.index,
                name: at.name.to_owned(),
                secret: secret_name.to_owned(),
                region: self.region.clone(),
                cause: Box::new(cause),
            }))
        })?;
        self.secret_arns.insert(secret_name.to_owned(), found.arn.clone());
        Ok(found.arn)
    }

    /// The ARN of the secret named exactly `secret_name` among those one paginated ListSecrets
    /// (names starting with the prefix) gives: a longer name it starts (`MAIL_URL_OLD` for
    /// `MAIL_URL`) is not it, as it was for the post's `contains` match.
    async fn listed_arn(&mut self, secret_name: &str, at: &Place<'_>) -> Result<String, DeployError> {
        let unresolved = |cause| {
            DeployError::Unresolved(Box::new(Unresolved::Listed {
                container: at.container,
                container_name: at.container_name.to_owned(),
                field: at.field,
                index: at.index,
                name: at.name.to_owned(),
                secret: secret_name.to_owned(),
                region: self.region.clone(),
                cause,
            }))
        };
        if self.listed.is_none() {
            let mut listed = BTreeMap::new();
            let mut token: Option<String> = None;
            loop {
                let mut input = serde_json::json!({ "MaxResults": 100 });
                if !self.secret_prefix.is_empty() {
                    input["Filters"] = serde_json::json!([{ "Key": "name", "Values": [self.secret_prefix] }]);
                }
                if let Some(t) = &token {
                    input["NextToken"] = serde_json::json!(t);
                }
                let page: serde_json::Value = self
                    .aws
                    .json(Service::SecretsManager, "secretsmanager.ListSecrets", &input)
                    .await
                    .map_err(|e| unresolved(ListProblem::Call(Box::new(e))))?;
                for secret in page["SecretList"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(arn)) = (secret["Name"].as_str(), secret["ARN"].as_str()) {
                        listed.insert(name.to_owned(), arn.to_owned());
                    }
                }
                match page["NextToken"].as_str() {
                    Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            self.listed = Some(listed);
        }
        let listed = self.listed.as_ref().map(|l| l.get(secret_name).cloned());
        match listed.flatten() {
            Some(arn) => {
                self.secret_arns.insert(secret_name.to_owned(), arn.clone());
                Ok(arn)
            }
            None => {
                let similar: Vec<String> = self
                    .listed
                    .iter()
                    .flat_map(|l| l.keys())
                    .filter(|n| n.starts_with(secret_name))
                    .cloned()
                    .collect();
                Err(unresolved(ListProblem::NoExactName { similar }))
            }
        }
    }

    async fn parameter_arn(&mut self, parameter: &str, at: &Place<'_>) -> Result<String, DeployError> {
        let fail = |cause| {
            DeployError::Unresolved(Box::new(Unresolved::Parameter {
                container: at.container,
                container_name: at.container_name.to_owned(),
                field: at.field,
                index: at.index,
                name: at.name.to_owned(),
                parameter: parameter.to_owned(),
                region: self.region.clone(),
                cause,
            }))
        };
        let found = self
            .aws
            .get_parameters(&[parameter.to_owned()], false)
            .await
            .map_err(|e| fail(ParameterProblem::Call(Box::new(e))))?;
        match found.parameters.into_iter().next() {
            Some(p) if !p.arn.is_empty() => Ok(p.arn),
            _ => Err(fail(ParameterProblem::NotFound)),
        }
    }
}

/// Where a secret sits in the definition, for error texts.
struct Place<'a> {
    container: usize,
    container_name: &'a str,
    field: &'static str,
    index: usize,
    name: &'a str,
}

fn service_code(e: &AwsError) -> Option<&str> {
    match e {
        AwsError::Service { code, .. } => code.as_deref(),
        _ => None,
    }
}
