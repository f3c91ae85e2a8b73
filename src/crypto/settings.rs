//! Encryption settings: the config's `[encryption]` table (or the same table
//! under `[storage.backup.encryption]`) and the environment, resolved into the
//! key that encrypts new objects and the keys that may decrypt old ones.

use serde::Deserialize;

use super::{Key, KeyError, Keyring, KEY_ENV, PREVIOUS_KEYS_ENV};

/// The `[encryption]` table as written. Keys stay strings until
/// [`EncryptionConfig::resolve`], which names their origin in errors.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// `None`: encrypt when a key is available.
    pub enabled: Option<bool>,
    pub key: Option<String>,
    #[serde(default)]
    pub previous_keys: Vec<String>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionConfig")
            .field("enabled", &self.enabled)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("previous_keys", &self.previous_keys.len())
            .finish()
    }
}

/// Picks the one encryption table of a config: `[encryption]` or `nested`
/// (`[storage.backup.encryption]`); both set is an error.
pub fn pick_table(
    top: Option<EncryptionConfig>,
    nested: Option<EncryptionConfig>,
) -> Result<Option<EncryptionConfig>, String> {
    match (top, nested) {
        (Some(_), Some(_)) => Err(
            "encryption is configured twice ([encryption] and [storage.backup.encryption]): \
             keep one"
                .into(),
        ),
        (t, n) => Ok(t.or(n)),
    }
}

/// What a command needs: the key for new objects (when encrypting) and every
/// key that may decrypt existing ones.
#[derive(Debug, Clone, Default)]
pub struct EncryptionSettings {
    pub encrypt_with: Option<Key>,
    pub keyring: Keyring,
}

impl EncryptionConfig {
    /// Resolves the table against the environment (`env` looks a variable up).
    /// The config's `key` wins over `WALSTREAM_ENCRYPTION_KEY`; previous keys
    /// from both places are kept. Without `enabled`, encryption is on exactly
    /// when a key is available.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EncryptionSettings, KeyError> {
        let current = match (&self.key, env(KEY_ENV)) {
            (Some(k), _) => Some(Key::from_base64(k, "config [encryption] key")?),
            (None, Some(k)) if !k.trim().is_empty() => Some(Key::from_base64(&k, KEY_ENV)?),
            _ => None,
        };
        let mut previous = Vec::new();
        for (i, k) in self.previous_keys.iter().enumerate() {
            previous.push(Key::from_base64(
                k,
                &format!("config [encryption] previous_keys[{i}]"),
            )?);
        }
        if let Some(list) = env(PREVIOUS_KEYS_ENV) {
            let parts = list.split(|c: char| c == ',' || c.is_whitespace());
            for (i, k) in parts.filter(|p| !p.is_empty()).enumerate() {
                previous.push(Key::from_base64(k, &format!("{PREVIOUS_KEYS_ENV}[{i}]"))?);
            }
        }
        let encrypt_with = match self.enabled {
            Some(false) => None,
            Some(true) => Some(current.clone().ok_or(KeyError::Missing)?),
            None => current.clone(),
        };
        Ok(EncryptionSettings {
            encrypt_with,
            keyring: Keyring::new(current, previous),
        })
    }
}

/// Settings from the process environment alone (no config table).
pub fn from_env() -> Result<EncryptionSettings, KeyError> {
    EncryptionConfig::default().resolve(|name| std::env::var(name).ok())
}
