//! End-to-end tests of client-side encryption through the `walstream` binary:
//! no page content reaches the replica in the clear, restore/verify/decrypt
//! need the key and say so when it is missing or wrong, keys rotate, and
//! `keygen` makes usable keys. One variant runs against S3 (skipped like the
//! other S3 tests when no server is configured).

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;
use walstream::crypto::{Key, KEY_ENV, PREVIOUS_KEYS_ENV};

const MARKER: &str = "WALSTREAM-PLAINTEXT-MARKER";

/// A fresh key: base64 and id, made by `walstream keygen`.
fn keygen() -> (String, String) {
    let out = walstream(["keygen"]);
    out.assert_success();
    let b64 = out.stdout.trim().to_string();
    let id = Key::from_base64(&b64, "keygen output").expect("keygen prints a valid key");
    (b64, id.id().to_string())
}

/// `n` commits, each writing the marker (with a counter, so LZ4 cannot fold
/// every occurrence into one back-reference) into a row.
fn commit_markers(app: &mut App, n: usize) {
    for i in 0..n {
        let note = format!("{MARKER} {i} {}", MARKER.repeat(3));
        app.tx(|tx, _| {
            tx.execute(
                "INSERT INTO items(name, qty, price, note) VALUES ('marker', ?1, 0.5, ?2)",
                rusqlite::params![i as i64, note],
            )?;
            Ok(())
        });
    }
}

/// `walstream replicate --once DB REPLICA` with extra environment variables.
fn once(db: &Path, replica: &str, env: &[(&str, &str)]) -> Output {
    walstream_env(
        [
            OsStr::new("replicate"),
            p(db),
            OsStr::new(replica),
            OsStr::new("--once"),
        ],
        env,
    )
}

/// `walstream decrypt --key-env VAR SRC DST` with extra environment variables.
fn decrypt(var: &str, src: &Path, dst: &Path, env: &[(&str, &str)]) -> Output {
    walstream_env(
        [
            OsStr::new("decrypt"),
            OsStr::new("--key-env"),
            OsStr::new(var),
            p(src),
            p(dst),
        ],
        env,
    )
}

/// Objects of the replica that contain the marker.
fn objects_with_marker(replica: &str) -> Vec<String> {
    let objects = replica_objects(replica);
    assert!(!objects.is_empty(), "replica {replica} holds no objects");
    objects
        .into_iter()
        .filter(|(_, bytes)| contains_bytes(bytes, MARKER.as_bytes()))
        .map(|(key, _)| key)
        .collect()
}

/// Replicates continuously with `key` while the marker is written, stops,
/// and checks what the replica holds. Returns the app for comparisons.
fn replicate_markers(env: &Env, replica: &str, key: &str) -> App {
    let mut app = App::create(&env.db);
    let mut rep = Replicator::spawn_env(
        &env.db,
        replica,
        &env.path("replicate.log"),
        &[(KEY_ENV, key)],
    );
    rep.wait_started();
    commit_markers(&mut app, 150);
    rep.wait_shipped(151);
    rep.stop();
    assert!(
        !rep.log_text().contains(key),
        "the key appeared in the log:\n{}",
        rep.log_text()
    );
    app
}

fn assert_marker_never_stored(replica: &str) {
    let leaked = objects_with_marker(replica);
    assert!(leaked.is_empty(), "plaintext marker found in {leaked:?}");
}

#[test]
fn encrypted_replica_never_holds_page_contents() {
    let env = Env::new();
    let replica = file_url(&env.replica);
    let (key, id) = keygen();
    let app = replicate_markers(&env, &replica, &key);
    assert!(
        contains_bytes(
            &std::fs::read(&env.db).unwrap_or_default(),
            MARKER.as_bytes()
        ) || contains_bytes(
            &std::fs::read(env.path("app.db-wal")).unwrap_or_default(),
            MARKER.as_bytes()
        ),
        "the source database should hold the marker"
    );
    assert_marker_never_stored(&replica);

    // The same database replicated without encryption does show the marker,
    // so the scan above is able to find it.
    let plain = file_url(&env.path("plain"));
    replicate_once(&env.db, &plain);
    assert!(!objects_with_marker(&plain).is_empty());

    // Listing needs no key.
    walstream(["list", &replica])
        .assert_success()
        .assert_mentions("snapshot");

    let out = env.path("restored.db");
    restore_env(&replica, &out, &[], &[(KEY_ENV, &key)]).assert_success();
    assert_eq!(digest_file(&out), app.digest());

    let v = walstream_env(["verify", &replica], &[(KEY_ENV, &key)]);
    v.assert_success().assert_mentions(&format!("key {id}"));
    let j = walstream_env(["verify", "--json", &replica], &[(KEY_ENV, &key)]);
    let keys = j.assert_success().json()["keys"].clone();
    assert_eq!(keys[0]["key_id"], id.as_str(), "{j}");
    assert_eq!(keys[0]["available"], true, "{j}");
}

