//! MIP-004 hashes as the Masumi implementations compute them.
//!
//! - input hash: `sha256_hex(identifier_from_purchaser + ";" + canonical_json(input_data))`,
//!   canonical JSON per RFC 8785 (JCS);
//! - output (result) hash: `sha256_hex(identifier_from_purchaser + ";" + json_escape(output))`,
//!   where `json_escape` is the JSON string encoding of the output *without* the surrounding
//!   quotes. MIP-004's text says to hash the raw output; the reference code (pip `masumi`
//!   1.2.0, the TypeScript plugin) escapes it, and that is what buyers verify against.
//!
//! ```
//! use activities::masumi::hash;
//! let h = hash::input_hash("aabbaabb11221122aabb", &serde_json::json!({}));
//! assert_eq!(h, "b1687ab194553e2fe12892b46b5df2058851d0aad1ca3276fdbe7eb2945ef47e");
//! ```

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The MIP-004 input hash of `input_data` for a purchaser.
pub fn input_hash(identifier_from_purchaser: &str, input_data: &Value) -> String {
    sha256_hex(&format!(
        "{identifier_from_purchaser};{}",
        canonical_json(input_data)
    ))
}

/// The MIP-004 output hash (`submitResultHash`) of a result string for a purchaser.
pub fn output_hash(identifier_from_purchaser: &str, output: &str) -> String {
    sha256_hex(&format!(
        "{identifier_from_purchaser};{}",
        json_escape(output)
    ))
}

/// The JSON string encoding of `s` without the surrounding quotes (as Python's
/// `json.dumps(s, ensure_ascii=False)[1:-1]` and `JSON.stringify(s).slice(1,-1)`).
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_json_string_body(&mut out, s);
    out
}

/// Lowercase hex SHA-256 of the UTF-8 bytes of `s`.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// RFC 8785 (JCS) canonical JSON: object keys sorted by UTF-16 code units, no whitespace,
/// minimal string escapes (non-ASCII stays literal), numbers in ECMAScript's shortest form
/// (`1.0` prints as `1`, `1e21` as `1e+21`). Integers beyond ±2^53 are, as in JavaScript,
/// rounded to the nearest double.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, value);
    out
}

/// Whether `s` is a non-empty hex string of even length (the service's `validateHexString`).
pub fn is_hex_even(s: &str) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` is an `identifierFromPurchaser` the payment service accepts: hex of even
/// length, 14–26 characters.
pub fn is_valid_purchaser_identifier(s: &str) -> bool {
    (14..=26).contains(&s.len()) && is_hex_even(s)
}

fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => {
            out.push('"');
            write_json_string_body(out, s);
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(Vec<u16>, &String, &Value)> = map
                .iter()
                .map(|(k, v)| (k.encode_utf16().collect(), k, v))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (_, k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('"');
                write_json_string_body(out, k);
                out.push_str("\":");
                write_canonical(out, v);
            }
            out.push('}');
        }
    }
}

/// Escapes `"`, `\` and control characters (short forms where JSON has them, else
/// `\u00xx`); everything else, non-ASCII included, stays literal.
fn write_json_string_body(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

const MAX_SAFE_INTEGER: u64 = 1 << 53;

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        if u <= MAX_SAFE_INTEGER {
            let _ = write!(out, "{u}");
            return;
        }
    } else if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_SAFE_INTEGER
    {
        let _ = write!(out, "{i}");
        return;
    }
    // Floats, and integers beyond 2^53 (JavaScript sees them as doubles).
    let f = n.as_f64().unwrap_or(0.0);
    out.push_str(&es_number(f));
}

