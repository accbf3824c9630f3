//! Just enough JWT for Kodosumi's HS256 tokens: the client reads `exp` without verifying
//! (to renew before expiry); the simulator signs and verifies.

use serde_json::Value;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
#[cfg_attr(not(feature = "sim"), allow(dead_code))]
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// base64url, padding optional; `None` on any other character.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The claims of a JWT, unverified.
pub(crate) fn claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    serde_json::from_slice(&b64url_decode(payload)?).ok()
}

/// The `exp` claim (Unix seconds; Kodosumi writes a float), unverified.
pub(crate) fn expires_at(token: &str) -> Option<f64> {
    claims(token)?.get("exp")?.as_f64()
}

#[cfg(feature = "sim")]
pub(crate) use signing::{sign, verify};

#[cfg(feature = "sim")]
mod signing {
    use super::{b64url_decode, b64url_encode};
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            let digest = Sha256::digest(key);
            block[..digest.len()].copy_from_slice(&digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(block.map(|b| b ^ 0x36));
        inner.update(message);
        let inner = inner.finalize();
        let mut outer = Sha256::new();
        outer.update(block.map(|b| b ^ 0x5c));
        outer.update(inner);
        outer.finalize().to_vec()
    }

    /// An HS256 JWT of `claims`.
    pub(crate) fn sign(claims: &Value, secret: &str) -> String {
        let header = b64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64url_encode(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let sig = hmac_sha256(secret.as_bytes(), signing_input.as_bytes());
        format!("{signing_input}.{}", b64url_encode(&sig))
    }

    /// The claims of `token` if its HS256 signature is valid.
    pub(crate) fn verify(token: &str, secret: &str) -> Option<Value> {
        let (signing_input, sig) = token.rsplit_once('.')?;
        let (_, payload) = signing_input.split_once('.')?;
        let expected = hmac_sha256(secret.as_bytes(), signing_input.as_bytes());
        let given = b64url_decode(sig)?;
        // Constant-time enough for a simulator; still no early exit.
        let diff = expected
            .iter()
            .zip(given.iter())
            .fold(expected.len() ^ given.len(), |acc, (a, b)| {
                acc | usize::from(a ^ b)
            });
        if diff != 0 {
            return None;
        }
        serde_json::from_slice(&b64url_decode(payload)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORDED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3OTU1MTk1NTYuNTQ3OTYwNSwiaWF0IjoxNzk1NDMzMTU2LjU0Nzk2MjQsInN1YiI6ImIyNGE5OGVlLTk0MDAtNDllNi1hMzdhLTkzOWQzMWMzNDIzZiJ9.pzn9_1JscRuHAoqi-KKC5hhzoObqO6pt1IdJ4qnZ1fM";

    #[test]
    fn reads_exp_of_a_recorded_token() {
        let exp = expires_at(RECORDED).expect("exp");
        assert!((exp - 1_795_519_556.547_96).abs() < 1e-3, "{exp}");
        assert_eq!(expires_at("garbage"), None);
        assert_eq!(expires_at("a.!!.c"), None);
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..10 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            assert_eq!(b64url_decode(&b64url_encode(&bytes)), Some(bytes));
        }
    }

    #[cfg(feature = "sim")]
    #[test]
    fn hs256_matches_kodosumi() {
        // The recorded token is signed with Kodosumi's default secret.
        let claims = verify(RECORDED, "top secret -- change this in production").expect("valid");
        assert_eq!(claims["sub"], "b24a98ee-9400-49e6-a37a-939d31c3423f");
        assert!(verify(RECORDED, "other").is_none());
        let t = sign(&serde_json::json!({"exp": 1.5, "sub": "x"}), "k");
        assert_eq!(verify(&t, "k").expect("valid")["sub"], "x");
    }
}