#[test]
fn wrong_or_missing_key_fails_and_leaves_no_output() {
    let env = Env::new();
    let replica = file_url(&env.replica);
    let (key, id) = keygen();
    let (other, other_id) = keygen();
    let mut app = App::create(&env.db);
    commit_markers(&mut app, 5);
    once(&env.db, &replica, &[(KEY_ENV, &key)]).assert_success();
    let out = env.path("out.db");

    let wrong = restore_env(&replica, &out, &[], &[(KEY_ENV, &other)]);
    wrong
        .assert_failure()
        .assert_mentions(&format!("encrypted with key {id}"))
        .assert_mentions(&format!("the configured key is {other_id}"));
    assert!(!wrong.text().contains(&other) && !wrong.text().contains(&key));
    assert!(
        restore_leftovers(&out).is_empty(),
        "{:?}",
        restore_leftovers(&out)
    );

    let missing = restore_env(&replica, &out, &[], &[(KEY_ENV, "")]);
    missing
        .assert_failure()
        .assert_mentions(&id)
        .assert_mentions("no encryption key is configured");
    assert!(restore_leftovers(&out).is_empty());

    // A malformed key is refused before anything starts.
    let short = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
    restore_env(&replica, &out, &[], &[(KEY_ENV, short)])
        .assert_failure()
        .assert_mentions("exactly 32 bytes");
    once(&env.db, &replica, &[(KEY_ENV, "not base64!")])
        .assert_failure()
        .assert_mentions("base64");
    assert!(restore_leftovers(&out).is_empty());

    let v = walstream_env(["verify", &replica], &[(KEY_ENV, &other)]);
    v.assert_failure()
        .assert_mentions(&format!("key {id}"))
        .assert_mentions("not configured");

    // Continuing an encrypted replica without a key would ship pages in clear.
    once(&env.db, &replica, &[(KEY_ENV, "")])
        .assert_failure()
        .assert_mentions("encrypted");
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("writing a config file");
}

#[test]
fn rotated_keys_restore_across_both() {
    let env = Env::new();
    let replica = file_url(&env.replica);
    let (a, a_id) = keygen();
    let (b, b_id) = keygen();
    let mut app = App::create(&env.db);
    commit_markers(&mut app, 10);
    once(&env.db, &replica, &[(KEY_ENV, &a)]).assert_success();
    commit_markers(&mut app, 10);
    once(&env.db, &replica, &[(KEY_ENV, &b), (PREVIOUS_KEYS_ENV, &a)]).assert_success();
    assert_marker_never_stored(&replica);

    // The seed's config shape, with ${VAR} expansion.
    let config = env.path("walstream.toml");
    write_config(
        &config,
        "[storage.backup.encryption]\nenabled = true\nkey = \"${BACKUP_KEY}\"\n\
         previous_keys = [\"${OLD_KEY}\"]\n",
    );
    let cfg = config.display().to_string();
    let both = [
        ("BACKUP_KEY", b.as_str()),
        ("OLD_KEY", a.as_str()),
        (KEY_ENV, ""),
    ];
    let out = env.path("rotated.db");
    restore_env(&replica, &out, &["--config", &cfg], &both).assert_success();
    assert_eq!(digest_file(&out), app.digest());

    let v = walstream_env(["verify", "--config", &cfg, &replica], &both);
    v.assert_success()
        .assert_mentions(&format!("key {a_id}"))
        .assert_mentions(&format!("key {b_id}"));

    // Without the previous key the old objects are unreadable, and said so.
    let only_b = env.path("only-b.db");
    restore_env(&replica, &only_b, &[], &[(KEY_ENV, &b)])
        .assert_failure()
        .assert_mentions(&format!("encrypted with key {a_id}"));
    assert!(restore_leftovers(&only_b).is_empty());
    walstream_env(["verify", &replica], &[(KEY_ENV, &b)])
        .assert_failure()
        .assert_mentions(&format!("key {a_id}"));
}

