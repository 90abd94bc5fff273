//! Merging overlays into a task definition template: pure, no I/O.
//!
//! Three modes (reference deploy.md §5):
//! - [`Mode::Strategic`] (default): objects merge recursively, `null` deletes a key, lists of
//!   scalars are replaced, and ECS's lists of objects (containers, environment, secrets, port
//!   mappings...) are matched by their key field, so a staging entry never overwrites an
//!   unrelated template entry. An overlay element without its key merges by index.
//!   `{"name": "X", "$patch": "delete"}` removes an element; an element `{"$patch": "replace"}`
//!   makes the rest of that overlay list replace the base list.
//! - [`Mode::Lodash`]: `_.merge` exactly (arrays merge index by index, `null` overwrites), so
//!   `render --merge lodash` is byte for byte what the post's node script produced.
//! - [`Mode::MergePatch`]: RFC 7396 (arrays replaced, `null` deletes).

use super::value::Json;

/// How overlays combine with the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Strategic,
    Lodash,
    MergePatch,
}

/// An overlay that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Strategic mode refuses to replace an object by an array or the reverse: it is almost
    /// always a mistake in the overlay (lodash and merge-patch replace silently).
    #[error("merge: {pointer} is {base} in the template but {overlay} in {source_name}")]
    TypeClash { pointer: String, base: &'static str, overlay: &'static str, source_name: String },
    /// `$patch` has a value other than `delete`, `replace` or `merge`.
    #[error(
        "merge: {pointer}: unknown $patch directive '{directive}' in {source_name} (expected delete, replace or merge)"
    )]
    Directive { pointer: String, directive: String, source_name: String },
}

/// Merges `overlay` (named `source_name` in errors) into `base`.
pub fn merge(mode: Mode, base: &mut Json, overlay: &Json, source_name: &str) -> Result<(), MergeError> {
    match mode {
        Mode::Lodash => {
            lodash(base, overlay);
            Ok(())
        }
        Mode::MergePatch => {
            merge_patch(base, overlay);
            Ok(())
        }
        Mode::Strategic => Strategic { source_name }.merge(base, overlay, &mut Vec::new()),
    }
}

// ---- lodash ----------------------------------------------------------------------------

/// `_.merge(base, overlay)` for JSON values (lodash 4.17 `baseMerge`/`baseMergeDeep`).
fn lodash(base: &mut Json, overlay: &Json) {
    match overlay {
        Json::Object(members) => {
            if !matches!(base, Json::Object(_) | Json::Array(_)) {
                *base = Json::Object(Vec::new());
            }
            for (key, value) in members {
                lodash_member(base, key, value);
            }
        }
        Json::Array(items) => {
            if !matches!(base, Json::Array(_)) {
                *base = Json::Array(Vec::new());
            }
            for (i, value) in items.iter().enumerate() {
                lodash_member(base, &i.to_string(), value);
            }
        }
        scalar => *base = scalar.clone(),
    }
}

/// One key of a source merged into an object or (by index) an array.
fn lodash_member(base: &mut Json, key: &str, value: &Json) {
    match base {
        Json::Object(_) => {
            if matches!(value, Json::Object(_) | Json::Array(_)) {
                let mut slot = base.remove_keep(key);
                lodash(&mut slot.1, value);
                base.put_back(key, slot);
            } else {
                base.set(key, value.clone());
            }
        }
        Json::Array(items) => {
            // Only index keys reach an array in JSON.stringify's output; `{"foo": 1}` merged
            // into an array sets a property JSON never shows.
            let Some(i) = key.parse::<usize>().ok().filter(|i| i.to_string() == key) else { return };
            if items.len() <= i {
                // JavaScript fills the hole with `undefined`, which JSON.stringify prints as null.
                items.resize(i + 1, Json::Null);
            }
            lodash(&mut items[i], value);
        }
        _ => {}
    }
}

