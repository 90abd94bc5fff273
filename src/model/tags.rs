//! Resource tags with ECS's limits.

use super::shapes::Tag;

pub const MAX_TAGS: usize = 50;
const MAX_KEY: usize = 128;
const MAX_VALUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("A tag at index {0} has no key: every tag needs a key of 1 to 128 characters")]
    MissingKey(usize),
    #[error("Tag key '{0}' is longer than 128 characters")]
    KeyTooLong(String),
    #[error("The value of tag '{0}' is longer than 256 characters")]
    ValueTooLong(String),
    #[error(
        "Tag key '{0}' uses the reserved prefix 'aws:': keys starting with aws: are reserved for AWS use"
    )]
    Reserved(String),
    #[error(
        "Tag {what} '{text}' has invalid characters: letters, numbers, spaces and the characters _ . : / = + - @ are allowed"
    )]
    Characters { what: &'static str, text: String },
    #[error("Too many tags: a resource can have at most 50 tags, and this request would leave it with {0}")]
    TooMany(usize),
    #[error("Tag key '{0}' appears more than once in the request")]
    Duplicate(String),
}

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c)
}

/// Validates tags given in a request (not yet merged with existing ones).
pub fn validate(tags: &[Tag]) -> Result<(), TagError> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tags.iter().enumerate() {
        let key = t.key.as_deref().unwrap_or_default();
        if key.is_empty() {
            return Err(TagError::MissingKey(i));
        }
        if key.chars().count() > MAX_KEY {
            return Err(TagError::KeyTooLong(key.to_owned()));
        }
        if key.len() >= 4 && key[..4].eq_ignore_ascii_case("aws:") {
            return Err(TagError::Reserved(key.to_owned()));
        }
        if !key.chars().all(allowed) {
            return Err(TagError::Characters { what: "key", text: key.to_owned() });
        }
        let value = t.value.as_deref().unwrap_or_default();
        if value.chars().count() > MAX_VALUE {
            return Err(TagError::ValueTooLong(key.to_owned()));
        }
        if !value.chars().all(allowed) {
            return Err(TagError::Characters { what: "value", text: value.to_owned() });
        }
        if !seen.insert(key) {
            return Err(TagError::Duplicate(key.to_owned()));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany(tags.len()));
    }
    Ok(())
}

/// Adds or overwrites `new` on `existing`, keeping the order keys were first added in.
pub fn merge(existing: &[Tag], new: &[Tag]) -> Result<Vec<Tag>, TagError> {
    validate(new)?;
    let mut out = existing.to_vec();
    for t in new {
        match out.iter_mut().find(|e| e.key == t.key) {
            Some(e) => e.value = Some(t.value.clone().unwrap_or_default()),
            None => out.push(Tag { key: t.key.clone(), value: Some(t.value.clone().unwrap_or_default()) }),
        }
    }
    if out.len() > MAX_TAGS {
        return Err(TagError::TooMany(out.len()));
    }
    Ok(out)
}

/// Removes the tags with the given keys; keys that are not there are ignored, as in ECS.
pub fn remove(existing: &[Tag], keys: &[String]) -> Vec<Tag> {
    existing.iter().filter(|t| !keys.iter().any(|k| Some(k) == t.key.as_ref())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: &str) -> Tag {
        Tag { key: Some(k.into()), value: Some(v.into()) }
    }

    #[test]
    fn enforces_ecs_limits() {
        assert!(validate(&[tag("team", "a b/c=d+e-f@g.h:i_j")]).is_ok());
        assert_eq!(validate(&[tag("aws:x", "1")]), Err(TagError::Reserved("aws:x".into())));
        assert_eq!(validate(&[tag("AWS:x", "1")]), Err(TagError::Reserved("AWS:x".into())));
        assert!(matches!(validate(&[tag(&"k".repeat(129), "")]), Err(TagError::KeyTooLong(_))));
        assert!(matches!(validate(&[tag("k", &"v".repeat(257))]), Err(TagError::ValueTooLong(_))));
        assert!(matches!(validate(&[tag("k*", "")]), Err(TagError::Characters { .. })));
        let many: Vec<Tag> = (0..51).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert_eq!(validate(&many), Err(TagError::TooMany(51)));
    }

    #[test]
    fn merge_overwrites_and_counts_the_result() {
        let existing: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
        let merged = merge(&existing, &[tag("k3", "new")]).unwrap();
        assert_eq!(merged.len(), 50);
        assert_eq!(merged[3].value.as_deref(), Some("new"));
        assert_eq!(merge(&existing, &[tag("extra", "v")]), Err(TagError::TooMany(51)));
        assert_eq!(remove(&merged, &["k3".into(), "nope".into()]).len(), 49);
    }
}
