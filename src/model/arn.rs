//! ECS ARNs in the long format, and resolution of the short names users may pass instead.

use std::fmt;

/// The region and account every ARN of this ecsd is minted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub region: String,
    pub account: String,
}

impl Identity {
    fn prefix(&self) -> String {
        format!("arn:aws:ecs:{}:{}:", self.region, self.account)
    }

    pub fn cluster_arn(&self, name: &str) -> String {
        format!("{}cluster/{name}", self.prefix())
    }

    pub fn task_definition_arn(&self, family: &str, revision: i32) -> String {
        format!("{}task-definition/{family}:{revision}", self.prefix())
    }

    pub fn service_arn(&self, cluster: &str, name: &str) -> String {
        format!("{}service/{cluster}/{name}", self.prefix())
    }

    pub fn service_deployment_arn(&self, cluster: &str, service: &str, id: &str) -> String {
        format!("{}service-deployment/{cluster}/{service}/{id}", self.prefix())
    }

    pub fn service_revision_arn(&self, cluster: &str, service: &str, id: &str) -> String {
        format!("{}service-revision/{cluster}/{service}/{id}", self.prefix())
    }

    pub fn task_arn(&self, cluster: &str, id: &str) -> String {
        format!("{}task/{cluster}/{id}", self.prefix())
    }

    pub fn container_instance_arn(&self, cluster: &str, id: &str) -> String {
        format!("{}container-instance/{cluster}/{id}", self.prefix())
    }

    pub fn container_arn(&self, cluster: &str, task_id: &str, id: &str) -> String {
        format!("{}container/{cluster}/{task_id}/{id}", self.prefix())
    }

    /// The IAM principal ecsd reports as `registeredBy` and as the default account-setting
    /// principal: requests are not attributed to users, so the account root stands for all.
    pub fn root_principal(&self) -> String {
        format!("arn:aws:iam::{}:root", self.account)
    }

    /// Parses an ECS ARN of this region and account. ARNs of another region or account name
    /// resources that do not exist here, which callers report as not found.
    pub fn parse(&self, arn: &str) -> Result<ResourceArn, ArnError> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "ecs" || parts[1].is_empty() {
            return Err(ArnError::Malformed(arn.to_owned()));
        }
        if parts[3] != self.region || parts[4] != self.account {
            return Err(ArnError::Foreign(arn.to_owned()));
        }
        let resource = parts[5];
        let (kind, rest) = resource.split_once('/').ok_or_else(|| ArnError::Malformed(arn.to_owned()))?;
        let segs: Vec<&str> = rest.split('/').collect();
        let malformed = || ArnError::Malformed(arn.to_owned());
        let nonempty = |s: &[&str]| s.iter().all(|x| !x.is_empty());
        if !nonempty(&segs) {
            return Err(malformed());
        }
        Ok(match (kind, segs.as_slice()) {
            ("cluster", [name]) => ResourceArn::Cluster { name: (*name).to_owned() },
            ("task-definition", [fr]) => {
                let (family, rev) = fr.rsplit_once(':').ok_or_else(malformed)?;
                let revision = parse_revision(rev).ok_or_else(malformed)?;
                ResourceArn::TaskDefinition { family: family.to_owned(), revision }
            }
            ("service", [cluster, name]) => {
                ResourceArn::Service { cluster: (*cluster).to_owned(), name: (*name).to_owned() }
            }
            ("service-deployment", [cluster, service, id]) => ResourceArn::ServiceDeployment {
                cluster: (*cluster).to_owned(),
                service: (*service).to_owned(),
                id: (*id).to_owned(),
            },
            ("service-revision", [cluster, service, id]) => ResourceArn::ServiceRevision {
                cluster: (*cluster).to_owned(),
                service: (*service).to_owned(),
                id: (*id).to_owned(),
            },
            ("task", [cluster, id]) => {
                ResourceArn::Task { cluster: (*cluster).to_owned(), id: (*id).to_owned() }
            }
            ("container-instance", [cluster, id]) => {
                ResourceArn::ContainerInstance { cluster: (*cluster).to_owned(), id: (*id).to_owned() }
            }
            ("capacity-provider", [name]) => ResourceArn::CapacityProvider { name: (*name).to_owned() },
            _ => return Err(malformed()),
        })
    }

    /// The cluster name from a name or a cluster ARN; `None` or empty means `default`.
    pub fn cluster_name(&self, reference: Option<&str>) -> Result<String, ArnError> {
        match reference {
            None | Some("") => Ok(DEFAULT_CLUSTER.to_owned()),
            Some(r) if r.starts_with("arn:") => match self.parse(r)? {
                ResourceArn::Cluster { name } => Ok(name),
                _ => Err(ArnError::WrongKind { arn: r.to_owned(), expected: "cluster" }),
            },
            Some(r) => Ok(r.to_owned()),
        }
    }

    /// A task definition reference: `family`, `family:revision` or the full ARN.
    pub fn task_definition_ref(&self, reference: &str) -> Result<TaskDefinitionRef, ArnError> {
        if reference.starts_with("arn:") {
            return match self.parse(reference)? {
                ResourceArn::TaskDefinition { family, revision } => {
                    Ok(TaskDefinitionRef { family, revision: Some(revision) })
                }
                _ => Err(ArnError::WrongKind { arn: reference.to_owned(), expected: "task-definition" }),
            };
        }
        match reference.rsplit_once(':') {
            Some((family, rev)) => {
                let revision =
                    parse_revision(rev).ok_or_else(|| ArnError::BadRevision(reference.to_owned()))?;
                Ok(TaskDefinitionRef { family: family.to_owned(), revision: Some(revision) })
            }
            None => Ok(TaskDefinitionRef { family: reference.to_owned(), revision: None }),
        }
    }
}

