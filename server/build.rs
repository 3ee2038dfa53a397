//! Records the git commit the binary is built from, for the `build_info`
//! metric and `GetStats`. `THRIFTWORKER_GIT_SHA` overrides it (container
//! builds without `.git`); "unknown" when neither is available.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=THRIFTWORKER_GIT_SHA");
    // Re-run when HEAD moves; watch only files that exist, or cargo would
    // rebuild every time.
    for f in ["../.git/HEAD", "../.git/logs/HEAD"] {
        if Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let sha = std::env::var("THRIFTWORKER_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=THRIFTWORKER_GIT_SHA={sha}");
}
