//! Standard Webhooks signatures: the `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` headers, so that a receiver's off-the-shelf Standard Webhooks library
//! can check that a request came from Hookline and was not altered or replayed.
//!
//! The signed content is `{msg_id}.{timestamp}.{body}`; the signature is its HMAC-SHA256
//! under the secret's key bytes, sent as `v1,<base64>`. With several secrets (a rotation:
//! the new one and the old one for a while) the header holds one `v1,…` entry per secret,
//! separated by spaces, and a receiver accepts the request if any of them verifies.
//!
//! A secret is written `whsec_<base64 of 24 to 64 random bytes>` (the `whsec_` prefix is
//! optional on input, as in the reference libraries). Neither [`SigningSecret`]'s `Debug` nor
//! any [`SigningError`] shows the secret.
//!
//! The message id must not contain a `.` (the id is Hookline's job id, never user input) and
//! the timestamp is the time of the attempt, in seconds since the Unix epoch: a retry keeps
//! its `webhook-id` but is signed anew with a fresh timestamp.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a serialized signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The fewest key bytes a signing secret may have (Standard Webhooks: at least 192 bits).
pub const MIN_SECRET_BYTES: usize = 24;
/// The most key bytes a signing secret may have (Standard Webhooks: at most 512 bits).
pub const MAX_SECRET_BYTES: usize = 64;
/// The name of the header carrying the message id.
pub const WEBHOOK_ID: &str = "webhook-id";
/// The name of the header carrying the attempt's Unix timestamp in seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The name of the header carrying the signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The version tag of an HMAC-SHA256 signature.
const V1: &str = "v1";

/// A signing secret `whsec_<base64>`; `Debug` prints `whsec_***`.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

/// Why a signing secret was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The part after `whsec_` is not standard base64.
    #[error("invalid signing secret: expected whsec_ followed by standard base64")]
    NotBase64,
    /// The decoded key is shorter than 24 or longer than 64 bytes.
    #[error("invalid signing secret: the key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, got {0}")]
    BadLength(usize),
}

impl SigningSecret {
    /// Parses `whsec_<base64>` (or the bare base64, as the reference libraries accept);
    /// surrounding whitespace is ignored. The key must be 24 to 64 bytes.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let text = s.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = STANDARD.decode(encoded).map_err(|_| SigningError::NotBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SigningError::BadLength(key.len()));
        }
        Ok(Self { key })
    }

    /// A fresh random secret of 32 bytes, as text `whsec_<base64>` to show to the user once
    /// and to store (sealed); [`SigningSecret::parse`] reads it back.
    pub fn generate_text() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// The MAC of `{msg_id}.{timestamp}.{body}` under this key.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; parse guarantees 24..=64 bytes anyway.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 signature>` for one message.
    fn sign_one(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("{V1},{}", STANDARD.encode(tag))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}***")
    }
}

