//! Every config mistake names the file, the line and the key; the seed's
//! `[storage.backup]` shape works as written.

use super::*;

const SEED: &str = r#"[storage.backup]
enabled = true
bucket = "my-backups"
interval_seconds = 86400
retention_count = 7

[storage.backup.encryption]
enabled = true
key = "${BACKUP_ENCRYPTION_KEY}"

[cloudflare]
account_id = "${CF_ACCOUNT_ID}"
r2_access_key_id = "${R2_ACCESS_KEY_ID}"
r2_secret_access_key = "${R2_SECRET_ACCESS_KEY}"
"#;

fn seed_env() {
    // A valid key (32 bytes, base64) and made-up account values.
    std::env::set_var(
        "BACKUP_ENCRYPTION_KEY",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );
    std::env::set_var("CF_ACCOUNT_ID", "0123456789abcdef");
    std::env::set_var("R2_ACCESS_KEY_ID", "seed-access-key");
    std::env::set_var("R2_SECRET_ACCESS_KEY", "seed-secret-marker");
}

#[test]
fn the_seed_snippet_works_as_written() {
    seed_env();
    let c = Config::parse(Path::new("app.toml"), SEED, true).unwrap();
    assert!(
        c.dbs.is_empty(),
        "no database named: the application gives it"
    );
    let Some(ReplicaUrl::S3(s3)) = c.backup_replica.as_ref().map(|r| &r.url) else {
        panic!("a bucket with [cloudflare] is an R2 replica: {c:?}")
    };
    assert_eq!(s3.bucket, "my-backups");
    assert_eq!(s3.prefix, "");
    assert_eq!(
        s3.endpoint.as_deref(),
        Some("https://0123456789abcdef.r2.cloudflarestorage.com")
    );
    assert_eq!(s3.access_key_id.as_deref(), Some("seed-access-key"));
    assert_eq!(c.capture.snapshot_interval, Duration::from_secs(86400));
    assert_eq!(c.capture.retention.count, Some(7));
    let enc = c.encryption.as_ref().unwrap().resolve(|_| None).unwrap();
    assert!(enc.encrypt_with.is_some(), "encryption is on");
    assert!(!format!("{c:?}").contains("seed-secret-marker"));

    let with_db = SEED.replace(
        "retention_count = 7\n",
        "retention_count = 7\ndatabase = \"/var/lib/app/app.db\"\nprefix = \"app\"\n",
    );
    let c = Config::parse(Path::new("app.toml"), &with_db, true).unwrap();
    assert_eq!(c.dbs.len(), 1);
    assert_eq!(c.dbs[0].path, PathBuf::from("/var/lib/app/app.db"));
    let ReplicaUrl::S3(s3) = &c.dbs[0].replicas[0].url else {
        panic!("R2")
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str()),
        ("my-backups", "app")
    );
}

#[test]
fn storage_backup_without_cloudflare_is_s3_and_disabled_means_nothing() {
    let text = "[storage.backup]\nbucket = \"b\"\nprefix = \"p/\"\ndatabase = \"/d/a.db\"\n";
    let c = Config::parse(Path::new("t"), text, false).unwrap();
    let ReplicaUrl::S3(s3) = &c.dbs[0].replicas[0].url else {
        panic!("S3")
    };
    assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("b", "p"));
    assert!(s3.endpoint.is_none(), "AWS S3 itself");

    let text = "[storage.backup]\nenabled = false\nbucket = \"b\"\ndatabase = \"/d/a.db\"\n\
                [[db]]\npath = \"/d/b.db\"\n[[db.replica]]\nurl = \"/r\"\n";
    let c = Config::parse(Path::new("t"), text, false).unwrap();
    assert!(c.backups_disabled);
    assert!(c.dbs.is_empty(), "enabled = false replicates nothing");

    let text = "[storage.backup]\nurl = \"/var/backups/app\"\ndatabase = \"/d/a.db\"\n";
    let c = Config::parse(Path::new("t"), text, false).unwrap();
    assert_eq!(
        c.dbs[0].replicas[0].url,
        ReplicaUrl::Local("/var/backups/app".into())
    );
}

