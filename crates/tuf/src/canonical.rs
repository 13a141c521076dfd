//! Canonical JSON (OLPC form, as securesystemslib writes it): keys sorted, no insignificant white space, only `"`
//! and `\` escaped, integers only. Signatures are made and checked over these bytes of the `signed` object.
//!
//! The encoding is injective: two different JSON values never have the same canonical bytes. (Strings are written
//! as they are; in particular they are not normalised to Unicode NFC, which would let `"K"` and `"\u212a"` — or a
//! precomposed and a decomposed `é` — share one signature, and two such object keys collapse into one, so that a
//! signed object could carry an extra, unsigned member.)

use serde::Serialize;
use serde::ser::Error as _;
use serde_json::Value;

/// Encodes a value in canonical JSON.
///
/// Fails on floating-point numbers, which canonical JSON cannot represent.
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    canonical_value(&serde_json::to_value(value)?)
}

/// [`to_canonical_json`] of a JSON value, without the copy that going through `Serialize` makes.
pub(crate) fn canonical_value(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(serde_json::Error::custom(format!("canonical JSON cannot represent the number {n}")));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorted by the keys' UTF-8 bytes (= by code point, as securesystemslib sorts), whatever order the map
            // keeps.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Canonical JSON bytes as strict JSON: the control characters that canonical JSON leaves raw (they can only occur
/// inside strings, as canonical JSON has no white space) escaped, so that any JSON parser reads the same value back.
pub(crate) fn canonical_to_strict_json(canonical: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical.len() + 16);
    for &b in canonical {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x00..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": 1, "a": [true, null, "x\"y\\z"], "é": "\n"});
        let out = to_canonical_json(&v).unwrap();
        assert_eq!(out, "{\"a\":[true,null,\"x\\\"y\\\\z\"],\"b\":1,\"é\":\"\n\"}".as_bytes());
    }

    #[test]
    fn refuses_floats() {
        assert!(to_canonical_json(&json!({"a": 1.5})).is_err());
        assert!(to_canonical_json(&json!([1.0])).is_err());
    }

    #[test]
    fn integers_at_the_edges() {
        let v = json!([i64::MIN, u64::MAX, 0, -1]);
        assert_eq!(to_canonical_json(&v).unwrap(), b"[-9223372036854775808,18446744073709551615,0,-1]");
    }

    /// Found by the `canonical_json` fuzz target: the OLPC formatter normalised strings to NFC, so distinct values
    /// shared canonical bytes (and thus signatures), and object keys equal after NFC collapsed into one member.
    #[test]
    fn unicode_forms_are_kept_apart() {
        let kelvin = to_canonical_json(&json!({"\u{212a}": 1, "K": 2})).unwrap();
        assert_eq!(kelvin, "{\"K\":2,\"\u{212a}\":1}".as_bytes());
        let decomposed = to_canonical_json(&json!("e\u{301}")).unwrap();
        let precomposed = to_canonical_json(&json!("\u{e9}")).unwrap();
        assert_ne!(decomposed, precomposed);
        assert_eq!(decomposed, "\"e\u{301}\"".as_bytes());
    }

    #[test]
    fn strict_form_parses_back_to_the_same_value() {
        let v = json!({"pem": "-----BEGIN-----\nAB\r\n\t\u{0}\u{1f}\u{8}\u{c}\u{7f}", "q": "\"\\"});
        let canonical = to_canonical_json(&v).unwrap();
        assert!(serde_json::from_slice::<Value>(&canonical).is_err(), "raw control characters are not JSON");
        let strict = canonical_to_strict_json(&canonical);
        let back: Value = serde_json::from_slice(&strict).unwrap();
        assert_eq!(back, v);
        assert_eq!(to_canonical_json(&back).unwrap(), canonical);
    }
}
