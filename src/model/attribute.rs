//! Custom attributes of a container instance: the names and values ECS accepts, from
//! PutAttributes or the agent's `ECS_INSTANCE_ATTRIBUTES`.

use std::collections::BTreeMap;

/// 1 to 128 letters, numbers, hyphens, underscores, slashes, backslashes or periods.
pub fn valid_name(n: &str) -> bool {
    (1..=128).contains(&n.chars().count())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_/\\.".contains(c))
}

/// 1 to 128 letters, numbers, hyphens, underscores, periods, at signs, slashes, backslashes,
/// colons or spaces, not starting or ending with a space.
pub fn valid_value(v: &str) -> bool {
    (1..=128).contains(&v.chars().count())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_./\\@: ".contains(c))
        && !v.starts_with(' ')
        && !v.ends_with(' ')
}

/// Why `ECS_INSTANCE_ATTRIBUTES` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributesError {
    #[error("not a JSON object of names to string values such as {{\"stack\": \"prod\"}}")]
    NotAnObject,
    #[error(
        "attribute name '{0}' is not valid: 1 to 128 letters, numbers, hyphens, underscores, slashes, backslashes or periods"
    )]
    Name(String),
    #[error("attribute name '{0}': the ecs. prefix is ECS's own")]
    Reserved(String),
    #[error(
        "attribute '{name}' value '{value}' is not valid: 1 to 128 letters, numbers, hyphens, underscores, periods, at signs, slashes, backslashes, colons or spaces"
    )]
    Value { name: String, value: String },
}

/// `ECS_INSTANCE_ATTRIBUTES` as the agent reads it: a JSON object of names to string values,
/// e.g. `{"stack": "prod", "gpu": "none"}`.
pub fn instance_attributes(json: &str) -> Result<BTreeMap<String, String>, AttributesError> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|_| AttributesError::NotAnObject)?;
    for (name, value) in &map {
        if !valid_name(name) {
            return Err(AttributesError::Name(name.clone()));
        }
        if name.starts_with("ecs.") {
            return Err(AttributesError::Reserved(name.clone()));
        }
        if !valid_value(value) {
            return Err(AttributesError::Value { name: name.clone(), value: value.clone() });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_attributes_are_a_json_object_of_valid_names_and_values() {
        let got = instance_attributes(r#"{"stack": "prod", "team/owner": "a@b:c d"}"#).unwrap();
        assert_eq!(got.get("stack").map(String::as_str), Some("prod"));
        assert_eq!(got.len(), 2);
        for (json, reason) in [
            (r#"["stack"]"#, "not a JSON object of names to string values such as {\"stack\": \"prod\"}"),
            (r#"{"n": 1}"#, "not a JSON object of names to string values such as {\"stack\": \"prod\"}"),
            (
                r#"{"bad name": "x"}"#,
                "attribute name 'bad name' is not valid: 1 to 128 letters, numbers, hyphens, underscores, slashes, backslashes or periods",
            ),
            (r#"{"ecs.os-type": "x"}"#, "attribute name 'ecs.os-type': the ecs. prefix is ECS's own"),
            (
                r#"{"a": " padded"}"#,
                "attribute 'a' value ' padded' is not valid: 1 to 128 letters, numbers, hyphens, underscores, periods, at signs, slashes, backslashes, colons or spaces",
            ),
        ] {
            assert_eq!(instance_attributes(json).unwrap_err().to_string(), reason, "{json}");
        }
    }
}