/// The `webhook-signature` header value: space-separated `v1,<base64 HMAC-SHA256 of
/// "{msg_id}.{timestamp}.{body}">`, one per secret in the given order (rotation). Empty when
/// `secrets` is empty.
pub fn sign(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| secret.sign_one(msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// The Standard Webhooks headers, in this order: `webhook-id`, `webhook-timestamp` and
/// `webhook-signature`. The signature header is left out when `secrets` is empty, so an
/// unsigned webhook still carries its idempotency id and timestamp.
pub fn signature_headers(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers =
        vec![(WEBHOOK_ID.to_owned(), msg_id.to_owned()), (WEBHOOK_TIMESTAMP.to_owned(), timestamp.to_string())];
    if !secrets.is_empty() {
        headers.push((WEBHOOK_SIGNATURE.to_owned(), sign(secrets, msg_id, timestamp, body)));
    }
    headers
}

/// Whether `header` (a `webhook-signature` value) holds a `v1` signature of this message
/// under `secret`. Entries of other versions or that are not base64 are skipped; each
/// candidate is compared in constant time. Checks neither the timestamp's age nor the id's
/// novelty: that is the receiver's policy.
pub fn verify(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let expected = secret.mac(msg_id, timestamp, body);
    header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == V1)
        .filter_map(|(_, signature)| STANDARD.decode(signature).ok())
        // `fold` rather than `any`: every candidate is checked, whichever matches.
        .fold(false, |found, candidate| expected.clone().verify_slice(&candidate).is_ok() | found)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector of the Standard Webhooks reference libraries
    // (standard-webhooks/standard-webhooks, libraries/*/tests: "testSignFunctionWorks").
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_secret() -> SigningSecret {
        SigningSecret::parse(SPEC_SECRET).expect("spec secret")
    }

    #[test]
    fn specification_test_vector() {
        let secret = spec_secret();
        assert_eq!(sign(std::slice::from_ref(&secret), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), SPEC_SIGNATURE);
        assert!(verify(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE));
        // The prefix is optional, as in the reference libraries.
        let bare = SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("bare");
        assert_eq!(sign(&[bare], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), SPEC_SIGNATURE);
    }

    #[test]
    fn headers_carry_id_timestamp_and_signature() {
        let headers = signature_headers(&[spec_secret()], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let expected: Vec<(String, String)> = vec![
            ("webhook-id".into(), SPEC_ID.into()),
            ("webhook-timestamp".into(), "1614265330".into()),
            ("webhook-signature".into(), SPEC_SIGNATURE.into()),
        ];
        assert_eq!(headers, expected);
        // No secret: id and timestamp only.
        let unsigned = signature_headers(&[], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        assert_eq!(unsigned, expected[..2].to_vec());
        assert_eq!(sign(&[], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), "");
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let new = SigningSecret::parse(&SigningSecret::generate_text()).expect("generated");
        let old = spec_secret();
        let header = sign(&[new.clone(), old.clone()], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2, "{header}");
        assert!(entries.iter().all(|e| e.starts_with("v1,")), "{header}");
        assert_eq!(entries[1], SPEC_SIGNATURE);
        assert_ne!(entries[0], entries[1]);
        assert!(verify(&new, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, &header));
        assert!(verify(&old, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, &header));
        // A third secret verifies neither.
        let other = SigningSecret::parse(&SigningSecret::generate_text()).expect("generated");
        assert!(!verify(&other, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, &header));
    }

    #[test]
    fn tampering_fails_verification() {
        let secret = spec_secret();
        assert!(!verify(&secret, SPEC_ID, SPEC_TIMESTAMP, br#"{"test": 2432232315}"#, SPEC_SIGNATURE));
        assert!(!verify(&secret, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY, SPEC_SIGNATURE));
        assert!(!verify(&secret, "msg_other", SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE));
        // Another version tag, garbage, a truncated signature, an empty header.
        let (_, b64) = SPEC_SIGNATURE.split_once(',').expect("comma");
        for header in [format!("v1a,{b64}"), "v1,!!!".into(), format!("v1,{}", &b64[..20]), String::new()] {
            assert!(!verify(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, &header), "{header}");
        }
        // Garbage around a valid entry does not hide it.
        let noisy = format!("v1a,xyz   v1,bm9wZQ== {SPEC_SIGNATURE} nonsense");
        assert!(verify(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, &noisy));
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        let cases = [
            ("whsec_not base64!!", SigningError::NotBase64),
            ("whsec_c2hvcnQ=", SigningError::BadLength(5)),
            ("", SigningError::BadLength(0)),
        ];
        for (input, expected) in cases {
            let err = SigningSecret::parse(input).expect_err("refused");
            assert_eq!(err, expected, "{input}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("c2hvcnQ") && !text.contains("not base64!!"), "{text}");
        }
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(SigningSecret::parse(&long).expect_err("too long"), SigningError::BadLength(65));
        assert_eq!(
            SigningError::BadLength(5).to_string(),
            "invalid signing secret: the key must be 24 to 64 bytes, got 5"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let secret = spec_secret();
        assert_eq!(format!("{secret:?}"), "whsec_***");
        let generated = SigningSecret::generate_text();
        assert!(generated.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&generated["whsec_".len()..]).expect("base64").len(), 32);
        assert_ne!(generated, SigningSecret::generate_text());
    }
}