trait Slots {
    /// Takes `key`'s value out (Null when absent) with its position, to merge into it.
    fn remove_keep(&mut self, key: &str) -> (Option<usize>, Json);
    /// Puts a value taken with `remove_keep` back where it was (or at the end when new).
    fn put_back(&mut self, key: &str, slot: (Option<usize>, Json));
}

impl Slots for Json {
    fn remove_keep(&mut self, key: &str) -> (Option<usize>, Json) {
        match self {
            Json::Object(members) => match members.iter().position(|(k, _)| k == key) {
                Some(i) => (Some(i), std::mem::replace(&mut members[i].1, Json::Null)),
                None => (None, Json::Null),
            },
            _ => (None, Json::Null),
        }
    }

    fn put_back(&mut self, key: &str, (at, value): (Option<usize>, Json)) {
        if let Json::Object(members) = self {
            match at {
                Some(i) => members[i].1 = value,
                None => members.push((key.to_owned(), value)),
            }
        }
    }
}

// ---- RFC 7396 ----------------------------------------------------------------------------

fn merge_patch(base: &mut Json, patch: &Json) {
    let Json::Object(members) = patch else {
        *base = patch.clone();
        return;
    };
    if !matches!(base, Json::Object(_)) {
        *base = Json::Object(Vec::new());
    }
    for (key, value) in members {
        if *value == Json::Null {
            base.remove(key);
        } else {
            let mut slot = base.remove_keep(key);
            merge_patch(&mut slot.1, value);
            base.put_back(key, slot);
        }
    }
}

// ---- strategic ---------------------------------------------------------------------------

const PATCH: &str = "$patch";

/// The key fields of ECS's lists of objects, by the list's member name. `portMappings` are
/// keyed by containerPort + protocol (default tcp).
fn list_key(field: &str, parent: Option<&str>) -> Option<&'static [&'static str]> {
    Some(match field {
        "containerDefinitions" | "environment" | "secrets" | "secretOptions" | "ulimits" | "volumes" => {
            &["name"]
        }
        "properties" if parent == Some("proxyConfiguration") => &["name"],
        "portMappings" => &["containerPort", "protocol"],
        "mountPoints" => &["containerPath"],
        "volumesFrom" => &["sourceContainer"],
        "dependsOn" => &["containerName"],
        "systemControls" => &["namespace"],
        "extraHosts" => &["hostname"],
        "environmentFiles" => &["value"],
        "resourceRequirements" => &["type"],
        "tags" => &["key"],
        _ => return None,
    })
}

/// An element's identity under `key`, or `None` when it lacks the (first) key field.
fn identity(element: &Json, key: &[&str]) -> Option<Vec<Json>> {
    element.get(key[0])?;
    Some(
        key.iter()
            .map(|k| match (element.get(k), *k) {
                (Some(v), _) => v.clone(),
                (None, "protocol") => Json::String("tcp".to_owned()),
                (None, _) => Json::Null,
            })
            .collect(),
    )
}

fn pointer(path: &[String]) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.iter().map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1"))).collect()
}

struct Strategic<'a> {
    source_name: &'a str,
}

