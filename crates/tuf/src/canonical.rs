//! Canonical JSON (OLPC form, as securesystemslib writes it): keys sorted, no insignificant white space, only `"`
//! and `\` escaped, integers only. Signatures are made and checked over these bytes of the `signed` object.

use serde::Serialize;

/// Encodes a value in canonical JSON.
///
/// Fails on floating-point numbers, which canonical JSON cannot represent.
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser)?;
    Ok(out)
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
    }
}
