//! Conformance suite for `ObjectStore` implementations.
//!
//! Every check is a plain async function over `&dyn ObjectStore` (or
//! `Arc<dyn ObjectStore>` where it needs to spawn tasks) and assumes it gets a fresh,
//! empty store. Each implementation runs the same functions from its own
//! `#[tokio::test]`s; the local store's are at the bottom of this file. A remote
//! store can get a fresh store per test by rooting it at a random prefix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use walstream::store::{LocalStore, ObjectMeta, ObjectStore, PutMode, StoreError};

const MIB: usize = 1024 * 1024;

/// Deterministic, non-repeating-looking test data (so misplaced chunks are caught).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn keys(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

// ---------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------

pub async fn put_create_only_then_get(store: &dyn ObjectStore) {
    let body = Bytes::from_static(b"hello, walstream");
    store
        .put("objects/one", body.clone(), PutMode::CreateOnly)
        .await
        .expect("create-only put of a new key");
    assert_eq!(store.get("objects/one").await.expect("get"), body);

    // An empty body is a valid object too.
    store
        .put("objects/empty", Bytes::new(), PutMode::CreateOnly)
        .await
        .expect("empty put");
    assert_eq!(
        store.get("objects/empty").await.expect("get empty"),
        Bytes::new()
    );
    let list = store.list("objects/").await.expect("list");
    assert_eq!(
        list,
        vec![
            ObjectMeta {
                key: "objects/empty".into(),
                size: 0
            },
            ObjectMeta {
                key: "objects/one".into(),
                size: body.len() as u64
            },
        ]
    );
}