/// (config text, line, key) of one mistake each.
const MISTAKES: &[(&str, usize, &str)] = &[
    ("snapshot_intervl = \"1h\"\n", 1, "snapshot_intervl"),
    ("\n\nsnapshot_interval = \"soon\"\n", 3, "snapshot_interval"),
    ("upload_interval = \"fast\"\n", 1, "upload_interval"),
    ("# c\nsnapshot_at = \"3am\"\n", 2, "snapshot_at"),
    ("retention_age = \"a month\"\n", 1, "retention_age"),
    (
        "retain_snapshots = 3\nretention_count = 4\n",
        1,
        "retain_snapshots",
    ),
    ("keep_daily = -1\n", 1, "keep_daily"),
    ("checkpoint_pages = \"many\"\n", 1, "checkpoint_pages"),
    ("verify_interval = \"0\"\n", 1, "verify_interval"),
    ("metrics_addr = \"everywhere\"\n", 1, "metrics_addr"),
    ("webhook_url = \"ftp://x\"\n", 1, "webhook_url"),
    (
        "health_warning_after = \"3h\"\nhealth_critical_after = \"2h\"\n",
        1,
        "health_warning_after",
    ),
    (
        "lag_warning_after = \"9m\"\nlag_critical_after = \"1m\"\n",
        1,
        "lag_warning_after",
    ),
    ("[[db]]\npath = \"/a.db\"\n", 1, "db[0]"),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\n[[db]]\npath = \"/b.db\"\n\
         [[db.replica]]\nurl = \"ftp://r\"\n",
        8,
        "db[1].replica[0].url",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\n[[db.replica]]\nurl = \"/s\"\n",
        5,
        "db[0].replica[1]",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\naccess_key_id = \"A\"\n",
        5,
        "db[0].replica[0].access_key_id",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nname = \"x\"\nurl = \"/r\"\n\
         [[db.replica]]\nname = \"x\"\nurl = \"/s\"\n",
        7,
        "db[0].replica[1].name",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nname = \"../up\"\nurl = \"/r\"\n",
        4,
        "db[0].replica[0].name",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nname = \"a\"\nurl = \"/r\"\n\
         [[db.replica]]\nname = \"b\"\nurl = \"file:///r\"\n",
        8,
        "db[0].replica[1].url",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\n\
         [[db]]\npath = \"/b.db\"\n[[db.replica]]\nurl = \"/r\"\n",
        8,
        "db[1].replica[0].url",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\n\
         [[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/s\"\n",
        6,
        "db[1].path",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\nupload_interval = \"soon\"\n",
        5,
        "db[0].replica[0].upload_interval",
    ),
    (
        "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"/r\"\n\
         [storage.backup]\nurl = \"/s\"\ndatabase = \"/a.db\"\n",
        7,
        "storage.backup.database",
    ),
    ("outage_wal_hold = \"later\"\n", 1, "outage_wal_hold"),
    ("\noutage_wal_max_mb = 0\n", 2, "outage_wal_max_mb"),
    ("[[db]]\npath = \"/a.db\"\nreplicas = 2\n", 3, "replicas"),
    ("[cloudflare]\naccount = \"x\"\n", 2, "account"),
    ("[storage.backup]\nenabled = true\n", 1, "storage.backup"),
    (
        "[storage.backup]\nbucket = \"b\"\nbuckets = \"c\"\n",
        3,
        "buckets",
    ),
    (
        "[storage.backup]\nbucket = \"b\"\nurl = \"/r\"\n",
        3,
        "storage.backup.url",
    ),
    (
        "[storage.backup]\nbucket = \"b\"\ninterval_seconds = 0\n",
        3,
        "storage.backup.interval_seconds",
    ),
    (
        "[storage.backup]\nbucket = \"b\"\ninterval_seconds = \"1d\"\n",
        3,
        "interval_seconds",
    ),
    (
        "retention_count = 3\n[storage.backup]\nbucket = \"b\"\nretention_count = 7\n",
        4,
        "storage.backup.retention_count",
    ),
    (
        "snapshot_interval = \"1h\"\n[storage.backup]\nbucket = \"b\"\ninterval_seconds = 60\n",
        4,
        "storage.backup.interval_seconds",
    ),
    (
        "[encryption]\nenabled = false\n[storage.backup.encryption]\nenabled = false\n",
        3,
        "storage.backup.encryption",
    ),
    (
        "[storage.backup]\nurl = \"/r\"\nprefix = \"p\"\n",
        3,
        "storage.backup.prefix",
    ),
    (
        "[storage.backup.encryption]\nkey = \"k\"\nkeys = []\n",
        3,
        "keys",
    ),
];

#[test]
fn every_mistake_names_file_line_and_key() {
    for &(text, line, key) in MISTAKES {
        let e = Config::parse(Path::new("/etc/walstream.toml"), text, false)
            .expect_err(text)
            .to_string();
        assert!(e.contains("/etc/walstream.toml"), "{text:?}: {e}");
        assert!(
            e.contains(&format!("line {line}")),
            "{text:?} wants line {line}: {e}"
        );
        assert!(e.contains(key), "{text:?} wants key {key}: {e}");
    }
}

#[test]
fn mistakes_in_expanded_values_keep_secrets_out() {
    std::env::set_var("WALSTREAM_TEST_LINE_SECRET", "hunter2-marker");
    let text = "webhook_url = \"ftp://${WALSTREAM_TEST_LINE_SECRET}@h\"\n";
    let e = Config::parse(Path::new("t"), text, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("webhook_url"), "{e}");
    assert!(!e.contains("hunter2-marker"), "{e}");
    // A type error that only exists after expansion: reported by line.
    std::env::set_var("WALSTREAM_TEST_LINE_QUOTE", "x\" = 1\nb = \"");
    let text = "a = 1\nsnapshot_interval = \"${WALSTREAM_TEST_LINE_QUOTE}\"\n";
    let e = Config::parse(Path::new("t"), text, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line "), "{e}");
}

#[test]
fn several_replicas_per_database_with_names() {
    let text = r#"
upload_interval = "2s"
outage_wal_hold = "6h"
outage_wal_max_mb = 512

[[db]]
path = "/d/a.db"

[[db.replica]]
url = "/var/backups/a"
upload_interval = "0s"

[[db.replica]]
name = "primary"
url = "s3://one/a"

[[db.replica]]
name = "secondary"
url = "s3://two/a"

[[db]]
path = "/d/b.db"

[[db.replica]]
url = "s3://one/b"

[[db.replica]]
url = "r2://backups/b?account-id=abc"
"#;
    let c = Config::parse(Path::new("t"), text, false).unwrap();
    assert_eq!(c.dbs.len(), 2);
    let names =
        |i: usize| -> Vec<&str> { c.dbs[i].replicas.iter().map(|r| r.name.as_str()).collect() };
    assert_eq!(
        names(0),
        ["file", "primary", "secondary"],
        "names default to the scheme"
    );
    assert_eq!(names(1), ["s3", "r2"]);
    assert_eq!(
        c.dbs[0].replicas[0].url,
        ReplicaUrl::Local("/var/backups/a".into())
    );
    assert_eq!(c.dbs[0].replicas[0].upload_interval, Some(Duration::ZERO));
    assert_eq!(
        c.dbs[0].replicas[1].upload_interval, None,
        "the global one applies"
    );
    assert_eq!(c.capture.upload_interval, Some(Duration::from_secs(2)));
    assert_eq!(
        c.capture.outage_wal_hold,
        Some(Duration::from_secs(6 * 3600))
    );
    assert_eq!(c.capture.outage_wal_max_bytes, Some(512 << 20));

    // Two unnamed S3 replicas share the default name: the message says what to do.
    let text = "[[db]]\npath = \"/a.db\"\n[[db.replica]]\nurl = \"s3://one/a\"\n\
                [[db.replica]]\nurl = \"s3://two/a\"\n";
    let e = Config::parse(Path::new("/etc/w.toml"), text, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 5") && e.contains("db[0].replica[1]") && e.contains("name = "),
        "{e}"
    );
    // The [storage.backup] replica is named too.
    let text = "[storage.backup]\nbucket = \"b\"\ndatabase = \"/d/a.db\"\n";
    let c = Config::parse(Path::new("t"), text, false).unwrap();
    assert_eq!(c.dbs[0].replicas[0].name, "s3");
}
