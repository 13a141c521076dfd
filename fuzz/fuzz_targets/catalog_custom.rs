//! The catalog entry carried in a target's `custom` field, from untrusted bytes: errors, never panics; an entry
//! that parses writes back to JSON that parses to the same entry.
#![no_main]

use custody_catalog::UpdateEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = UpdateEntry::parse_slice(data) else {
        return;
    };
    let json = entry.to_custom_json();
    match UpdateEntry::parse(&json) {
        Ok(again) => assert_eq!(again, entry),
        Err(e) => panic!("to_custom_json of a parsed entry does not parse: {e}\n{json}"),
    }
});