pub async fn second_create_only_fails(store: &dyn ObjectStore) {
    let first = Bytes::from_static(b"first body");
    store
        .put("k", first.clone(), PutMode::CreateOnly)
        .await
        .expect("first put");
    let err = store
        .put(
            "k",
            Bytes::from_static(b"second, longer body"),
            PutMode::CreateOnly,
        )
        .await
        .expect_err("second create-only put must fail");
    match &err {
        StoreError::AlreadyExists { key, .. } => assert_eq!(key, "k"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(!err.is_not_found());
    assert_eq!(
        store.get("k").await.expect("get"),
        first,
        "first body must survive"
    );

    // Same rule for put_file.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::write(&src, b"from a file").expect("write src");
    let err = store
        .put_file("k", src, PutMode::CreateOnly)
        .await
        .expect_err("create-only put_file over an existing key must fail");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(store.get("k").await.expect("get"), first);
}

pub async fn overwrite_replaces(store: &dyn ObjectStore) {
    // Overwrite of a missing key creates it.
    store
        .put(
            "state/latest",
            Bytes::from_static(b"a much longer first version"),
            PutMode::Overwrite,
        )
        .await
        .expect("overwrite-create");
    assert_eq!(
        store.get("state/latest").await.expect("get"),
        Bytes::from_static(b"a much longer first version")
    );
    // A shorter body fully replaces the old one (no leftover tail).
    store
        .put(
            "state/latest",
            Bytes::from_static(b"v2"),
            PutMode::Overwrite,
        )
        .await
        .expect("overwrite");
    assert_eq!(
        store.get("state/latest").await.expect("get"),
        Bytes::from_static(b"v2")
    );
    let list = store.list("state/").await.expect("list");
    assert_eq!(
        list,
        vec![ObjectMeta {
            key: "state/latest".into(),
            size: 2
        }]
    );
}

pub async fn concurrent_create_only_single_winner(store: Arc<dyn ObjectStore>) {
    const N: usize = 16;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let body = Bytes::from(pattern(64 * 1024, i as u64));
            let result = store
                .put("race/winner", body.clone(), PutMode::CreateOnly)
                .await;
            (body, result)
        });
    }
    let mut winners = Vec::new();
    let mut losers = 0;
    while let Some(joined) = tasks.join_next().await {
        let (body, result) = joined.expect("task panicked");
        match result {
            Ok(()) => winners.push(body),
            Err(StoreError::AlreadyExists { .. }) => losers += 1,
            Err(other) => panic!("unexpected error from a racing put: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create-only put must win");
    assert_eq!(losers, N - 1);
    assert_eq!(store.get("race/winner").await.expect("get"), winners[0]);
}

pub async fn get_missing_is_not_found(store: &dyn ObjectStore) {
    let err = store.get("no/such/key").await.expect_err("missing get");
    assert!(err.is_not_found(), "{err:?}");
    match &err {
        StoreError::NotFound { key, .. } => assert_eq!(key, "no/such/key"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let err = store
        .get_range("no/such/key", 0, 10)
        .await
        .expect_err("missing get_range");
    assert!(err.is_not_found(), "{err:?}");
    let err = store
        .get_reader("no/such/key")
        .await
        .err()
        .expect("missing get_reader");
    assert!(err.is_not_found(), "{err:?}");

    // A prefix of an existing key is not an object, and neither is anything below an
    // existing object.
    store
        .put("dir/sub/obj", Bytes::from_static(b"x"), PutMode::CreateOnly)
        .await
        .expect("put");
    for key in ["dir", "dir/sub", "dir/sub/obj/below"] {
        let err = store.get(key).await.expect_err("not an object");
        assert!(err.is_not_found(), "{key}: {err:?}");
        let err = store.get_range(key, 0, 1).await.expect_err("not an object");
        assert!(err.is_not_found(), "{key}: {err:?}");
        let err = store.get_reader(key).await.err().expect("not an object");
        assert!(err.is_not_found(), "{key}: {err:?}");
    }
}

pub async fn get_range_cases(store: &dyn ObjectStore) {
    let data = pattern(10_000, 7);
    store
        .put("ranged", Bytes::from(data.clone()), PutMode::CreateOnly)
        .await
        .expect("put");
    let range = |offset: u64, len: u64| store.get_range("ranged", offset, len);

    // Inside.
    assert_eq!(range(0, 100).await.expect("start"), &data[..100]);
    assert_eq!(
        range(1234, 4321).await.expect("middle"),
        &data[1234..1234 + 4321]
    );
    // Exactly to the end.
    assert_eq!(range(9000, 1000).await.expect("to end"), &data[9000..]);
    // Running past the end: a short read.
    assert_eq!(range(9990, 100).await.expect("short"), &data[9990..]);
    assert_eq!(range(0, u64::MAX).await.expect("huge len"), &data[..]);
    // Zero length.
    assert!(range(10, 0).await.expect("empty").is_empty());
    // At and past the end: empty.
    assert!(range(10_000, 10).await.expect("at end").is_empty());
    assert!(range(50_000, 10).await.expect("past end").is_empty());
    assert!(range(u64::MAX, u64::MAX)
        .await
        .expect("far past end")
        .is_empty());
}

pub async fn get_reader_streams(store: &dyn ObjectStore) {
    let data = pattern(3 * MIB, 3);
    store
        .put("big/reader", Bytes::from(data.clone()), PutMode::CreateOnly)
        .await
        .expect("put");
    let mut reader = store.get_reader("big/reader").await.expect("get_reader");
    // Read in small chunks to exercise streaming rather than one big read.
    let mut out = Vec::with_capacity(data.len());
    let mut chunk = vec![0u8; 64 * 1024];
    let mut reads = 0;
    loop {
        let n = reader.read(&mut chunk).await.expect("read");
        if n == 0 {
            break;
        }
        reads += 1;
        out.extend_from_slice(&chunk[..n]);
    }
    assert!(
        reads >= 3 * MIB / chunk.len(),
        "expected many reads, got {reads}"
    );
    assert_eq!(out.len(), data.len());
    assert!(out == data, "streamed body differs");
}

pub async fn list_prefixes_and_sorting(store: &dyn ObjectStore) {
    let objects: &[(&str, usize)] = &[
        ("segments/0000000002.seg", 20),
        ("segments/0000000001.seg", 10),
        ("segments/0000000010.seg", 100),
        ("snapshots/a/b/c/deep.snap", 3),
        ("snapshots/a/top.snap", 4),
        ("seg", 1),
        ("segx/one", 5),
        ("manifest.json", 7),
        ("a-b", 8),
        ("a/b", 9),
        ("a.b", 11),
    ];
    // Insert in the given (unsorted) order.
    for (key, size) in objects {
        store
            .put(key, Bytes::from(vec![b'z'; *size]), PutMode::CreateOnly)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    let all = store.list("").await.expect("list all");
    let mut expected: Vec<ObjectMeta> = objects
        .iter()
        .map(|(key, size)| ObjectMeta {
            key: key.to_string(),
            size: *size as u64,
        })
        .collect();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        all, expected,
        "full listing: every object, sorted by key, with sizes"
    );
    // Byte-wise key order: '-' < '.' < '/'.
    assert_eq!(&keys(&all)[..3], ["a-b", "a.b", "a/b"]);

    assert_eq!(
        keys(&store.list("segments/").await.expect("list")),
        [
            "segments/0000000001.seg",
            "segments/0000000002.seg",
            "segments/0000000010.seg"
        ]
    );
    // A plain string prefix, not a directory: "seg" matches "seg", "segments/..", "segx/..".
    assert_eq!(
        keys(&store.list("seg").await.expect("list")),
        [
            "seg",
            "segments/0000000001.seg",
            "segments/0000000002.seg",
            "segments/0000000010.seg",
            "segx/one"
        ]
    );
    // Prefix ending inside a file name.
    assert_eq!(
        keys(&store.list("segments/00000000").await.expect("list")),
        [
            "segments/0000000001.seg",
            "segments/0000000002.seg",
            "segments/0000000010.seg"
        ]
    );
    assert_eq!(
        keys(&store.list("segments/000000000").await.expect("list")),
        ["segments/0000000001.seg", "segments/0000000002.seg"]
    );
    // Nested keys.
    assert_eq!(
        store.list("snapshots/").await.expect("list"),
        vec![
            ObjectMeta {
                key: "snapshots/a/b/c/deep.snap".into(),
                size: 3
            },
            ObjectMeta {
                key: "snapshots/a/top.snap".into(),
                size: 4
            },
        ]
    );
    assert_eq!(
        keys(&store.list("snapshots/a/b").await.expect("list")),
        ["snapshots/a/b/c/deep.snap"]
    );
    // Exact key as prefix.
    assert_eq!(
        keys(&store.list("manifest.json").await.expect("list")),
        ["manifest.json"]
    );
    // Nothing matches.
    assert!(store.list("nothing/").await.expect("list").is_empty());
    assert!(store.list("segments/1").await.expect("list").is_empty());
}

pub async fn list_many_keys(store: &dyn ObjectStore) {
    const N: usize = 1500;
    // Written from many tasks at once to keep remote stores fast; keys are written in
    // an order different from their sorted order.
    let store_keys: Vec<String> = (0..N)
        .map(|i| format!("many/{:05}", (i * 7919) % N))
        .collect();
    for chunk in store_keys.chunks(100) {
        let puts = chunk.iter().map(|key| {
            let size = key.len() + key.as_bytes()[key.len() - 1] as usize % 5;
            store.put(key, Bytes::from(vec![1u8; size]), PutMode::CreateOnly)
        });
        for result in join_all(puts).await {
            result.expect("put");
        }
    }
    store
        .put("other/x", Bytes::from_static(b"x"), PutMode::CreateOnly)
        .await
        .expect("put");

    let list = store.list("many/").await.expect("list");
    assert_eq!(list.len(), N);
    for (i, meta) in list.iter().enumerate() {
        let key = format!("many/{i:05}");
        let size = key.len() + key.as_bytes()[key.len() - 1] as usize % 5;
        assert_eq!(
            meta,
            &ObjectMeta {
                key,
                size: size as u64
            }
        );
    }
    assert_eq!(store.list("").await.expect("list all").len(), N + 1);
    assert_eq!(store.list("many/01").await.expect("list").len(), 500);
}

/// Awaits every future concurrently (without pulling in the `futures` crate).
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// `store` must point at a location that does not exist.
pub async fn list_missing_location_is_empty(store: &dyn ObjectStore) {
    assert_eq!(store.list("").await.expect("list"), Vec::new());
    assert_eq!(store.list("segments/").await.expect("list"), Vec::new());
    // Reads and deletes behave as for any missing key.
    assert!(store.get("a").await.expect_err("get").is_not_found());
    store
        .delete("a")
        .await
        .expect("delete in a missing location");
}

pub async fn delete_semantics(store: &dyn ObjectStore) {
    store
        .put("del/a", Bytes::from_static(b"aaa"), PutMode::CreateOnly)
        .await
        .expect("put");
    store
        .put("del/b", Bytes::from_static(b"bbb"), PutMode::CreateOnly)
        .await
        .expect("put");
    store.delete("del/a").await.expect("delete");
    let err = store.get("del/a").await.expect_err("deleted");
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(keys(&store.list("").await.expect("list")), ["del/b"]);
    assert_eq!(
        store.get("del/b").await.expect("sibling survives"),
        Bytes::from_static(b"bbb")
    );

    // Deleting again, or a key that never existed, succeeds.
    store.delete("del/a").await.expect("delete twice");
    store.delete("never/was").await.expect("delete missing");
    // Deleting a prefix of an object's key is a missing key, not the object.
    store.delete("del").await.expect("delete non-object prefix");
    assert_eq!(
        store.get("del/b").await.expect("still there"),
        Bytes::from_static(b"bbb")
    );

    // The key can be created again after a delete.
    store
        .put("del/a", Bytes::from_static(b"again"), PutMode::CreateOnly)
        .await
        .expect("re-create after delete");
    assert_eq!(
        store.get("del/a").await.expect("get"),
        Bytes::from_static(b"again")
    );
}

pub async fn put_file_round_trip(store: &dyn ObjectStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big.bin");
    let data = pattern(5 * MIB + 123, 5);
    std::fs::write(&src, &data).expect("write src");

    store
        .put_file("files/big.bin", src.clone(), PutMode::CreateOnly)
        .await
        .expect("put_file");
    let got = store.get("files/big.bin").await.expect("get");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "put_file body differs");
    assert!(src.exists(), "put_file must leave the source in place");
    assert_eq!(
        store.list("files/").await.expect("list"),
        vec![ObjectMeta {
            key: "files/big.bin".into(),
            size: data.len() as u64
        }]
    );

    // Overwrite through put_file.
    std::fs::write(&src, b"small now").expect("rewrite src");
    store
        .put_file("files/big.bin", src.clone(), PutMode::Overwrite)
        .await
        .expect("put_file overwrite");
    assert_eq!(
        store.get("files/big.bin").await.expect("get"),
        Bytes::from_static(b"small now")
    );

    // A missing source file is an error and creates nothing.
    let err = store
        .put_file(
            "files/ghost",
            dir.path().join("missing"),
            PutMode::CreateOnly,
        )
        .await
        .expect_err("missing source");
    assert!(
        !err.is_not_found(),
        "a missing source is not a missing object: {err:?}"
    );
    assert!(store
        .get("files/ghost")
        .await
        .expect_err("not created")
        .is_not_found());
}

pub async fn invalid_keys_rejected(store: &dyn ObjectStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::write(&src, b"x").expect("write src");
    let bad = [
        "",
        "../x",
        "a//b",
        "a b",
        "/abs",
        "trailing/",
        ".",
        "a/./b",
        "a/../b",
        "ä",
        "a\\b",
    ];
    for key in bad {
        let is_invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidKey { key: ref k, .. }) if k == key);
        assert!(
            is_invalid(
                store
                    .put(key, Bytes::from_static(b"x"), PutMode::CreateOnly)
                    .await
            ),
            "put {key:?}"
        );
        assert!(
            is_invalid(
                store
                    .put(key, Bytes::from_static(b"x"), PutMode::Overwrite)
                    .await
            ),
            "put overwrite {key:?}"
        );
        assert!(
            is_invalid(store.put_file(key, src.clone(), PutMode::CreateOnly).await),
            "put_file {key:?}"
        );
        assert!(is_invalid(store.get(key).await.map(drop)), "get {key:?}");
        assert!(
            is_invalid(store.get_range(key, 0, 1).await.map(drop)),
            "get_range {key:?}"
        );
        assert!(
            is_invalid(store.get_reader(key).await.map(drop)),
            "get_reader {key:?}"
        );
        assert!(is_invalid(store.delete(key).await), "delete {key:?}");
    }
    assert!(
        store.list("").await.expect("list").is_empty(),
        "nothing may have been written"
    );
}

