//! Canonical JSON of arbitrary JSON values: refused exactly when the value holds a float; otherwise one line with no
//! white space outside strings, object keys in order, and a faithful encoding: the bytes parse back (once the control
//! characters that canonical JSON leaves raw are escaped) to the same value, whose canonical form is the same bytes.
#![no_main]

use custody_tuf::to_canonical_json;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// Escapes the control characters that canonical JSON writes raw (they only occur inside strings) so that a strict
/// JSON parser reads the bytes. Written here independently of the crate's own helper.
fn strict(canonical: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical.len());
    for &b in canonical {
        if b < 0x20 {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// Checks that outside strings there is no white space, and that the keys of every object are written in strictly
/// increasing byte order.
fn check_shape(bytes: &[u8]) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            assert!(!b" \t\r\n".contains(&b), "white space outside a string in {}", String::from_utf8_lossy(bytes));
            in_string = b == b'"';
        }
    }
    match serde_json::from_slice::<Ordered>(&strict(bytes)) {
        Ok(ordered) => ordered.check_sorted(),
        Err(e) => panic!("canonical bytes do not parse: {e}: {}", String::from_utf8_lossy(bytes)),
    }
}

/// A JSON value that keeps object members in the order they were written.
enum Ordered {
    Scalar,
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    fn check_sorted(&self) {
        match self {
            Ordered::Scalar => {}
            Ordered::Array(items) => items.iter().for_each(Ordered::check_sorted),
            Ordered::Object(members) => {
                assert!(
                    members.windows(2).all(|w| w[0].0.as_bytes() < w[1].0.as_bytes()),
                    "keys out of order: {:?}",
                    members.iter().map(|m| &m.0).collect::<Vec<_>>()
                );
                members.iter().for_each(|m| m.1.check_sorted());
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Ordered::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Ordered>()? {
                    members.push(member);
                }
                Ok(Ordered::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let first = match to_canonical_json(&value) {
        Ok(bytes) => bytes,
        Err(_) => {
            assert!(has_float(&value), "canonical JSON refused a value without floats: {value:?}");
            return;
        }
    };
    assert!(!has_float(&value), "canonical JSON wrote a float: {}", String::from_utf8_lossy(&first));
    check_shape(&first);
    let reparsed: Value = match serde_json::from_slice(&strict(&first)) {
        Ok(v) => v,
        Err(e) => panic!("canonical bytes do not parse: {e}: {}", String::from_utf8_lossy(&first)),
    };
    assert_eq!(reparsed, value, "canonical JSON is not faithful: {}", String::from_utf8_lossy(&first));
    let second = to_canonical_json(&reparsed).expect("no floats");
    assert_eq!(first, second);
});
