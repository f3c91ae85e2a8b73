//! Client-side encryption of object bodies: AES-256-GCM over fixed-size chunks
//! of the LZ4 body, with the object header as associated data. See
//! `docs/encryption.md` for the construction and `docs/format.md` for the bytes.
//!
//! Keys are 32 random bytes, written as base64. Objects carry only a key id (a
//! domain-separated hash of the key), so a reader can say which key it needs
//! without the key ever leaving the machine.

mod object;
pub mod settings;
mod stream;

use std::fmt;

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;

pub use object::{open_object, seal_object};
pub use settings::{EncryptionConfig, EncryptionSettings};
pub(crate) use stream::{unwrap_format_error, Opener, Sealer};

/// Environment variable holding the current key (base64).
pub const KEY_ENV: &str = "WALSTREAM_ENCRYPTION_KEY";
/// Environment variable holding older keys that may still decrypt objects
/// (base64, separated by commas or whitespace).
pub const PREVIOUS_KEYS_ENV: &str = "WALSTREAM_ENCRYPTION_PREVIOUS_KEYS";

const KEY_LEN: usize = 32;
/// HKDF `info` strings: one per purpose, so a key id can never equal or reveal
/// an object key.
const KEY_ID_INFO: &[u8] = b"walstream key id v1";
const OBJECT_KEY_INFO: &[u8] = b"walstream object key v1";

/// Fingerprint of a key, stored in every encrypted object's header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A key that could not be used. `origin` says where it came from (a variable
/// name or config field), never what it was.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{origin}: not valid base64 (an encryption key is the 44-character output of \
         `walstream keygen`)"
    )]
    BadBase64 { origin: String },
    #[error(
        "{origin}: decodes to {len} bytes, but an encryption key must be exactly 32 bytes \
         (generate one with `walstream keygen`)"
    )]
    WrongLength { origin: String, len: usize },
    #[error(
        "encryption is enabled but no key is configured: set {KEY_ENV} or `key` in the \
         config's [encryption] table"
    )]
    Missing,
}

/// Why an encrypted body could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "this object was encrypted with key {needed}, but no encryption key is configured \
         (set {KEY_ENV} or the config's [encryption] key)"
    )]
    NoKey { needed: KeyId },
    #[error("this object was encrypted with key {needed}; the configured key is {configured}")]
    WrongKey { needed: KeyId, configured: KeyList },
    #[error(
        "authentication failed: the encrypted body was modified, truncated or reordered, \
         or belongs to another object"
    )]
    Authentication,
    #[error("unsupported encryption scheme {0}")]
    UnsupportedScheme(u8),
    #[error("invalid encryption chunk size {0}")]
    BadChunkSize(u32),
    #[error("object has too many encrypted chunks")]
    TooManyChunks,
    #[error("object is not encrypted")]
    NotEncrypted,
    #[error("object is already encrypted")]
    AlreadyEncrypted,
}

impl CryptoError {
    /// The object is fine; the key to read it is not configured.
    pub fn is_key_problem(&self) -> bool {
        matches!(
            self,
            CryptoError::NoKey { .. } | CryptoError::WrongKey { .. }
        )
    }
}

/// Key ids as shown in messages: the current one, then previous ones.
#[derive(Debug, Clone)]
pub struct KeyList(Vec<KeyId>);

impl fmt::Display for KeyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.0.iter();
        if let Some(first) = ids.next() {
            write!(f, "{first}")?;
        }
        let rest: Vec<String> = ids.map(KeyId::to_string).collect();
        if !rest.is_empty() {
            write!(f, " (previous keys: {})", rest.join(", "))?;
        }
        Ok(())
    }
}

/// A 256-bit encryption key. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", self.id)
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let mut id = [0u8; 8];
        expand(&bytes, None, KEY_ID_INFO, &mut id);
        Key {
            bytes,
            id: KeyId(id),
        }
    }

    /// Parses base64 (standard alphabet, padded; surrounding whitespace is
    /// ignored). `origin` names the source in errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<Key, KeyError> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::BadBase64 {
                origin: origin.to_string(),
            })?;
        let bytes: [u8; KEY_LEN] =
            decoded
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::WrongLength {
                    origin: origin.to_string(),
                    len: decoded.len(),
                })?;
        Ok(Key::from_bytes(bytes))
    }

    /// A new key straight from the operating system's random source.
    pub fn generate() -> std::io::Result<Key> {
        use rand::TryRngCore;
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(std::io::Error::other)?;
        Ok(Key::from_bytes(bytes))
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The cipher for one object: a fresh key derived from `salt`, so even a
    /// repeated nonce prefix in two objects never repeats a (key, nonce) pair.
    fn object_cipher(&self, salt: &[u8]) -> Aes256Gcm {
        let mut k = [0u8; KEY_LEN];
        expand(&self.bytes, Some(salt), OBJECT_KEY_INFO, &mut k);
        Aes256Gcm::new(&k.into())
    }
}

/// HKDF-SHA256; the output lengths used here (8 and 32) are always valid.
fn expand(ikm: &[u8], salt: Option<&[u8]>, info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    if hk.expand(info, out).is_err() {
        unreachable!("HKDF-SHA256 output of {} bytes", out.len());
    }
}

/// The keys that may decrypt objects: the current one (which also encrypts new
/// objects) and previous ones kept for objects written before a rotation.
#[derive(Clone, Default)]
pub struct Keyring {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({})", KeyList(self.ids()))
    }
}

impl Keyring {
    pub fn new(current: Option<Key>, previous: Vec<Key>) -> Keyring {
        Keyring { current, previous }
    }

    pub fn current(&self) -> Option<&Key> {
        self.current.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_empty()
    }

    /// Ids of every key, the current one first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.current
            .iter()
            .chain(&self.previous)
            .map(Key::id)
            .collect()
    }

    pub fn find(&self, id: KeyId) -> Option<&Key> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// The key for an object encrypted with `id`, or an error naming both ids.
    pub fn key_for(&self, id: KeyId) -> Result<&Key, CryptoError> {
        match self.find(id) {
            Some(k) => Ok(k),
            None if self.is_empty() => Err(CryptoError::NoKey { needed: id }),
            None => Err(CryptoError::WrongKey {
                needed: id,
                configured: KeyList(self.ids()),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