// ---------------------------------------------------------------------------
// LocalStore
// ---------------------------------------------------------------------------

fn local() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
    (dir, store)
}

/// Every file below `root` whose name starts with `.tmp-`.
fn tmp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                found.push(path.clone());
            }
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

/// Runs `check` on a fresh local store, then asserts that no temporary file was left.
macro_rules! local_test {
    ($name:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (dir, store) = local();
            $check(&*store).await;
            assert_eq!(
                tmp_files(dir.path()),
                Vec::<PathBuf>::new(),
                "leftover temp files"
            );
        }
    };
}

local_test!(local_put_create_only_then_get, put_create_only_then_get);
local_test!(local_second_create_only_fails, second_create_only_fails);
local_test!(local_overwrite_replaces, overwrite_replaces);
local_test!(local_get_missing_is_not_found, get_missing_is_not_found);
local_test!(local_get_range_cases, get_range_cases);
local_test!(local_get_reader_streams, get_reader_streams);
local_test!(local_list_prefixes_and_sorting, list_prefixes_and_sorting);
local_test!(local_list_many_keys, list_many_keys);
local_test!(local_delete_semantics, delete_semantics);
local_test!(local_put_file_round_trip, put_file_round_trip);
local_test!(local_invalid_keys_rejected, invalid_keys_rejected);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_concurrent_create_only_single_winner() {
    let (dir, store) = local();
    concurrent_create_only_single_winner(Arc::clone(&store)).await;
    assert_eq!(
        tmp_files(dir.path()),
        Vec::<PathBuf>::new(),
        "leftover temp files"
    );
}

