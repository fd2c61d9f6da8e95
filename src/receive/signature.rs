//! `X-Finicity-Signature`: hex HMAC-SHA256 of the raw body bytes, keyed with
//! the partner secret. Several secrets verify at once during a rotation.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::SecretList;

type HmacSha256 = Hmac<Sha256>;

/// Length of a SHA-256 tag in bytes.
const TAG_LEN: usize = 32;

/// Why a signature did not verify. Each maps to a 401 with its own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Finicity-Signature` header.
    #[error("missing X-Finicity-Signature header")]
    Missing,
    /// Not 64 hex characters.
    #[error("X-Finicity-Signature is not a hex HMAC-SHA256")]
    Malformed,
    /// Well-formed, but no configured secret produces it.
    #[error("X-Finicity-Signature does not match the body")]
    Mismatch,
}

/// Verifies webhook signatures against every configured partner secret.
///
/// Each secret's HMAC state is keyed once at start-up and cloned per
/// request, so a verification costs only the hashing of the body.
#[derive(Clone)]
pub struct SignatureVerifier {
    keyed: Vec<HmacSha256>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureVerifier({} secrets)", self.keyed.len())
    }
}

impl SignatureVerifier {
    /// Keys one HMAC per secret.
    pub fn new(secrets: &SecretList) -> Self {
        let keyed =
            secrets.iter().filter_map(|secret| HmacSha256::new_from_slice(secret.expose().as_bytes()).ok()).collect();
        Self { keyed }
    }

    /// Checks `header` (the header's value, if any) against `body`.
    /// Hex of either case is accepted; the comparison is constant-time.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let header = header.trim_ascii();
        let mut tag = [0u8; TAG_LEN];
        hex::decode_to_slice(header, &mut tag).map_err(|_| SignatureError::Malformed)?;
        // Every secret is tried, even after a match, so timing does not tell
        // which one (or whether the first one) matched.
        let mut matched = false;
        for keyed in &self.keyed {
            let mut mac = keyed.clone();
            mac.update(body);
            matched |= mac.verify_slice(&tag).is_ok();
        }
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// The hex signature Finicity would send for `body` with `secret`
/// (the simulator and the tests sign with it).
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secrets: &[&str]) -> SignatureVerifier {
        SignatureVerifier::new(&SecretList::new(secrets.iter().copied()).expect("non-empty"))
    }

    const BODY: &[u8] = br#"{"eventType":"started","customerId":"1005061234"}"#;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn valid_signature_verifies() {
        let v = verifier(&["secret"]);
        assert_eq!(v.verify(Some(sign("secret", BODY).as_bytes()), BODY), Ok(()));
    }

    #[test]
    fn every_secret_of_a_rotation_verifies() {
        let v = verifier(&["new", "old"]);
        assert_eq!(v.verify(Some(sign("new", BODY).as_bytes()), BODY), Ok(()));
        assert_eq!(v.verify(Some(sign("old", BODY).as_bytes()), BODY), Ok(()));
        assert_eq!(v.verify(Some(sign("other", BODY).as_bytes()), BODY), Err(SignatureError::Mismatch));
    }

    #[test]
    fn upper_case_hex_verifies() {
        let v = verifier(&["secret"]);
        let upper = sign("secret", BODY).to_ascii_uppercase();
        assert_eq!(v.verify(Some(upper.as_bytes()), BODY), Ok(()));
    }

    #[test]
    fn wrong_truncated_and_non_hex_are_rejected() {
        let v = verifier(&["secret"]);
        let good = sign("secret", BODY);
        assert_eq!(v.verify(Some(sign("wrong", BODY).as_bytes()), BODY), Err(SignatureError::Mismatch));
        assert_eq!(v.verify(Some(&good.as_bytes()[..62]), BODY), Err(SignatureError::Malformed));
        let non_hex = format!("zz{}", &good[2..]);
        assert_eq!(v.verify(Some(non_hex.as_bytes()), BODY), Err(SignatureError::Malformed));
        assert_eq!(v.verify(Some(b""), BODY), Err(SignatureError::Malformed));
        assert_eq!(v.verify(None, BODY), Err(SignatureError::Missing));
    }

    #[test]
    fn a_changed_body_does_not_verify() {
        let v = verifier(&["secret"]);
        let sig = sign("secret", BODY);
        let reserialised = br#"{"eventType": "started", "customerId": "1005061234"}"#;
        assert_eq!(v.verify(Some(sig.as_bytes()), reserialised), Err(SignatureError::Mismatch));
    }
}