fn parse_revision(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok().filter(|r| *r >= 1)
}

/// The cluster a call lands in when it names none.
pub const DEFAULT_CLUSTER: &str = "default";

/// A parsed ECS resource ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceArn {
    Cluster { name: String },
    TaskDefinition { family: String, revision: i32 },
    Service { cluster: String, name: String },
    ServiceDeployment { cluster: String, service: String, id: String },
    ServiceRevision { cluster: String, service: String, id: String },
    Task { cluster: String, id: String },
    ContainerInstance { cluster: String, id: String },
    CapacityProvider { name: String },
}

/// `family` with an optional revision, as users name task definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionRef {
    pub family: String,
    pub revision: Option<i32>,
}

impl fmt::Display for TaskDefinitionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.revision {
            Some(r) => write!(f, "{}:{r}", self.family),
            None => f.write_str(&self.family),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error("'{0}' is not a valid ECS ARN")]
    Malformed(String),
    #[error("'{0}' belongs to another region or account")]
    Foreign(String),
    #[error("'{arn}' is not a {expected} ARN")]
    WrongKind { arn: String, expected: &'static str },
    #[error("'{0}' has an invalid revision: a revision is a whole number from 1")]
    BadRevision(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity { region: "us-east-1".into(), account: "000000000000".into() }
    }

    #[test]
    fn formats_and_parses_long_arns() {
        let i = id();
        let cases = [
            (i.cluster_arn("c1"), ResourceArn::Cluster { name: "c1".into() }),
            (
                i.task_definition_arn("web", 12),
                ResourceArn::TaskDefinition { family: "web".into(), revision: 12 },
            ),
            (i.service_arn("c1", "svc"), ResourceArn::Service { cluster: "c1".into(), name: "svc".into() }),
            (i.task_arn("c1", "abc"), ResourceArn::Task { cluster: "c1".into(), id: "abc".into() }),
            (
                i.service_deployment_arn("c1", "svc", "ejGvqq2ilnbKT9qj0vLJe"),
                ResourceArn::ServiceDeployment {
                    cluster: "c1".into(),
                    service: "svc".into(),
                    id: "ejGvqq2ilnbKT9qj0vLJe".into(),
                },
            ),
            (
                i.service_revision_arn("c1", "svc", "4980306466373577095"),
                ResourceArn::ServiceRevision {
                    cluster: "c1".into(),
                    service: "svc".into(),
                    id: "4980306466373577095".into(),
                },
            ),
        ];
        for (arn, want) in cases {
            assert_eq!(i.parse(&arn).unwrap(), want, "{arn}");
        }
        assert_eq!(
            i.task_definition_arn("web", 3),
            "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3"
        );
    }

    #[test]
    fn rejects_malformed_and_foreign_arns() {
        let i = id();
        for bad in [
            "arn:aws:ecs:us-east-1:000000000000:cluster/",
            "arn:aws:ecs:us-east-1:000000000000:task-definition/web",
            "arn:aws:ecs:us-east-1:000000000000:task-definition/web:0",
            "arn:aws:ecs:us-east-1:000000000000:task-definition/web:x",
            "arn:aws:s3:::bucket",
            "arn:aws:ecs:us-east-1:000000000000:widget/x",
            "nonsense",
        ] {
            assert!(matches!(i.parse(bad), Err(ArnError::Malformed(_))), "{bad}");
        }
        assert!(matches!(i.parse("arn:aws:ecs:eu-west-1:000000000000:cluster/c"), Err(ArnError::Foreign(_))));
    }

    #[test]
    fn resolves_references() {
        let i = id();
        assert_eq!(i.cluster_name(None).unwrap(), "default");
        assert_eq!(i.cluster_name(Some(&i.cluster_arn("x"))).unwrap(), "x");
        assert!(i.cluster_name(Some(&i.task_definition_arn("x", 1))).is_err());
        let r = i.task_definition_ref("web:7").unwrap();
        assert_eq!((r.family.as_str(), r.revision), ("web", Some(7)));
        let r = i.task_definition_ref("web").unwrap();
        assert_eq!(r.revision, None);
        assert!(matches!(i.task_definition_ref("web:abc"), Err(ArnError::BadRevision(_))));
    }
}
