//! Parses the same bytes as each of the four metadata types and checks what a parse that succeeded promises:
//! the stored form (`to_bytes`) parses back to the same envelope, the typed value survives being re-serialised (what
//! the repository tool re-signs), and the accessors that rely on `validate` do not panic.
#![no_main]

use std::fmt::Debug;

use custody_tuf::{Metadata, RoleType, Root, Signed, Snapshot, Targets, Timestamp};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: Signed + PartialEq + Clone + Debug>(data: &[u8], role: &str) -> Option<Metadata<T>> {
    let metadata = Metadata::<T>::from_bytes(data, role).ok()?;
    let stored = metadata.to_bytes();
    let again = match Metadata::<T>::from_bytes(&stored, role) {
        Ok(again) => again,
        Err(e) => {
            panic!("to_bytes of accepted {role} metadata does not parse: {e}\n{}", String::from_utf8_lossy(&stored))
        }
    };
    assert_eq!(again.canonical_signed(), metadata.canonical_signed());
    assert_eq!(again.signed(), metadata.signed());
    assert_eq!(again.signatures(), metadata.signatures());

    let rebuilt = Metadata::new(metadata.signed().clone()).expect("a parsed value re-serialises");
    let back = match Metadata::<T>::from_bytes(&rebuilt.to_bytes(), role) {
        Ok(back) => back,
        Err(e) => panic!("re-serialised {role} metadata does not parse: {e}"),
    };
    assert_eq!(back.signed(), metadata.signed());
    Some(metadata)
}

fuzz_target!(|data: &[u8]| {
    if let Some(root) = round_trip::<Root>(data, "root") {
        for role in RoleType::ALL {
            let _ = root.signed().role(role);
            // Keys of any type and content from untrusted bytes: errors, never panics.
            let _ = root.signed().check_signatures(role, &root);
        }
    }
    if let Some(timestamp) = round_trip::<Timestamp>(data, "timestamp") {
        let _ = timestamp.signed().snapshot_meta();
    }
    let _ = round_trip::<Snapshot>(data, "snapshot");
    if let Some(targets) = round_trip::<Targets>(data, "targets") {
        let signed = targets.signed();
        if let Some(delegations) = &signed.delegations {
            for path in
                ["a.txt", "dir/b.bin", "", "/", "K/é"].into_iter().chain(signed.targets.keys().map(String::as_str))
            {
                for (name, _) in delegations.roles_for_target(path) {
                    assert!(delegations.role_keys(&name).is_some(), "{name:?} is delegated {path:?} but has no keys");
                }
            }
            for name in delegations.roles_for_dir("dir", 4096).unwrap_or_default() {
                assert!(delegations.role_keys(&name).is_some(), "{name:?} is listed for dir but has no keys");
            }
            if let Some(succinct) = &delegations.succinct_roles {
                let bin = succinct.role_for_target("a.txt");
                assert!(succinct.is_role(&bin), "{bin:?} is not a bin of {succinct:?}");
            }
            let _ = targets.check_signatures(
                "targets",
                &delegations.keys,
                &delegations.keys.keys().cloned().collect::<Vec<_>>(),
                1,
            );
        }
    }
});
