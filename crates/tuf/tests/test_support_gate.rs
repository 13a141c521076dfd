//! `TrustedTarget::for_tests` makes a trusted target that no search found. It sits behind the `test-support`
//! feature, and this test keeps that feature out of every build but tests: no manifest in the workspace (or the
//! fuzz workspace) may enable it outside `[dev-dependencies]`.

use std::path::{Path, PathBuf};

#[test]
fn test_support_is_enabled_only_by_dev_dependencies() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut manifests: Vec<PathBuf> = vec![workspace.join("Cargo.toml"), workspace.join("fuzz/Cargo.toml")];
    for crate_dir in std::fs::read_dir(workspace.join("crates")).unwrap() {
        manifests.push(crate_dir.unwrap().path().join("Cargo.toml"));
    }
    let mut checked = 0;
    let mut offenders = Vec::new();
    for manifest in manifests.iter().filter(|m| m.exists()) {
        checked += 1;
        let text = std::fs::read_to_string(manifest).unwrap();
        let mut section = String::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
            } else if line.contains("test-support") && !line.starts_with('#') {
                let own_feature = manifest.ends_with("crates/tuf/Cargo.toml") && section == "[features]";
                if section != "[dev-dependencies]" && !own_feature {
                    offenders.push(format!("{}:{}: {line} (in {section})", manifest.display(), number + 1));
                }
            }
        }
    }
    assert!(checked > 10, "found only {checked} manifests under {}", workspace.display());
    assert!(offenders.is_empty(), "test-support enabled outside [dev-dependencies]:\n{}", offenders.join("\n"));
}
