//! `verify --sample K/N` and `verify --deep`: shares that cover every object
//! exactly once, deep restores at seeded points, and a replica that passes the
//! shallow hash replay but does not restore to a valid database.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::*;
use walstream::checksum::PageHashes;
use walstream::format::{decode_all, BodyWriter, ObjectKind};
use walstream::Keyring;

/// A replica with one snapshot and several segments.
fn replica_with_history(env: &Env) -> String {
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &replica);
    for _ in 0..5 {
        app.commit_insert_many(20);
        app.commit_random();
        replicate_once(&env.db, &replica);
    }
    replica
}

fn all_keys(replica: &str) -> Vec<String> {
    let list = list_json(replica);
    let mut keys: Vec<String> = snapshots(&list)
        .into_iter()
        .chain(segments(&list))
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

#[test]
fn sample_shares_read_every_object_exactly_once() {
    let env = Env::new();
    let replica = replica_with_history(&env);
    let keys = all_keys(&replica);
    assert!(keys.len() >= 6, "{keys:?}");
    let n = 3;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for k in 1..=n {
        let o = walstream([
            "verify",
            "--json",
            "--sample",
            &format!("{k}/{n}"),
            &replica,
        ]);
        o.assert_success();
        let v = o.json();
        assert_eq!(
            v["sample"].as_str(),
            Some(format!("{k}/{n}").as_str()),
            "{o}"
        );
        let checked = v["checked_keys"].as_array().expect("checked_keys");
        assert_eq!(v["objects"].as_u64(), Some(checked.len() as u64), "{o}");
        for key in checked {
            *seen
                .entry(key.as_str().expect("a key").to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), keys);
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");

    // A damaged object is found by exactly the share that holds it.
    let victim = keys.last().expect("an object").clone();
    let path = env.replica.join(&victim);
    let len = fs::metadata(&path).expect("object").len();
    flip_byte(&path, len - 1);
    let failing: Vec<u64> = (1..=n)
        .filter(|k| {
            let o = walstream(["verify", "--sample", &format!("{k}/{n}"), &replica]);
            assert!(matches!(o.code(), Some(0 | 1)), "{o}");
            if o.code() == Some(1) {
                o.assert_mentions(&victim);
            }
            o.code() == Some(1)
        })
        .collect();
    assert_eq!(failing.len(), 1, "exactly one share reads {victim}");

    let o = walstream(["verify", "--sample", "4/3", &replica]);
    assert_eq!(o.code(), Some(2), "a bad --sample is a usage error:\n{o}");
}

#[test]
fn deep_restores_the_latest_and_seeded_points() {
    let env = Env::new();
    let replica = replica_with_history(&env);
    let run = || {
        let o = walstream([
            "verify", "--json", "--deep", "--points", "3", "--seed", "7", &replica,
        ]);
        o.assert_success();
        o.json()
    };
    let v = run();
    assert_eq!(v["ok"].as_bool(), Some(true), "{v:#}");
    let restores = v["deep"]["restores"].as_array().expect("restores").clone();
    assert_eq!(restores.len(), 4, "latest + 3 points: {v:#}");
    let window = window(&list_json(&replica)).expect("a window");
    assert_eq!(restores[0]["txid"].as_u64(), Some(window.1));
    for r in &restores {
        assert_eq!(r["ok"].as_bool(), Some(true), "{r}");
        assert_eq!(r["checksum_verified"].as_bool(), Some(true), "{r}");
        let t = r["txid"].as_u64().expect("txid");
        assert!((window.0..=window.1).contains(&t), "{t} outside {window:?}");
    }
    assert_eq!(
        run()["deep"]["restores"],
        v["deep"]["restores"],
        "same seed, same txids"
    );

    // Unreachable replica: "could not run", not "problems found".
    let o = walstream([
        "verify",
        "--deep",
        "s3://no-such-bucket/x?endpoint=http://127.0.0.1:1",
    ]);
    assert_eq!(o.code(), Some(2), "{o}");
}

/// Rewrites the snapshot so that its pages are a broken b-tree yet agree with
/// its recorded checksum and CRCs: what a buggy writer could have produced.
/// The shallow run replays hashes and finds nothing; only a real restore and
/// SQLite's own check can tell.
#[test]
fn deep_catches_a_snapshot_that_is_consistent_but_not_a_database() {
    let env = Env::new();
    let replica = env.replica_arg();
    let mut app = App::create(&env.db);
    app.commit_insert_many(50);
    replicate_once(&env.db, &replica);
    let snap = snapshots(&list_json(&replica)).remove(0);
    let path = env.replica.join(&snap.key);
    let bytes = fs::read(&path).expect("snapshot");
    let (mut header, pages) = decode_all(&bytes, &Keyring::default()).expect("decodes");
    assert!(pages.len() >= 2, "the snapshot has a table page");

    let mut hashes = PageHashes::new(header.page_size);
    let mut body = BodyWriter::new(Vec::new(), ObjectKind::Snapshot);
    for (r, page) in &pages {
        let mut page = page.clone();
        if r.pgno == 2 {
            page[0] = 0x00; // not a b-tree page type
        }
        hashes.set_page(r.pgno, &page);
        body.write_page(r.pgno, &page).expect("encoding");
    }
    hashes.resize(header.commits[0].db_pages);
    header.commits[0].checksum = Some(hashes.checksum());
    let mut out = header.encode();
    out.extend_from_slice(&body.finish().expect("finishing"));
    fs::remove_file(&path).expect("replacing the snapshot");
    write_file(&path, &out);

    walstream(["verify", &replica])
        .assert_success()
        .assert_mentions("OK");
    let o = walstream(["verify", "--deep", "--points", "0", &replica]);
    assert_eq!(o.code(), Some(1), "deep verification must fail:\n{o}");
    o.assert_mentions(&snap.key);
    let text = o.text().to_lowercase();
    assert!(
        text.contains("integrity_check") || text.contains("malformed"),
        "SQLite's verdict is reported:\n{o}"
    );
}
