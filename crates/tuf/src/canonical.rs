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

/// JSON text in canonical form, as [`canonical_from_text`] read it.
pub(crate) struct CanonicalText<'t> {
    /// The canonical bytes.
    pub bytes: Vec<u8>,
    /// The members of the text when it is an object (else none), in order.
    pub members: Vec<Member<'t>>,
}

/// A member of the object that a [`CanonicalText`] is.
pub(crate) struct Member<'t> {
    /// The key as written between its quotes.
    pub key: &'t str,
    /// The text of the value.
    pub text: &'t str,
    /// Where the canonical bytes of the value are in [`CanonicalText::bytes`].
    pub canonical: std::ops::Range<usize>,
}

/// The canonical JSON of the JSON text `text`, taken from the text itself when it already is in canonical form:
/// exactly the bytes that [`canonical_value`] makes of the value that `text` parses to, without building that value;
/// and, when `text` is an object, where each of its members is in the text and in those bytes.
///
/// Accepted: canonical JSON as [`canonical_value`] writes it, and custody's strict form of it
/// ([`canonical_to_strict_json`]), whose escaped control characters are unescaped here (`\b`, `\f`, `\n`, `\r`,
/// `\t` and `\u0000`-`\u001f` in either case of hex). That is: no white space outside strings; object keys in
/// strictly increasing order of their (unescaped) UTF-8 bytes, so no key twice; strings escaping only `"` and `\`
/// besides those control characters; numbers only integers that parse to a `u64`, or to a negative `i64` (not `-0`,
/// which parses to a float). `None` for any other text (pretty-printed, unsorted, other escapes such as `\/` or
/// `\u00e9`, floats, invalid JSON): the caller parses it and encodes the value with [`canonical_value`].
///
/// One pass with an explicit stack (no recursion, whatever the nesting).
pub(crate) fn canonical_from_text(text: &str) -> Option<CanonicalText<'_>> {
    /// An open array or object; an object keeps the range of its last key in the output, to check the order.
    enum Open {
        Array,
        Object { last_key: Option<(usize, usize)> },
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut stack: Vec<Open> = Vec::new();
    let mut members = Vec::new();
    // The member of the top-level object being read: its key, and where its value starts in `text` and `out`.
    let mut member: Option<(&str, usize, usize)> = None;
    let mut i = 0;
    'value: loop {
        // A value starts at `i`.
        match *b.get(i)? {
            b'{' => {
                out.push(b'{');
                i += 1;
                if b.get(i) == Some(&b'}') {
                    out.push(b'}');
                    i += 1;
                } else {
                    stack.push(Open::Object { last_key: None });
                    let key;
                    (key, i) = object_key(b, i, &mut out, &mut stack)?;
                    if stack.len() == 1 {
                        member = Some((&text[key], i, out.len()));
                    }
                    continue 'value;
                }
            }
            b'[' => {
                out.push(b'[');
                i += 1;
                if b.get(i) == Some(&b']') {
                    out.push(b']');
                    i += 1;
                } else {
                    stack.push(Open::Array);
                    continue 'value;
                }
            }
            b'"' => i = string(b, i, &mut out)?,
            b'-' | b'0'..=b'9' => i = integer(b, i, &mut out)?,
            _ => {
                let literal = [&b"null"[..], b"true", b"false"].into_iter().find(|l| b[i..].starts_with(l))?;
                out.extend_from_slice(literal);
                i += literal.len();
            }
        }
        // A value ended at `i`: what follows closes containers, or separates it from the next value or member.
        loop {
            if stack.len() == 1
                && let Some((key, start, out_start)) = member.take()
            {
                members.push(Member { key, text: &text[start..i], canonical: out_start..out.len() });
            }
            match (stack.last(), b.get(i)) {
                (None, None) => return Some(CanonicalText { bytes: out, members }),
                (Some(Open::Array), Some(b',')) => {
                    out.push(b',');
                    i += 1;
                    continue 'value;
                }
                (Some(Open::Object { .. }), Some(b',')) => {
                    out.push(b',');
                    let key;
                    (key, i) = object_key(b, i + 1, &mut out, &mut stack)?;
                    if stack.len() == 1 {
                        member = Some((&text[key], i, out.len()));
                    }
                    continue 'value;
                }
                (Some(Open::Array), Some(b']')) | (Some(Open::Object { .. }), Some(b'}')) => {
                    out.push(b[i]);
                    i += 1;
                    stack.pop();
                }
                _ => return None,
            }
        }
    }

    /// Copies the key at `i` and the `:` after it; checks that the key comes after the object's previous key.
    /// Returns where the key is in `b`, between its quotes, and where the member's value starts.
    fn object_key(
        b: &[u8],
        i: usize,
        out: &mut Vec<u8>,
        stack: &mut [Open],
    ) -> Option<(std::ops::Range<usize>, usize)> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = out.len() + 1;
        let end = string(b, i, out)?;
        let key = (start, out.len() - 1);
        // serde_json reads these keys specially when its `raw_value` or `arbitrary_precision` feature is on (axum turns
        // `raw_value` on for the whole workspace): leave such text to the value path, so that the bytes verified and
        // the value used come from one reading in every build.
        if out[key.0..key.1].starts_with(b"$serde_json::private::") {
            return None;
        }
        let Some(Open::Object { last_key }) = stack.last_mut() else { return None };
        if let Some(last) = *last_key
            && unescaped(&out[last.0..last.1]).cmp(unescaped(&out[key.0..key.1])) != std::cmp::Ordering::Less
        {
            return None;
        }
        *last_key = Some(key);
        if b.get(end) != Some(&b':') {
            return None;
        }
        out.push(b':');
        Some((i + 1..end - 1, end + 1))
    }

    /// The bytes of a string as canonical JSON writes it (only `"` and `\` escaped), unescaped.
    fn unescaped(written: &[u8]) -> impl Iterator<Item = u8> + '_ {
        let mut escaped = false;
        written.iter().copied().filter(move |&c| {
            let keep = escaped || c != b'\\';
            escaped = !escaped && c == b'\\';
            keep
        })
    }

    /// Copies the string at `b[i] == '"'` in canonical form (control characters unescaped); returns its end.
    fn string(b: &[u8], mut i: usize, out: &mut Vec<u8>) -> Option<usize> {
        out.push(b'"');
        i += 1;
        loop {
            let end = special_byte(b, i)?;
            out.extend_from_slice(&b[i..end]);
            i = end;
            match b[i] {
                b'"' => {
                    out.push(b'"');
                    return Some(i + 1);
                }
                b'\\' => {
                    let (byte, len) = match *b.get(i + 1)? {
                        b'"' | b'\\' => {
                            out.extend_from_slice(&b[i..i + 2]);
                            i += 2;
                            continue;
                        }
                        b'b' => (0x08, 2),
                        b'f' => (0x0c, 2),
                        b'n' => (b'\n', 2),
                        b'r' => (b'\r', 2),
                        b't' => (b'\t', 2),
                        b'u' => match b.get(i + 2..i + 6)? {
                            [b'0', b'0', high @ (b'0' | b'1'), low] => {
                                ((high - b'0') << 4 | char::from(*low).to_digit(16)? as u8, 6)
                            }
                            _ => return None,
                        },
                        _ => return None,
                    };
                    out.push(byte);
                    i += len;
                }
                // A raw control character: not JSON.
                _ => return None,
            }
        }
    }

    /// Where the first `"`, `\` or control character from `i` on is, looked for eight bytes at a time: a byte of
    /// `word - 0x0101..01 * n` with its high bit set, where `word`'s is clear, marks a byte below `n` (a borrow can
    /// mark more bytes, but only after a truly marked one, so the lowest mark is right).
    fn special_byte(b: &[u8], mut i: usize) -> Option<usize> {
        const ONES: u64 = u64::MAX / 255;
        while let Some(&chunk) = b.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
            let word = u64::from_le_bytes(chunk);
            let quote = word ^ (ONES * u64::from(b'"'));
            let backslash = word ^ (ONES * u64::from(b'\\'));
            let marks = (word.wrapping_sub(ONES * 0x20) & !word)
                | (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash);
            let marks = marks & (ONES << 7);
            if marks != 0 {
                return Some(i + marks.trailing_zeros() as usize / 8);
            }
            i += 8;
        }
        b[i..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|p| i + p)
    }

    /// Copies the integer at `i` if it is one that parses to a `u64` or a negative `i64`; returns its end.
    fn integer(b: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
        let negative = b[i] == b'-';
        let digits_start = i + usize::from(negative);
        let digits = b[digits_start..].iter().take_while(|c| c.is_ascii_digit()).count();
        let end = digits_start + digits;
        let text = &b[digits_start..end];
        if text.is_empty() || (text[0] == b'0' && digits > 1) || matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        // Fails (and so refuses) past u64::MAX, which serde_json parses to a float.
        let magnitude: u64 = std::str::from_utf8(text).ok()?.parse().ok()?;
        if negative && !(1..=1u64 << 63).contains(&magnitude) {
            return None;
        }
        out.extend_from_slice(&b[i..end]);
        Some(end)
    }
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

    /// The canonical bytes of `text` taken from the text, if it is in canonical form.
    fn fast(text: &str) -> Option<Vec<u8>> {
        canonical_from_text(text).map(|c| c.bytes)
    }

    /// The canonical bytes of `text` the general way (parse, then encode), if it has any.
    fn by_value(text: &str) -> Option<Vec<u8>> {
        canonical_value(&serde_json::from_str::<Value>(text).ok()?).ok()
    }

    #[test]
    fn canonical_text_is_taken_as_it_is() {
        let v = json!({"a": [true, null, false, "x\"y\\z", 0, -1, 18446744073709551615u64, i64::MIN, {}, []],
                       "b": {"c": "é\u{212a}"}, "é": "line\nnext\t\u{0}\u{1f}\u{8}\u{c}\r\u{7f}"});
        let canonical = to_canonical_json(&v).unwrap();
        let strict = String::from_utf8(canonical_to_strict_json(&canonical)).unwrap();
        assert_eq!(fast(&strict), Some(canonical.clone()));
        // Other escapes of the same control characters, as another tool may write them.
        let other = strict.replace("\\n", "\\u000a").replace("\\u001f", "\\u001F");
        assert_eq!(fast(&other), Some(canonical));
        for text in ["0", "-5", "\"\"", "[]", "{}", "null", "true", "false", "[[[{\"\":{}}]]]"] {
            assert_eq!(fast(text), by_value(text), "{text}");
            assert!(fast(text).is_some(), "{text}");
        }
    }

    /// Keys are ordered by their unescaped bytes: `"` (0x22) sorts before `#`, though its escape `\` (0x5c) does
    /// not.
    #[test]
    fn keys_are_compared_unescaped() {
        let sorted = r#"{"a\"":1,"a#":2,"a\\":3,"a\\b":4}"#;
        assert_eq!(fast(sorted).as_deref(), Some(sorted.as_bytes()));
        assert_eq!(fast(sorted), by_value(sorted));
        assert_eq!(fast(r#"{"a#":2,"a\"":1}"#), None);
        assert_eq!(fast("{\"a\\n\":1,\"a\\u0009\":2}"), None, "\\n (0x0a) sorts after \\t (0x09)");
        assert!(fast("{\"a\\t\":1,\"a\\n\":2}").is_some());
    }

    #[test]
    fn other_forms_take_the_general_path() {
        for text in [
            "{\"b\":1,\"a\":2}",
            "{\"a\":1,\"a\":1}",
            "{\"a\":1,\"a\":2}",
            "{\"a\": 1}",
            " {}",
            "{} ",
            "[1,\n2]",
            "\"\\/\"",
            "\"\\u00e9\"",
            "\"\\u0020\"",
            "\"\\ud83d\\ude00\"",
            "-0",
            "1.0",
            "1e3",
            "1E3",
            "01",
            "-",
            "18446744073709551616",
            "-9223372036854775809",
            "\"\u{1}\"",
            "\"abc",
            "[1,]",
            "{\"a\"}",
            "{\"a\":}",
            "{,}",
            "nul",
            "truex",
            "[]]",
            "",
        ] {
            assert_eq!(fast(text), None, "{text:?}");
        }
        assert_eq!(fast("-9223372036854775808").as_deref(), Some(&b"-9223372036854775808"[..]));
    }

    /// Escapes and control characters at every offset of the eight-byte scan, among ASCII and multi-byte letters.
    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for filler in ["a", "é", "\u{7f}", "~"] {
            for len in 0..20 {
                for pos in 0..=len {
                    for special in ["\\\"", "\\\\", "\\n", "\\u001f", "\u{1}", "/"] {
                        let text = format!("\"{}{special}{}\"", filler.repeat(pos), filler.repeat(len - pos));
                        assert_eq!(fast(&text), by_value(&text), "{text:?}");
                        assert_eq!(fast(&text).is_some(), special != "\u{1}", "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(fast(&text).map(|c| c.len()), Some(200_000));
    }

    /// Arbitrary JSON, floats and awkward strings included.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let string = "(\\PC|[\\x00-\\x1f\"\\\\/\u{7f}\u{212a}\u{1F600}])*";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            Just(Value::from(-0.0)),
            string.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(string, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON text of `v` with the members of every object in reverse order and every string escaped as `\uXXXX`.
    fn reversed_and_escaped(v: &Value, out: &mut String) {
        let string = |s: &str, out: &mut String| {
            out.push('"');
            for unit in s.encode_utf16() {
                out.push_str(&format!("\\u{unit:04X}"));
            }
            out.push('"');
        };
        match v {
            Value::String(s) => string(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i > 0 { "," } else { "" });
                    reversed_and_escaped(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (key, item)) in map.iter().rev().enumerate() {
                    out.push_str(if i > 0 { "," } else { "" });
                    string(key, out);
                    out.push(':');
                    reversed_and_escaped(item, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// The fast path agrees byte for byte with the general one on every text form of any value, and takes
        /// every text in canonical or strict form.
        #[test]
        fn canonical_text_agrees_with_the_value_path(v in any_json()) {
            let canonical = canonical_value(&v).ok();
            let mut reversed = String::new();
            reversed_and_escaped(&v, &mut reversed);
            let mut forms = vec![serde_json::to_string(&v).unwrap(), serde_json::to_string_pretty(&v).unwrap(), reversed];
            if let Some(canonical) = &canonical {
                let strict = String::from_utf8(canonical_to_strict_json(canonical)).unwrap();
                proptest::prop_assert_eq!(fast(&strict), Some(canonical.clone()));
                forms.push(strict);
                // Raw control characters are not JSON: such canonical bytes are refused by both paths.
                forms.push(String::from_utf8(canonical.clone()).unwrap());
            }
            for text in &forms {
                let Some(read) = canonical_from_text(text) else { continue };
                proptest::prop_assert_eq!(Some(read.bytes.clone()), by_value(text), "{:?}", text);
                // The members of an object: each value's text parses to that member's value, whose canonical bytes
                // are the range given; the keys, as written, in order.
                let members = v.as_object().map(|m| m.iter().collect::<Vec<_>>()).unwrap_or_default();
                proptest::prop_assert_eq!(read.members.len(), members.len());
                for (member, (key, value)) in read.members.iter().zip(members) {
                    let written_key: String = serde_json::from_str(&format!("\"{}\"", member.key)).unwrap();
                    proptest::prop_assert_eq!(&written_key, key);
                    proptest::prop_assert_eq!(&serde_json::from_str::<Value>(member.text).unwrap(), value);
                    proptest::prop_assert_eq!(&read.bytes[member.canonical.clone()], &canonical_value(value).unwrap()[..]);
                }
            }
        }

        /// On any text at all (mostly not JSON), the fast path never accepts what the general path refuses or
        /// encodes differently.
        #[test]
        fn canonical_text_never_disagrees_on_any_text(text in "[\\[\\]{}\":,0-9eE.+\\-a-z\\\\ \\x00-\\x1f\u{e9}]{0,24}") {
            if let Some(bytes) = fast(&text) {
                proptest::prop_assert_eq!(Some(bytes), by_value(&text), "{:?}", text);
            }
        }
    }

    /// serde_json's `raw_value` and `arbitrary_precision` features (axum switches `raw_value` on for the whole
    /// workspace) make `Value` read an object with one of these keys as something else (`{"$serde_json::private::
    /// RawValue": "[1]"}` as `[1]`). The fast path must then not read the text itself, or the bytes verified (the
    /// text) and the value used (serde_json's reading) would differ. Found by the `canonical_json` fuzz target.
    #[test]
    fn serde_json_private_keys_are_left_to_the_value_path() {
        for key in ["$serde_json::private::RawValue", "$serde_json::private::Number"] {
            let text = format!("{{\"{key}\":\"[1]\"}}");
            assert_eq!(fast(&text), None, "{key}");
            // Nested too.
            assert_eq!(fast(&format!("{{\"a\":{text}}}")), None, "{key}");
        }
        assert!(fast("{\"$serde_json::public\":1}").is_some());
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