#[test]
fn decrypt_gives_plain_objects_that_restore_without_a_key() {
    let env = Env::new();
    let replica = file_url(&env.replica);
    let (key, _) = keygen();
    let (other, _) = keygen();
    let mut app = App::create(&env.db);
    commit_markers(&mut app, 5);
    once(&env.db, &replica, &[(KEY_ENV, &key)]).assert_success();
    commit_markers(&mut app, 5);
    once(&env.db, &replica, &[(KEY_ENV, &key)]).assert_success();

    let plain_dir = env.subdir("plain");
    for (name, _) in data_objects(&replica) {
        let src = env.replica.join(&name);
        let dst = plain_dir.join(&name);
        std::fs::create_dir_all(dst.parent().expect("object in a folder")).expect("mkdir");
        decrypt("MY_KEY", &src, &dst, &[("MY_KEY", &key)]).assert_success();
    }
    let plain = file_url(&plain_dir);
    assert!(!objects_with_marker(&plain).is_empty());
    let out = env.path("from-plain.db");
    restore_env(&plain, &out, &[], &[(KEY_ENV, "")]).assert_success();
    assert_eq!(digest_file(&out), app.digest());
    walstream_env(["verify", &plain], &[(KEY_ENV, "")]).assert_success();

    // Wrong key, missing variable, plain input: an error and no output.
    let (name, _) = &data_objects(&replica)[0];
    let src = env.replica.join(name);
    let dst = env.path("decrypted.wseg");
    decrypt("MY_KEY", &src, &dst, &[("MY_KEY", &other)])
        .assert_failure()
        .assert_mentions("encrypted with key");
    decrypt("UNSET_KEY_VAR_X", &src, &dst, &[])
        .assert_failure()
        .assert_mentions("UNSET_KEY_VAR_X");
    walstream_env(
        [OsStr::new("decrypt"), p(&plain_dir.join(name)), p(&dst)],
        &[(KEY_ENV, &key)],
    )
    .assert_failure()
    .assert_mentions("not encrypted");
    let stray: Vec<String> = dir_names(env.dir.path())
        .into_iter()
        .filter(|n| n.contains("decrypt"))
        .collect();
    assert!(stray.is_empty(), "left behind: {stray:?}");
}

#[test]
fn keygen_prints_distinct_valid_keys() {
    let out = walstream(["keygen"]);
    out.assert_success();
    let k1 = out.stdout.trim();
    assert_eq!(k1.len(), 44, "{out}");
    let key = Key::from_base64(k1, "keygen").expect("valid key");
    out.assert_mentions(&format!("key id {}", key.id()));
    let (k2, _) = keygen();
    assert_ne!(k1, k2);
}

#[test]
fn config_enabled_without_a_key_is_refused_at_start() {
    let env = Env::new();
    let _app = App::create(&env.db);
    let config = env.path("c.toml");
    write_config(
        &config,
        &format!(
            "[encryption]\nenabled = true\n[[db]]\npath = \"{}\"\n[[db.replica]]\nurl = \"{}\"\n",
            env.db.display(),
            file_url(&env.replica)
        ),
    );
    walstream_env(
        [
            OsStr::new("replicate"),
            OsStr::new("--config"),
            p(&config),
            OsStr::new("--once"),
        ],
        &[(KEY_ENV, "")],
    )
    .assert_failure()
    .assert_mentions("no key is configured");
    assert!(dir_names(&env.replica).is_empty());
}

#[test]
fn s3_encrypted_replica_never_holds_page_contents() {
    let Some(s3) = s3_env() else { return };
    let env = Env::new();
    let replica = format!(
        "s3://{}/encryption/marker-{:016x}?endpoint={}&force-path-style=true",
        s3.bucket,
        rand::random::<u64>(),
        s3.endpoint
    );
    let (key, _) = keygen();
    let app = replicate_markers(&env, &replica, &key);
    assert_marker_never_stored(&replica);
    let out = env.path("restored.db");
    restore_env(&replica, &out, &[], &[(KEY_ENV, &key)]).assert_success();
    assert_eq!(digest_file(&out), app.digest());
    restore_env(&replica, &env.path("nokey.db"), &[], &[(KEY_ENV, "")])
        .assert_failure()
        .assert_mentions("no encryption key is configured");
}

/// The segments and snapshots of a replica (not its lease or pin markers).
fn data_objects(replica: &str) -> Vec<(String, Vec<u8>)> {
    replica_objects(replica)
        .into_iter()
        .filter(|(name, _)| name.starts_with("segments/") || name.starts_with("snapshots/"))
        .collect()
}
