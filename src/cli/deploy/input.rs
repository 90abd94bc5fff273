//! Reading the deploy's documents: template and overlay files (JSON, or YAML by extension)
//! with `file:line:col` errors, a template label's text, and `--set POINTER=JSON` values.

use std::path::{Path, PathBuf};

use super::error::{DeployError, SetProblem};
use super::value::Json;

/// Which flag named a file, for the not-found text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Template,
    Overlay,
}

/// Reads `path` (relative to `cwd`) as a JSON object; `.yaml`/`.yml` files as YAML.
pub fn read_document(path: &Path, cwd: &Path, role: FileRole) -> Result<Json, DeployError> {
    let full = if path.is_absolute() { path.to_owned() } else { cwd.join(path) };
    let text = match std::fs::read_to_string(&full) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (path, looked_in) = (path.to_owned(), full);
            return Err(match role {
                FileRole::Template => DeployError::TemplateMissing { path, looked_in },
                FileRole::Overlay => DeployError::EnvFileMissing { path, looked_in },
            });
        }
        Err(cause) => return Err(DeployError::Unreadable { path: path.to_owned(), cause }),
    };
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let doc = if yaml { parse_yaml(&text, path)? } else { parse_json(&text, path)? };
    match doc {
        Json::Object(_) => Ok(doc),
        other => Err(DeployError::NotAnObject {
            path: path.to_owned(),
            what: match role {
                FileRole::Template => "a template",
                FileRole::Overlay => "an overlay",
            },
            kind: other.kind(),
        }),
    }
}

pub fn parse_json(text: &str, path: &Path) -> Result<Json, DeployError> {
    serde_json::from_str(text).map_err(|e| DeployError::Syntax {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: json_message(&e),
    })
}

/// serde_json's message without its own " at line L column C" suffix.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn parse_yaml(text: &str, path: &Path) -> Result<Json, DeployError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let text = e.to_string();
        let message = match text.rfind(" at line ") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        DeployError::Syntax { path: path.to_owned(), line, column, message }
    })
}

/// The template held by an image label.
pub fn parse_label(text: &str, image: &str, label: &str) -> Result<Json, DeployError> {
    let doc: Json = serde_json::from_str(text).map_err(|e| DeployError::LabelNotJson {
        image: image.to_owned(),
        label: label.to_owned(),
        line: e.line(),
        column: e.column(),
        message: json_message(&e),
    })?;
    match doc {
        Json::Object(_) => Ok(doc),
        other => Err(DeployError::NotAnObject {
            path: PathBuf::from(format!("label '{label}' of {image}")),
            what: "a template",
            kind: other.kind(),
        }),
    }
}

/// One `--set POINTER=JSON`.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    pub arg: String,
    pub path: Vec<String>,
    pub value: Json,
}

pub fn parse_set(arg: &str) -> Result<Set, DeployError> {
    let fail = |reason| DeployError::Set { arg: arg.to_owned(), reason };
    let (pointer, value) = arg.split_once('=').ok_or_else(|| fail(SetProblem::Shape))?;
    let rest = pointer.strip_prefix('/').ok_or_else(|| fail(SetProblem::Pointer))?;
    let path = rest.split('/').map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
    let value = serde_json::from_str(value).map_err(|e| fail(SetProblem::Value(json_message(&e))))?;
    Ok(Set { arg: arg.to_owned(), path, value })
}

/// Applies `set` to `doc`: objects on the way are created; array elements must exist (or
/// `-` appends).
pub fn apply_set(doc: &mut Json, set: &Set) -> Result<(), DeployError> {
    let fail = |reason| DeployError::Set { arg: set.arg.clone(), reason };
    let mut at = doc;
    let mut walked = String::new();
    let last = set.path.len() - 1;
    for (i, key) in set.path.iter().enumerate() {
        walked.push('/');
        walked.push_str(key);
        match at {
            Json::Object(_) => {
                if i == last {
                    at.set(key, set.value.clone());
                    return Ok(());
                }
                if at.get(key).is_none() {
                    at.set(key, Json::Object(Vec::new()));
                }
                at = at.get_mut(key).ok_or_else(|| fail(SetProblem::Missing(walked.clone())))?;
            }
            Json::Array(items) => {
                let index = if key == "-" { Some(items.len()) } else { key.parse::<usize>().ok() };
                let index = index.filter(|&n| n <= items.len() && (n < items.len() || i == last));
                let Some(index) = index else { return Err(fail(SetProblem::Missing(walked))) };
                if i == last {
                    if index == items.len() {
                        items.push(set.value.clone());
                    } else {
                        items[index] = set.value.clone();
                    }
                    return Ok(());
                }
                at = &mut items[index];
            }
            _ => return Err(fail(SetProblem::NotContainer(walked))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_overlay_is_reported_at_file_line_column() {
        let err = parse_json("{\n  \"a\": 1\n  \"b\": 2\n}", Path::new("staging.json")).unwrap_err();
        assert_eq!(err.to_string(), "staging.json:3:3: expected `,` or `}`");
        let err = parse_yaml("a: 1\nb: [1, 2\n", Path::new("staging.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("staging.yaml:3:1: "), "{err}");
        assert_eq!(err.exit_code(), 2);
        // The positive control: well-formed YAML keeps its key order.
        let doc = parse_yaml("b: 1\na: [x, 2]\n", Path::new("e.yaml")).expect("yaml");
        assert_eq!(doc.stringify(0), r#"{"b":1,"a":["x",2]}"#);
    }

    #[test]
    fn a_missing_overlay_names_the_path_it_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_document(Path::new("staging.json"), dir.path(), FileRole::Overlay).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "environment file 'staging.json' not found (from --env; looked in {}/staging.json)",
                dir.path().display()
            )
        );
        std::fs::write(dir.path().join("staging.json"), "[1]").unwrap();
        let err = read_document(Path::new("staging.json"), dir.path(), FileRole::Overlay).unwrap_err();
        assert_eq!(err.to_string(), "staging.json: an overlay must be a JSON object, not an array");
        std::fs::write(dir.path().join("staging.json"), r#"{"cpu":"256"}"#).unwrap();
        read_document(Path::new("staging.json"), dir.path(), FileRole::Overlay).expect("an object");
    }

    #[test]
    fn set_writes_at_a_pointer() {
        let mut doc: Json = serde_json::from_str(r#"{"containerDefinitions":[{"name":"app"}]}"#).unwrap();
        for arg in
            ["/containerDefinitions/0/cpu=256", "/tags/x=\"y\"", "/containerDefinitions/-={\"name\":\"b\"}"]
        {
            apply_set(&mut doc, &parse_set(arg).unwrap()).unwrap();
        }
        assert_eq!(
            doc.stringify(0),
            r#"{"containerDefinitions":[{"name":"app","cpu":256},{"name":"b"}],"tags":{"x":"y"}}"#
        );
        let err = apply_set(&mut doc, &parse_set("/containerDefinitions/5/cpu=1").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--set /containerDefinitions/5/cpu=1: /containerDefinitions/5 does not exist"
        );
        let err = parse_set("/family=web").unwrap_err();
        assert!(err.to_string().starts_with("--set /family=web: the value is not JSON"), "{err}");
        assert_eq!(
            parse_set("family=1").unwrap_err().to_string(),
            "--set family=1: the pointer must start with '/'"
        );
    }
}
