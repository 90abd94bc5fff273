//! Golden tests of the three merge modes. `lodash.golden.json` files come from real lodash
//! (hack/gen-lodash-goldens); the strategic and merge-patch goldens were reviewed by hand
//! (`ECSD_UPDATE_GOLDEN=1` rewrites those two, never the lodash ones).

use std::path::{Path, PathBuf};

use super::*;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli/deploy/testdata/merge");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&root).expect("testdata").map(|e| e.expect("entry").path()).collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "merge cases in {}", root.display());
    dirs
}

fn inputs(dir: &Path) -> Vec<(String, Json)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("case dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.as_bytes()[0].is_ascii_digit()))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("input");
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            (name, serde_json::from_str(&text).expect("input JSON"))
        })
        .collect()
}

fn run(mode: Mode, dir: &Path) -> Result<String, MergeError> {
    let mut docs = inputs(dir).into_iter();
    let (_, mut base) = docs.next().expect("a base input");
    for (name, overlay) in docs {
        merge(mode, &mut base, &overlay, &name)?;
    }
    Ok(base.stringify(2) + "\n")
}

fn check_golden(mode: Mode, file: &str) {
    for dir in cases() {
        let golden = dir.join(file);
        let got = match run(mode, &dir) {
            Ok(text) => text,
            Err(e) => format!("error: {e}\n"),
        };
        if mode != Mode::Lodash && std::env::var_os("ECSD_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        assert_eq!(got, want, "{}", golden.display());
    }
}

#[test]
fn lodash_mode_is_byte_identical_to_real_lodash() {
    check_golden(Mode::Lodash, "lodash.golden.json");
}

#[test]
fn strategic_mode_matches_its_goldens() {
    check_golden(Mode::Strategic, "strategic.golden.json");
}

#[test]
fn merge_patch_mode_matches_its_goldens() {
    check_golden(Mode::MergePatch, "merge-patch.golden.json");
}

fn env_names(doc: &Json) -> Vec<String> {
    let env = doc.get("containerDefinitions").and_then(|c| match c {
        Json::Array(items) => items[0].get("environment"),
        _ => None,
    });
    match env {
        Some(Json::Array(items)) => items
            .iter()
            .map(|e| e.get("name").and_then(Json::as_str).unwrap_or_default().to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

/// The post's trap: under lodash the staging entry overwrites the template's first
/// environment entry; under strategic it is matched by name and added.
#[test]
fn the_staging_entry_overwrites_port_under_lodash_only() {
    let dir = cases().into_iter().find(|d| d.ends_with("post")).expect("post case");
    let render = |mode| {
        let text = run(mode, &dir).expect("merge");
        env_names(&serde_json::from_str(&text).expect("output"))
    };
    assert_eq!(render(Mode::Lodash), ["ROOT_URL", "NODE_ENV"]);
    assert_eq!(render(Mode::Strategic), ["PORT", "NODE_ENV", "ROOT_URL"]);
}

#[test]
fn strategic_mode_names_the_pointer_of_an_object_array_clash() {
    let mut base: Json = serde_json::from_str(r#"{"containerDefinitions":[{"environment":[]}]}"#).unwrap();
    let overlay: Json =
        serde_json::from_str(r#"{"containerDefinitions":[{"environment":{"A":"1"}}]}"#).unwrap();
    let err = merge(Mode::Strategic, &mut base, &overlay, "staging.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "merge: /containerDefinitions/0/environment is an array in the template but an object in staging.json"
    );
    // The same overlay with an array is fine (the positive control).
    let overlay: Json =
        serde_json::from_str(r#"{"containerDefinitions":[{"environment":[{"name":"A","value":"1"}]}]}"#)
            .unwrap();
    merge(Mode::Strategic, &mut base, &overlay, "staging.json").expect("array into array");
    assert_eq!(env_names(&base), ["A"]);
}

#[test]
fn an_unknown_patch_directive_is_refused() {
    let mut base: Json = serde_json::from_str(r#"{"volumes":[{"name":"a"}]}"#).unwrap();
    let overlay: Json = serde_json::from_str(r#"{"volumes":[{"name":"a","$patch":"remove"}]}"#).unwrap();
    let err = merge(Mode::Strategic, &mut base, &overlay, "e.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "merge: /volumes/0: unknown $patch directive 'remove' in e.json (expected delete, replace or merge)"
    );
}
