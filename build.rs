//! Records the git commit ecsd is built from, for `ecsd --version` and the introspection
//! API's `Version`. `ECSD_COMMIT` set at build time wins (release builds from a tarball);
//! outside a git checkout the commit is `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ECSD_COMMIT");
    let commit = match std::env::var("ECSD_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs. Only
            // files that exist: cargo reruns a build script on every build while a path it
            // watches is missing (a checkout without packed-refs recompiled ecsd each time).
            // Packing a loose ref deletes it, which the watch on it sees.
            let watch = |path: PathBuf| {
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            };
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                watch(PathBuf::from(&dir).join("HEAD"));
            }
            if let (Some(common), Some(branch)) =
                (git(&["rev-parse", "--git-common-dir"]), git(&["symbolic-ref", "-q", "HEAD"]))
            {
                watch(PathBuf::from(&common).join(&branch));
                watch(PathBuf::from(&common).join("packed-refs"));
            }
            git(&["rev-parse", "--short=8", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=ECSD_COMMIT={commit}");
}