/// ECMAScript `Number.prototype.toString()` of a finite double.
fn es_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".to_owned();
    }
    if v < 0.0 {
        return format!("-{}", es_number(-v));
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `d[.ddd]e<exp>`.
    let formatted = format!("{v:e}");
    let (mantissa, exp) = formatted.split_once('e').unwrap_or((&formatted, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let k = digits.len() as i64;
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e >= 0 { '+' } else { '-' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", e.abs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "aabbaabb11221122aabb";

    #[test]
    fn input_hash_vector_object() {
        let input = json!({"text": "Write a story about a robot", "count": 2});
        assert_eq!(
            canonical_json(&input),
            r#"{"count":2,"text":"Write a story about a robot"}"#
        );
        assert_eq!(
            input_hash(ID, &input),
            "7f1b807c60ad347d64bb0837c88cb7edad3cec8774e6f08fd82bbd278f158113"
        );
    }

    #[test]
    fn input_hash_vector_empty_object() {
        assert_eq!(
            input_hash(ID, &json!({})),
            "b1687ab194553e2fe12892b46b5df2058851d0aad1ca3276fdbe7eb2945ef47e"
        );
    }

    #[test]
    fn output_hash_vector_escapes_without_quotes() {
        let output = "Line 1\nHe said \"hi\" \u{2013} done";
        assert_eq!(
            json_escape(output),
            "Line 1\\nHe said \\\"hi\\\" \u{2013} done"
        );
        // Same as serde_json's string encoding minus the quotes.
        let quoted = serde_json::to_string(output).expect("encodes");
        assert_eq!(json_escape(output), quoted[1..quoted.len() - 1]);
        assert_eq!(
            output_hash(ID, output),
            "68e729cf1950e14473cdbcf8cba6efb2b1dda780e071809d395a1226230af7e1"
        );
    }

    #[test]
    fn raw_output_hash_per_mip004_text_is_not_what_we_send() {
        let output = "Line 1\nHe said \"hi\" \u{2013} done";
        let raw = sha256_hex(&format!("{ID};{output}"));
        assert_eq!(
            raw,
            "5f5e368fe89b9c7d70cd2fe5277ba309854682c1253b61ec3b57f9c8fc7df788"
        );
        assert_ne!(output_hash(ID, output), raw);
    }

    #[test]
    fn canonical_json_follows_jcs() {
        let v: Value =
            serde_json::from_str(r#"{"b":[1.0,2.5,-0.0,1e21,1e-7,0.000001,100,-3],"a":"é\u0001\u007f","":null,"c":{"z":true,"y":false}}"#)
                .expect("parses");
        assert_eq!(
            canonical_json(&v),
            "{\"\":null,\"a\":\"é\\u0001\u{7f}\",\"b\":[1,2.5,0,1e+21,1e-7,0.000001,100,-3],\"c\":{\"y\":false,\"z\":true}}"
        );
        assert_eq!(es_number(123456789012345680000.0), "123456789012345680000");
        assert_eq!(es_number(1.5e300), "1.5e+300");
        assert_eq!(es_number(0.1), "0.1");
        assert_eq!(es_number(5e-324), "5e-324");
        assert_eq!(
            canonical_json(&json!(9_007_199_254_740_993_u64)),
            "9007199254740992"
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+1F600 (surrogates D83D DE00) sorts before U+FF61 in UTF-16, after it in code points.
        let v = json!({"\u{ff61}": 1, "\u{1f600}": 2});
        assert_eq!(canonical_json(&v), "{\"\u{1f600}\":2,\"\u{ff61}\":1}");
    }

    #[test]
    fn purchaser_identifier_rules() {
        assert!(is_valid_purchaser_identifier(ID));
        assert!(is_valid_purchaser_identifier("aabbccddeeff00"));
        assert!(!is_valid_purchaser_identifier("aabbccddeeff0"), "odd");
        assert!(!is_valid_purchaser_identifier("aabbccddeeff"), "short");
        assert!(!is_valid_purchaser_identifier(&"ab".repeat(14)), "long");
        assert!(!is_valid_purchaser_identifier("aabbccddeeffgg"), "not hex");
        assert!(is_hex_even("ABcd"));
        assert!(!is_hex_even(""));
    }
}
