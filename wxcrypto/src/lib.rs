//! WeChat's wire formats that both the sandbox and the pusher speak: the server-URL crypto (the
//! signatures and the safe-mode (`encrypt_type=aes`) envelope), and in [`errcode`] the table of
//! WeChat's errcodes.
//!
//! WeChat calls an account's server URL with `signature`, `timestamp` and `nonce` query
//! parameters; in safe mode the XML body carries an `<Encrypt>` element signed by
//! `msg_signature`. Both the sandbox (which sends events) and the pusher's `/wechat/events`
//! endpoint (which receives them) use this module, so it holds no I/O and no state beyond a key.
//!
//! - [`signature`] / [`msg_signature`]: SHA-1 over the sorted, concatenated parts, lowercase hex.
//! - [`verify_signature`] / [`verify_msg_signature`]: the same, compared in constant time.
//! - [`Cipher`]: AES-256-CBC with key `base64_decode(EncodingAESKey + "=")`, IV = the first 16
//!   key bytes, PKCS#7 padding to a 32-byte block; plaintext = 16 random bytes + 4-byte
//!   big-endian message length + message + appid.
//!
//! ```
//! use wxcrypto::{Cipher, msg_signature};
//! let cipher = Cipher::new("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")?;
//! let encrypt = cipher.encrypt(b"<xml>...</xml>");
//! let sig = msg_signature("token", "1409659813", "1372623149", &encrypt);
//! assert_eq!(cipher.decrypt(&encrypt)?, b"<xml>...</xml>");
//! # let _ = sig;
//! # Ok::<(), wxcrypto::CryptoError>(())
//! ```

pub mod errcode;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// WeChat pads to a 32-byte block (PKCS#7 with k = 32), not to AES's 16-byte block.
const PAD_BLOCK: usize = 32;
/// EncodingAESKeys are 43 random base64 characters, so the last one usually carries non-zero
/// trailing bits, which strict decoders reject; WeChat's own SDKs ignore them.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);
/// Length of an EncodingAESKey as the WeChat console shows it.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// Why a key could not be loaded or a ciphertext could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters that decode to 32 bytes.
    #[error("EncodingAESKey must be 43 base64 characters decoding to 32 bytes")]
    InvalidKey,
    /// The `<Encrypt>` text is not valid base64.
    #[error("ciphertext is not valid base64")]
    Base64,
    /// The ciphertext length is not a positive multiple of the AES block size.
    #[error("ciphertext length is not a multiple of 16 bytes")]
    BlockLength,
    /// The decrypted bytes do not end in valid PKCS#7 padding (1..=32 bytes of the pad value).
    #[error("invalid padding")]
    Padding,
    /// The decrypted bytes are too short or their length field points past the end.
    #[error("malformed plaintext")]
    Malformed,
    /// The plaintext names another appid than the one this cipher was made for.
    #[error("appid in the plaintext does not match")]
    AppIdMismatch,
}

impl CryptoError {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidKey => "invalid_key",
            Self::Base64 => "base64",
            Self::BlockLength => "block_length",
            Self::Padding => "padding",
            Self::Malformed => "malformed",
            Self::AppIdMismatch => "appid_mismatch",
        }
    }
}

fn sha1_sorted(parts: &mut [&str]) -> String {
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts.iter() {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// `sha1(sorted([token, timestamp, nonce]).join(""))` as lowercase hex: the `signature` query
/// parameter on every request WeChat makes to a server URL.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sha1_sorted(&mut [token, timestamp, nonce])
}

/// `sha1(sorted([token, timestamp, nonce, encrypt]).join(""))` as lowercase hex: the
/// `msg_signature` query parameter of a safe-mode request, where `encrypt` is the base64 text of
/// the body's `<Encrypt>` element.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sha1_sorted(&mut [token, timestamp, nonce, encrypt])
}

fn ct_eq_hex(expected: &str, given: &str) -> bool {
    // Case-insensitive: some gateways upper-case hex; the comparison stays constant time.
    let given = given.to_ascii_lowercase();
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// Whether `given` is the [`signature`] of these parts (constant-time comparison).
pub fn verify_signature(token: &str, timestamp: &str, nonce: &str, given: &str) -> bool {
    ct_eq_hex(&signature(token, timestamp, nonce), given)
}

/// Whether `given` is the [`msg_signature`] of these parts (constant-time comparison).
pub fn verify_msg_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    given: &str,
) -> bool {
    ct_eq_hex(&msg_signature(token, timestamp, nonce, encrypt), given)
}

/// The safe-mode AES-256-CBC envelope for one account (an EncodingAESKey and an appid).
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
    appid: String,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never print it.
        f.debug_struct("Cipher")
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

/// A decrypted envelope: the message and the appid it was sealed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The message (for events, the plain XML).
    pub message: Vec<u8>,
    /// The appid that trails the message in the plaintext.
    pub appid: String,
}