#[tokio::test]
async fn local_list_missing_location_is_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("does/not/exist");
    let store = LocalStore::new(&root);
    list_missing_location_is_empty(&store).await;
    assert!(
        !root.exists(),
        "reads, lists and deletes must not create the root"
    );

    // The first write creates the root (and every missing parent).
    store
        .put("first", Bytes::from_static(b"1"), PutMode::CreateOnly)
        .await
        .expect("put creates the root");
    assert_eq!(
        std::fs::read(root.join("first")).expect("file on disk"),
        b"1"
    );
}

#[tokio::test]
async fn local_describe_and_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::new(dir.path());
    assert_eq!(store.describe(), dir.path().display().to_string());
    store
        .put("a/b/c", Bytes::from_static(b"abc"), PutMode::CreateOnly)
        .await
        .expect("put");
    assert_eq!(
        std::fs::read(dir.path().join("a/b/c")).expect("key maps to a file"),
        b"abc"
    );

    // Errors name the store and the key.
    let err = store.get("a/missing").await.expect_err("missing");
    let msg = err.to_string();
    assert!(
        msg.contains("a/missing") && msg.contains(&store.describe()),
        "{msg}"
    );

    // Leftover temporary files (e.g. from a crash) and deleted objects' directories
    // never show up in listings.
    std::fs::write(dir.path().join("a/b/.tmp-deadbeef"), b"partial").expect("write");
    std::fs::create_dir_all(dir.path().join(".tmp-dir")).expect("mkdir");
    std::fs::write(dir.path().join(".tmp-dir/x"), b"partial").expect("write");
    store.delete("a/b/c").await.expect("delete");
    assert!(
        dir.path().join("a/b").is_dir(),
        "delete does not remove directories"
    );
    assert!(store.list("").await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_failed_puts_leave_no_temp_files() {
    let (dir, store) = local();
    store
        .put("x", Bytes::from_static(b"1"), PutMode::CreateOnly)
        .await
        .expect("put");
    for _ in 0..5 {
        let err = store
            .put("x", Bytes::from_static(b"2"), PutMode::CreateOnly)
            .await
            .expect_err("exists");
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    }
    let err = store
        .put_file("y", dir.path().join("no-such-source"), PutMode::Overwrite)
        .await
        .expect_err("missing source");
    assert!(
        matches!(err, StoreError::Io { op: "put_file", .. }),
        "{err:?}"
    );
    assert_eq!(tmp_files(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(store.get("x").await.expect("get"), Bytes::from_static(b"1"));
}
