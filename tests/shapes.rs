//! `src/model/shapes.rs` is generated from the ECS model botocore ships (`hack/gen-shapes.py`,
//! then rustfmt): this test fails when the file in the tree is not what the generator writes
//! from the pinned botocore, so a hand edit or a stale regeneration cannot land.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The venv's Python (where the pinned botocore is): `ECSD_PYTHON`, else `.venv/bin/python`.
fn python(root: &Path) -> PathBuf {
    std::env::var_os("ECSD_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"))
}

#[test]
fn shapes_rs_is_what_gen_shapes_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = python(root);
    let out = Command::new(&python).arg(root.join("hack/gen-shapes.py")).output().unwrap_or_else(|e| {
        panic!("cannot run {} ({e}): run hack/setup (it makes .venv), or set ECSD_PYTHON", python.display())
    });
    assert!(out.status.success(), "hack/gen-shapes.py failed: {}", String::from_utf8_lossy(&out.stderr));
    // Formatted as the tree is (rustfmt finds the project's rustfmt.toml from the root).
    let mut fmt = Command::new("rustfmt")
        .args(["--edition", "2024"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rustfmt (the toolchain's) runs");
    fmt.stdin.take().expect("stdin").write_all(&out.stdout).expect("rustfmt reads the generated code");
    let formatted = fmt.wait_with_output().expect("rustfmt finishes");
    assert!(formatted.status.success(), "rustfmt failed: {}", String::from_utf8_lossy(&formatted.stderr));
    let generated = String::from_utf8(formatted.stdout).expect("rustfmt writes UTF-8");
    let in_tree = std::fs::read_to_string(root.join("src/model/shapes.rs")).expect("src/model/shapes.rs");
    if generated != in_tree {
        let line = generated.lines().zip(in_tree.lines()).position(|(a, b)| a != b).map_or_else(
            || {
                format!(
                    "the files differ in length ({} vs {} lines)",
                    generated.lines().count(),
                    in_tree.lines().count()
                )
            },
            |i| format!("first difference at line {}", i + 1),
        );
        panic!(
            "src/model/shapes.rs is not what hack/gen-shapes.py generates ({line}); regenerate it with \
             `.venv/bin/python hack/gen-shapes.py > src/model/shapes.rs && cargo fmt`, and never edit it by hand"
        );
    }
}
