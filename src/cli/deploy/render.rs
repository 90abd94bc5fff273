//! Assembling the definition: template, overlays in order, the dynamic object (image,
//! roles), `--set` values, then the describe-only fields stripped. Pure; resolution of
//! names to ARNs comes after (resolve.rs).

use super::error::DeployError;
use super::input::{Set, apply_set};
use super::merge::{Mode, merge};
use super::value::Json;

/// Fields DescribeTaskDefinition answers with that RegisterTaskDefinition refuses.
pub const DESCRIBE_ONLY: [&str; 8] = [
    "taskDefinitionArn",
    "revision",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
];

/// The values a deploy fills in, merged last (as the post's `dynamic` object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub image: Option<String>,
    pub execution_role: Option<String>,
    pub task_role: Option<String>,
}

impl Dynamic {
    /// The post's shape: `{"executionRoleArn": …, "containerDefinitions": [{"image": …}]}`.
    pub fn to_json(&self) -> Json {
        let mut doc = Json::Object(Vec::new());
        if let Some(role) = &self.execution_role {
            doc.set("executionRoleArn", Json::String(role.clone()));
        }
        if let Some(role) = &self.task_role {
            doc.set("taskRoleArn", Json::String(role.clone()));
        }
        if let Some(image) = &self.image {
            let container = Json::Object(vec![("image".to_owned(), Json::String(image.clone()))]);
            doc.set("containerDefinitions", Json::Array(vec![container]));
        }
        doc
    }
}

/// The merged definition and the warnings it raised.
pub fn assemble(
    mode: Mode,
    template: Json,
    overlays: &[(String, Json)],
    dynamic: &Dynamic,
    sets: &[Set],
) -> Result<(Json, Vec<String>), DeployError> {
    let mut doc = template;
    for (name, overlay) in overlays {
        merge(mode, &mut doc, overlay, name)?;
    }
    merge(mode, &mut doc, &dynamic.to_json(), "the dynamic values")?;
    for set in sets {
        apply_set(&mut doc, set)?;
    }
    let mut warnings = Vec::new();
    let stripped: Vec<&str> = DESCRIBE_ONLY.iter().copied().filter(|f| doc.remove(f).is_some()).collect();
    if !stripped.is_empty() {
        warnings.push(format!(
            "removed {} from the template: DescribeTaskDefinition answers with them, RegisterTaskDefinition refuses them",
            stripped.join(", ")
        ));
    }
    Ok((doc, warnings))
}

/// The definition as a RegisterTaskDefinition request: no `null` anywhere (ECS reads a
/// null as a wrong type), whatever the merge mode left.
pub fn request(doc: &Json) -> serde_json::Value {
    fn prune(v: &Json) -> Option<Json> {
        match v {
            Json::Null => None,
            Json::Array(items) => Some(Json::Array(items.iter().filter_map(prune).collect())),
            Json::Object(members) => {
                Some(Json::Object(members.iter().filter_map(|(k, v)| Some((k.clone(), prune(v)?))).collect()))
            }
            other => Some(other.clone()),
        }
    }
    prune(doc).unwrap_or(Json::Object(Vec::new())).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_only_fields_are_stripped_with_a_warning() {
        let template: Json = serde_json::from_str(
            r#"{"taskDefinitionArn":"arn:x","family":"web","revision":3,"status":"ACTIVE","compatibilities":["EC2"],
                "containerDefinitions":[{"name":"app"}]}"#,
        )
        .unwrap();
        let dynamic = Dynamic { image: Some("busybox".into()), ..Dynamic::default() };
        let (doc, warnings) = assemble(Mode::Strategic, template, &[], &dynamic, &[]).unwrap();
        assert_eq!(
            doc.stringify(0),
            r#"{"family":"web","containerDefinitions":[{"name":"app","image":"busybox"}]}"#
        );
        assert_eq!(
            warnings,
            [
                "removed taskDefinitionArn, revision, status, compatibilities from the template: DescribeTaskDefinition \
              answers with them, RegisterTaskDefinition refuses them"
            ]
        );
        // A clean template raises no warning (the positive control).
        let (_, warnings) = assemble(Mode::Strategic, doc, &[], &dynamic, &[]).unwrap();
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_request_carries_no_null() {
        let doc: Json = serde_json::from_str(
            r#"{"family":"web","cpu":null,"containerDefinitions":[{"name":"a","memory":null}]}"#,
        )
        .unwrap();
        assert_eq!(request(&doc), serde_json::json!({"family":"web","containerDefinitions":[{"name":"a"}]}));
    }
}
