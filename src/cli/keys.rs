//! Encryption keys on the command line: resolving them from the config and the
//! environment, `keygen` and `decrypt`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use walstream::config::Config;
use walstream::crypto::{open_object, EncryptionConfig, EncryptionSettings, Key, Keyring};

/// The keys of a command: the config's encryption table (if any) resolved
/// against the environment. Invalid keys fail here, before any work starts.
pub fn settings(config: Option<&Config>) -> Result<EncryptionSettings> {
    let table = config
        .and_then(|c| c.encryption.clone())
        .unwrap_or_default();
    Ok(resolve(&table)?)
}

/// The keys that may decrypt, from the config file at `path` (if any) and
/// the environment.
pub fn keyring(path: Option<&Path>, expand: bool) -> Result<Keyring> {
    let config = match path {
        Some(p) => Some(Config::load(p, expand)?),
        None => None,
    };
    Ok(settings(config.as_ref())?.keyring)
}

fn resolve(table: &EncryptionConfig) -> Result<EncryptionSettings, walstream::crypto::KeyError> {
    table.resolve(|name| std::env::var(name).ok())
}

/// `walstream keygen`: a new key on stdout, its id on stderr.
pub fn keygen() -> Result<ExitCode> {
    let key = Key::generate().context("reading the system's random source")?;
    println!("{}", key.to_base64());
    eprintln!(
        "key id {} — store this key safely: without it, encrypted backups cannot be restored",
        key.id()
    );
    Ok(ExitCode::SUCCESS)
}

/// `walstream decrypt`: one downloaded object into its plain form. Written to
/// a temporary file beside `output` that becomes `output` only when complete.
pub fn decrypt(key_env: &str, input: &Path, output: &Path) -> Result<ExitCode> {
    let value = std::env::var(key_env).map_err(|_| {
        anyhow!(
            "environment variable {key_env} is not set: it must hold the encryption key (base64)"
        )
    })?;
    let keys = Keyring::new(Some(Key::from_base64(&value, key_env)?), Vec::new());
    if output.symlink_metadata().is_ok() {
        bail!(
            "output {} already exists: choose another path",
            output.display()
        );
    }
    let src = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let tmp = Temp(walstream::restore::temp_beside(output, "decrypt"));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp.0)
        .with_context(|| format!("creating {}", tmp.0.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let header = open_object(BufReader::with_capacity(1 << 20, src), &mut out, &keys)
        .with_context(|| format!("decrypting {}", input.display()))?;
    out.flush()
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.0.display()))?;
    // A hard link never replaces a file that appeared meanwhile.
    std::fs::hard_link(&tmp.0, output)
        .with_context(|| format!("publishing {}", output.display()))?;
    eprintln!(
        "decrypted {} (txids {}..={}) into {}",
        input.display(),
        header.min_txid(),
        header.max_txid(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removed when dropped (after a successful publish it is the second link).
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