impl Cipher {
    /// Loads a 43-character EncodingAESKey for `appid`.
    pub fn new(encoding_aes_key: &str, appid: impl Into<String>) -> Result<Self, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let mut padded = String::with_capacity(ENCODING_AES_KEY_LEN + 1);
        padded.push_str(encoding_aes_key);
        padded.push('=');
        let bytes = KEY_BASE64
            .decode(padded)
            .map_err(|_| CryptoError::InvalidKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidKey)?;
        Ok(Self {
            key,
            appid: appid.into(),
        })
    }

    /// The appid this cipher seals for and expects when opening.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// Seals `message` with 16 fresh random bytes; returns the base64 `<Encrypt>` text.
    pub fn encrypt(&self, message: &[u8]) -> String {
        self.encrypt_with_random(message, rand::random())
    }

    /// Seals `message` with the given 16 leading bytes (deterministic; for test vectors).
    pub fn encrypt_with_random(&self, message: &[u8], random: [u8; 16]) -> String {
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        let mut plain = Vec::with_capacity(20 + message.len() + self.appid.len() + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(self.appid.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        // pad is in 1..=32, so it fits a byte.
        plain.resize(plain.len() + pad, pad as u8);
        let ct = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .encrypt_padded_vec_mut::<NoPadding>(&plain);
        STANDARD.encode(ct)
    }

    /// Opens a base64 `<Encrypt>` text without checking the appid.
    pub fn open(&self, encrypt: &str) -> Result<Opened, CryptoError> {
        let ct = STANDARD
            .decode(encrypt.trim())
            .map_err(|_| CryptoError::Base64)?;
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(CryptoError::BlockLength);
        }
        let plain = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into())
            .decrypt_padded_vec_mut::<NoPadding>(&ct)
            .map_err(|_| CryptoError::BlockLength)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptoError::Padding);
        }
        let body = &plain[..plain.len() - pad];
        if body.len() < 20 {
            return Err(CryptoError::Malformed);
        }
        let len_bytes: [u8; 4] = body[16..20]
            .try_into()
            .map_err(|_| CryptoError::Malformed)?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let rest = &body[20..];
        if len > rest.len() {
            return Err(CryptoError::Malformed);
        }
        let (message, appid) = rest.split_at(len);
        let appid = String::from_utf8(appid.to_vec()).map_err(|_| CryptoError::Malformed)?;
        Ok(Opened {
            message: message.to_vec(),
            appid,
        })
    }

    /// Opens a base64 `<Encrypt>` text and checks that it was sealed for this cipher's appid.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, CryptoError> {
        let opened = self.open(encrypt)?;
        if opened.appid.as_bytes().ct_eq(self.appid.as_bytes()).into() {
            Ok(opened.message)
        } else {
            Err(CryptoError::AppIdMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const APPID: &str = "wx5823bf96d3bd56c7";
    const MSG: &[u8] = b"<xml><ToUserName><![CDATA[gh_abc]]></ToUserName></xml>";
    // Produced by Python's `cryptography` (AES-CBC) and `hashlib` from the documented
    // algorithm with random bytes b"0123456789abcdef": an independent implementation.
    const VECTOR: &str = "sKqRbbiSUnDhFHOvPjtUMVDlgLMPS/FHp2QKLq90kBvcnMWz71VpgByf8NLKMdRvWhUQYLqNJLZDCVJmxjVlxjrqAkz2HtNKzVOT/tl3E8JznGmiKSBtkuOmY3/wwQVQ";

    #[test]
    fn signature_matches_independent_sha1() {
        assert_eq!(
            signature("QDG6eK", "1409659813", "1372623149"),
            "d2157f2f9079f4d6257b45edf665c43c62e60a0a"
        );
        assert!(verify_signature(
            "QDG6eK",
            "1409659813",
            "1372623149",
            "D2157F2F9079F4D6257B45EDF665C43C62E60A0A"
        ));
        assert!(!verify_signature(
            "QDG6eK",
            "1409659813",
            "1372623150",
            "d2157f2f"
        ));
    }

    #[test]
    fn msg_signature_matches_independent_sha1() {
        let sig = msg_signature("QDG6eK", "1409659813", "1372623149", VECTOR);
        assert_eq!(sig, "becdae9d76561fb8b01fc245a3a180e642bc5fd9");
        assert!(verify_msg_signature(
            "QDG6eK",
            "1409659813",
            "1372623149",
            VECTOR,
            &sig
        ));
    }

    #[test]
    fn encrypt_matches_independent_vector() -> Result<(), CryptoError> {
        let cipher = Cipher::new(KEY, APPID)?;
        assert_eq!(
            cipher.encrypt_with_random(MSG, *b"0123456789abcdef"),
            VECTOR
        );
        assert_eq!(cipher.decrypt(VECTOR)?, MSG);
        Ok(())
    }

    #[test]
    fn round_trip_every_padding_length() -> Result<(), CryptoError> {
        let cipher = Cipher::new(KEY, APPID)?;
        for len in 0..70 {
            let msg = vec![b'x'; len];
            let sealed = cipher.encrypt(&msg);
            let opened = cipher.open(&sealed)?;
            assert_eq!(opened.message, msg);
            assert_eq!(opened.appid, APPID);
            // Random prefix: the same message never seals to the same text.
            assert_ne!(cipher.encrypt(&msg), sealed);
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_keys_and_ciphertexts() -> Result<(), CryptoError> {
        assert_eq!(
            Cipher::new("short", APPID).err(),
            Some(CryptoError::InvalidKey)
        );
        assert_eq!(
            Cipher::new(&"!".repeat(43), APPID).err(),
            Some(CryptoError::InvalidKey)
        );
        let cipher = Cipher::new(KEY, APPID)?;
        assert_eq!(cipher.decrypt("%%%").err(), Some(CryptoError::Base64));
        assert_eq!(cipher.decrypt("AAAA").err(), Some(CryptoError::BlockLength));
        let other = Cipher::new(KEY, "wxother")?;
        assert_eq!(
            other.decrypt(VECTOR).err(),
            Some(CryptoError::AppIdMismatch)
        );
        // Another key decrypts to garbage: padding or structure must fail.
        let wrong = Cipher::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", APPID)?;
        assert!(wrong.decrypt(VECTOR).is_err());
        Ok(())
    }

    #[test]
    fn debug_hides_the_key() -> Result<(), CryptoError> {
        let text = format!("{:?}", Cipher::new(KEY, APPID)?);
        assert!(!text.contains("key"), "{text}");
        Ok(())
    }
}