impl Strategic<'_> {
    fn clash(&self, path: &[String], base: &Json, overlay: &Json) -> MergeError {
        MergeError::TypeClash {
            pointer: pointer(path),
            base: base.kind(),
            overlay: overlay.kind(),
            source_name: self.source_name.to_owned(),
        }
    }

    fn directive(&self, element: &Json, path: &[String]) -> Result<Option<&'static str>, MergeError> {
        match element.get(PATCH) {
            None => Ok(None),
            Some(Json::String(d)) if d == "delete" => Ok(Some("delete")),
            Some(Json::String(d)) if d == "replace" => Ok(Some("replace")),
            Some(Json::String(d)) if d == "merge" => Ok(Some("merge")),
            Some(other) => Err(MergeError::Directive {
                pointer: pointer(path),
                directive: match other {
                    Json::String(s) => s.clone(),
                    other => other.stringify(0),
                },
                source_name: self.source_name.to_owned(),
            }),
        }
    }

    fn merge(&self, base: &mut Json, overlay: &Json, path: &mut Vec<String>) -> Result<(), MergeError> {
        match (&mut *base, overlay) {
            (Json::Object(_), Json::Object(members)) => {
                for (key, value) in members {
                    if key == PATCH {
                        continue;
                    }
                    if *value == Json::Null {
                        base.remove(key);
                        continue;
                    }
                    path.push(key.clone());
                    let mut slot = base.remove_keep(key);
                    if slot.0.is_none() {
                        slot.1 = self.clean(value, path)?;
                    } else {
                        let parent = path.len().checked_sub(2).map(|i| path[i].clone());
                        self.merge_field(&mut slot.1, value, parent.as_deref(), path)?;
                    }
                    base.put_back(key, slot);
                    path.pop();
                }
                Ok(())
            }
            (Json::Object(_), Json::Array(_)) | (Json::Array(_), Json::Object(_)) => {
                Err(self.clash(path, base, overlay))
            }
            _ => {
                *base = self.clean(overlay, path)?;
                Ok(())
            }
        }
    }

    /// Merges the value of member `path.last()` (a field under `parent`).
    fn merge_field(
        &self,
        base: &mut Json,
        overlay: &Json,
        parent: Option<&str>,
        path: &mut Vec<String>,
    ) -> Result<(), MergeError> {
        let field = path.last().cloned().unwrap_or_default();
        match (&mut *base, overlay, list_key(&field, parent)) {
            (Json::Array(items), Json::Array(patch), Some(key)) => self.merge_list(items, patch, key, path),
            _ => self.merge(base, overlay, path),
        }
    }

    fn merge_list(
        &self,
        items: &mut Vec<Json>,
        patch: &[Json],
        key: &[&str],
        path: &mut Vec<String>,
    ) -> Result<(), MergeError> {
        // `{"$patch": "replace"}` anywhere: the rest of the overlay list replaces the base.
        for (i, element) in patch.iter().enumerate() {
            path.push(i.to_string());
            let replace =
                self.directive(element, path)? == Some("replace") && identity(element, key).is_none();
            path.pop();
            if replace {
                let mut out = Vec::new();
                for (j, e) in patch.iter().enumerate().filter(|(j, _)| *j != i) {
                    path.push(j.to_string());
                    out.push(self.clean(e, path)?);
                    path.pop();
                }
                *items = out;
                return Ok(());
            }
        }
        for (i, element) in patch.iter().enumerate() {
            path.push(i.to_string());
            let directive = self.directive(element, path)?;
            let at = match identity(element, key) {
                Some(id) => items.iter().position(|b| identity(b, key).as_ref() == Some(&id)),
                None => (i < items.len()).then_some(i),
            };
            match (at, directive) {
                (Some(at), Some("delete")) => {
                    items.remove(at);
                }
                (None, Some("delete")) => {}
                (Some(at), _) => {
                    path.pop();
                    path.push(at.to_string());
                    self.merge(&mut items[at], element, path)?;
                }
                (None, _) => items.push(self.clean(element, path)?),
            }
            path.pop();
        }
        Ok(())
    }

    /// An overlay value added where the base has nothing: nulls and directives dropped.
    fn clean(&self, value: &Json, path: &mut Vec<String>) -> Result<Json, MergeError> {
        Ok(match value {
            Json::Object(members) => {
                let mut out = Vec::new();
                for (k, v) in members {
                    if k == PATCH || *v == Json::Null {
                        continue;
                    }
                    path.push(k.clone());
                    out.push((k.clone(), self.clean(v, path)?));
                    path.pop();
                }
                Json::Object(out)
            }
            Json::Array(items) => {
                let mut out = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    if self.directive(v, path)? != Some("delete") {
                        out.push(self.clean(v, path)?);
                    }
                    path.pop();
                }
                Json::Array(out)
            }
            other => other.clone(),
        })
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
