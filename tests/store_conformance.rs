//! Conformance suite for `ObjectStore` implementations.
//!
//! Every check is a plain async function over `&dyn ObjectStore` (or
//! `Arc<dyn ObjectStore>` where it needs to spawn tasks) and assumes it gets a fresh,
//! empty store. Each implementation runs the same functions from its own
//! `#[tokio::test]`s; the local store's and the S3 store's are at the bottom of this
//! file. The S3 store gets a fresh store per test by rooting it at a random prefix.
//!
//! The S3 tests run against the server named by `WALSTREAM_TEST_S3_ENDPOINT` and
//! `WALSTREAM_TEST_S3_BUCKET` with the credentials in `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`; `scripts/test.sh` starts a SeaweedFS server for them
//! (`scripts/seaweedfs.sh`). Without `WALSTREAM_TEST_S3_ENDPOINT` they fail when
//! `CI=true` and are skipped, with a message, otherwise.

mod common;

use common::{s3_env, S3Env};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use walstream::store::{
    LocalStore, ObjectMeta, ObjectStore, PutMode, S3Config, S3Store, StoreError,
};
use walstream::ReplicaUrl;

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

/// `get_many` answers every key on its own, in the order asked: objects of
/// different sizes, a missing key and an invalid one in the same batch.
pub async fn get_many_answers_each_key_in_order(store: &dyn ObjectStore) {
    let sizes = [0usize, 1, 4096, 70_000, 3];
    let mut keys = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let key = format!("many/{}", 9 - i); // listing order differs from asked order
        let body = Bytes::from(pattern(*len, i as u64));
        store
            .put(&key, body, PutMode::CreateOnly)
            .await
            .expect("put");
        keys.push(key);
    }
    keys.insert(2, "many/missing".to_string());
    keys.insert(4, "many/../escape".to_string());
    let got = store.get_many(&keys).await;
    assert_eq!(got.len(), keys.len());
    let mut size = sizes.iter().enumerate();
    for (key, result) in keys.iter().zip(got) {
        match key.as_str() {
            "many/missing" => assert!(result.expect_err(key).is_not_found()),
            "many/../escape" => assert!(matches!(
                result.expect_err(key),
                StoreError::InvalidKey { .. }
            )),
            _ => {
                let (i, len) = size.next().expect("one size per stored key");
                assert_eq!(result.expect(key), pattern(*len, i as u64), "{key}");
            }
        }
    }
    assert!(store.get_many(&[]).await.is_empty());
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
    // Over two writeback steps of the local store (8 MiB each).
    let data = pattern(19 * MIB + 123, 5);
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

/// Asserts that no temporary file was left below `root`.
fn assert_no_tmp_files(root: &Path) {
    assert_eq!(
        tmp_files(root),
        Vec::<PathBuf>::new(),
        "leftover temp files"
    );
}

/// Runs `check` on a fresh local store, then asserts that no temporary file
/// was left. With a second name, also runs it on the store's form for a
/// thread of its own ([`ObjectStore::for_own_thread`]), driven the way the
/// capture engine drives it: from a plain thread, waiting with
/// `Handle::block_on`.
macro_rules! local_test {
    ($name:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (dir, store) = local();
            $check(&*store).await;
            assert_no_tmp_files(dir.path());
        }
    };
    ($name:ident, $own:ident, $check:ident) => {
        local_test!($name, $check);

        #[test]
        fn $own() {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let (dir, store) = local();
            let own = store
                .for_own_thread()
                .expect("a form for a thread of its own");
            let handle = rt.handle().clone();
            std::thread::spawn(move || handle.block_on($check(&*own)))
                .join()
                .expect("the checks passed");
            assert_no_tmp_files(dir.path());
        }
    };
}

local_test!(
    local_put_create_only_then_get,
    local_own_thread_put_create_only_then_get,
    put_create_only_then_get
);
local_test!(
    local_second_create_only_fails,
    local_own_thread_second_create_only_fails,
    second_create_only_fails
);
local_test!(
    local_overwrite_replaces,
    local_own_thread_overwrite_replaces,
    overwrite_replaces
);
local_test!(
    local_get_missing_is_not_found,
    local_own_thread_get_missing_is_not_found,
    get_missing_is_not_found
);
local_test!(
    local_get_range_cases,
    local_own_thread_get_range_cases,
    get_range_cases
);
local_test!(
    local_get_many_answers_each_key_in_order,
    local_own_thread_get_many_answers_each_key_in_order,
    get_many_answers_each_key_in_order
);
local_test!(local_get_reader_streams, get_reader_streams);
local_test!(
    local_list_prefixes_and_sorting,
    local_own_thread_list_prefixes_and_sorting,
    list_prefixes_and_sorting
);
local_test!(local_list_many_keys, list_many_keys);
local_test!(
    local_delete_semantics,
    local_own_thread_delete_semantics,
    delete_semantics
);
local_test!(
    local_put_file_round_trip,
    local_own_thread_put_file_round_trip,
    put_file_round_trip
);
local_test!(
    local_invalid_keys_rejected,
    local_own_thread_invalid_keys_rejected,
    invalid_keys_rejected
);

/// The form for a thread of its own does its file work while it is polled:
/// a put is done at its first poll, with no runtime to hand work to.
#[test]
fn local_own_thread_works_in_the_polling_thread() {
    let (dir, store) = local();
    let own = store
        .for_own_thread()
        .expect("a form for a thread of its own");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut put = own.put("a/b", Bytes::from_static(b"body"), PutMode::CreateOnly);
    assert!(
        matches!(put.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(()))),
        "not done at the first poll"
    );
    drop(put);
    let stored = std::fs::read(dir.path().join("store/a/b")).expect("the object's file");
    assert_eq!(stored, b"body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_concurrent_create_only_single_winner() {
    let (dir, store) = local();
    concurrent_create_only_single_winner(Arc::clone(&store)).await;
    assert_no_tmp_files(dir.path());
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

// ---------------------------------------------------------------------------
// S3Store
// ---------------------------------------------------------------------------

impl S3Env {
    /// A configuration for the test server, rooted at `prefix`, credentials from the
    /// environment.
    fn config(&self, prefix: &str) -> S3Config {
        let mut config = S3Config::new(&self.bucket, prefix);
        config.endpoint = Some(self.endpoint.clone());
        config.force_path_style = true;
        config
    }

    /// A fresh, empty store: a random prefix of its own in the test bucket.
    fn fresh(&self, test: &str) -> S3Store {
        let prefix = format!("conformance/{test}-{:016x}", rand::random::<u64>());
        S3Store::new(self.config(&prefix)).expect("open the S3 store")
    }
}

/// Multipart uploads under the store's prefix that were neither completed nor aborted.
async fn open_uploads(store: &S3Store) -> Vec<String> {
    let out = store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .prefix(store.object_name(""))
        .send()
        .await
        .expect("ListMultipartUploads");
    out.uploads()
        .iter()
        .map(|u| u.key().unwrap_or_default().to_string())
        .collect()
}

/// Runs `check` on a fresh S3 store, then asserts that no multipart upload was left open.
macro_rules! s3_test {
    ($name:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let Some(env) = s3_env() else { return };
            let s3 = env.fresh(stringify!($name));
            $check(&s3).await;
            assert_eq!(
                open_uploads(&s3).await,
                Vec::<String>::new(),
                "open uploads"
            );
        }
    };
}

s3_test!(s3_put_create_only_then_get, put_create_only_then_get);
s3_test!(s3_second_create_only_fails, second_create_only_fails);
s3_test!(s3_overwrite_replaces, overwrite_replaces);
s3_test!(s3_get_missing_is_not_found, get_missing_is_not_found);
s3_test!(s3_get_range_cases, get_range_cases);
s3_test!(
    s3_get_many_answers_each_key_in_order,
    get_many_answers_each_key_in_order
);
s3_test!(s3_get_reader_streams, get_reader_streams);
s3_test!(s3_list_prefixes_and_sorting, list_prefixes_and_sorting);
s3_test!(s3_list_many_keys, list_many_keys);
s3_test!(s3_delete_semantics, delete_semantics);
s3_test!(s3_put_file_round_trip, put_file_round_trip);
s3_test!(s3_invalid_keys_rejected, invalid_keys_rejected);
s3_test!(
    s3_list_missing_location_is_empty,
    list_missing_location_is_empty
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_concurrent_create_only_single_winner() {
    let Some(env) = s3_env() else { return };
    let store: Arc<dyn ObjectStore> = Arc::new(env.fresh("race"));
    // Several rounds: a lucky interleaving must not hide a second winner.
    concurrent_create_only_single_winner(Arc::clone(&store)).await;
    let store: Arc<dyn ObjectStore> = Arc::new(env.fresh("race2"));
    concurrent_create_only_single_winner(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_keys_live_under_the_prefix_only() {
    let Some(env) = s3_env() else { return };
    let base = format!("isolation-{:016x}", rand::random::<u64>());
    let a = S3Store::new(env.config(&format!("{base}/app"))).expect("open");
    // A sibling whose prefix starts with the first one's.
    let b = S3Store::new(env.config(&format!("{base}/app2"))).expect("open");
    a.put("x/one", Bytes::from_static(b"a"), PutMode::CreateOnly)
        .await
        .expect("put");
    b.put("x/one", Bytes::from_static(b"bb"), PutMode::CreateOnly)
        .await
        .expect("put into the sibling");
    assert_eq!(keys(&a.list("").await.expect("list")), ["x/one"]);
    assert_eq!(a.get("x/one").await.expect("get"), Bytes::from_static(b"a"));
    assert_eq!(
        b.get("x/one").await.expect("get"),
        Bytes::from_static(b"bb")
    );
    assert_eq!(a.describe(), format!("s3://{}/{base}/app", env.bucket));

    // The object's name in the bucket is prefix/key.
    let names: Vec<String> = b
        .client()
        .list_objects_v2()
        .bucket(&env.bucket)
        .prefix(format!("{base}/"))
        .send()
        .await
        .expect("list bucket")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert_eq!(
        names,
        [format!("{base}/app/x/one"), format!("{base}/app2/x/one")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_multipart_put_file() {
    let Some(env) = s3_env() else { return };
    let s3 = env.fresh("multipart");
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big.bin");
    let data = pattern(20 * MIB, 20);
    std::fs::write(&src, &data).expect("write src");

    s3.put_file("snapshots/big", src.clone(), PutMode::CreateOnly)
        .await
        .expect("multipart put_file");
    let got = s3.get("snapshots/big").await.expect("get");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "multipart body differs");
    // It really was a multipart upload: 8 + 8 + 4 MiB.
    let head = s3
        .client()
        .head_object()
        .bucket(s3.bucket())
        .key(s3.object_name("snapshots/big"))
        .send()
        .await
        .expect("head");
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(
        etag.ends_with("-3"),
        "multipart ETag with 3 parts, got {etag:?}"
    );
    // Ranges across part boundaries.
    let boundary = 8 * MIB as u64;
    assert_eq!(
        s3.get_range("snapshots/big", boundary - 10, 20)
            .await
            .expect("range"),
        &data[8 * MIB - 10..8 * MIB + 10]
    );
    assert_eq!(
        s3.list("snapshots/").await.expect("list"),
        vec![ObjectMeta {
            key: "snapshots/big".into(),
            size: data.len() as u64
        }]
    );

    // A second create-only multipart upload fails on CompleteMultipartUpload's
    // If-None-Match, keeps the first body, and leaves no upload open.
    let other = pattern(20 * MIB, 21);
    std::fs::write(&src, &other).expect("rewrite src");
    let err = s3
        .put_file("snapshots/big", src.clone(), PutMode::CreateOnly)
        .await
        .expect_err("create-only multipart over an existing key");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    assert!(
        s3.get("snapshots/big").await.expect("get") == data,
        "first body must survive"
    );
    assert_eq!(open_uploads(&s3).await, Vec::<String>::new(), "aborted");

    // Overwrite replaces it (with a size that is not a multiple of the part size).
    let third = pattern(17 * MIB + 5, 22);
    std::fs::write(&src, &third).expect("rewrite src");
    s3.put_file("snapshots/big", src.clone(), PutMode::Overwrite)
        .await
        .expect("multipart overwrite");
    assert!(s3.get("snapshots/big").await.expect("get") == third);

    // Two create-only multipart uploads racing for one key. On AWS S3 and R2 exactly
    // one wins. SeaweedFS 4.48 checks CompleteMultipartUpload's If-None-Match before
    // it completes, not atomically with it: now and then both racers succeed (seen in
    // about 1 of 10 races; its PutObject is atomic). So exactly one winner is required
    // only with WALSTREAM_TEST_S3_ATOMIC_MULTIPART=1 (set it against AWS or R2).
    let strict = std::env::var("WALSTREAM_TEST_S3_ATOMIC_MULTIPART").is_ok_and(|v| v == "1");
    let srcs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("race{i}"));
            std::fs::write(&path, pattern(9 * MIB, 30 + i as u64)).expect("write");
            path
        })
        .collect();
    let (r0, r1) = tokio::join!(
        s3.put_file("race", srcs[0].clone(), PutMode::CreateOnly),
        s3.put_file("race", srcs[1].clone(), PutMode::CreateOnly),
    );
    let winners: Vec<usize> = [&r0, &r1]
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    for r in [&r0, &r1] {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e:?}");
        }
    }
    if strict {
        assert_eq!(winners.len(), 1, "{r0:?} {r1:?}");
    } else {
        assert!(!winners.is_empty(), "somebody must win: {r0:?} {r1:?}");
        if winners.len() > 1 {
            eprintln!(
                "note: both racing create-only multipart uploads succeeded (this server's \
                 conditional CompleteMultipartUpload is not atomic)"
            );
        }
    }
    let stored = s3.get("race").await.expect("get");
    assert!(
        winners
            .iter()
            .any(|&w| stored == std::fs::read(&srcs[w]).expect("read")),
        "the stored object is a winner's"
    );
    assert_eq!(open_uploads(&s3).await, Vec::<String>::new());
}

/// Every operation's error, for the failure tests.
async fn every_op_error(store: &dyn ObjectStore) -> Vec<StoreError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::write(&src, b"x").expect("write src");
    vec![
        store
            .put("k", Bytes::from_static(b"x"), PutMode::CreateOnly)
            .await
            .expect_err("put"),
        store
            .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .expect_err("put overwrite"),
        store
            .put_file("k", src, PutMode::CreateOnly)
            .await
            .expect_err("put_file"),
        store.get("k").await.expect_err("get"),
        store.get_range("k", 0, 10).await.expect_err("get_range"),
        store.get_reader("k").await.err().expect("get_reader"),
        store.list("").await.expect_err("list"),
        store.delete("k").await.expect_err("delete"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_wrong_credentials_are_named_and_secret_stays_hidden() {
    let Some(env) = s3_env() else { return };
    const MARKER: &str = "walstream-WRONG-secret-marker-5f2c9e";
    let mut config = env.config("wrong-secret");
    config.access_key_id = std::env::var("AWS_ACCESS_KEY_ID").ok();
    config.secret_access_key = Some(MARKER.to_string());
    assert!(!format!("{config:?}").contains(MARKER));
    let store = S3Store::new(config.clone()).expect("open");
    assert!(!format!("{store:?}").contains(MARKER));
    for err in every_op_error(&store).await {
        let msg = err.to_string();
        assert!(
            !msg.contains(MARKER) && !format!("{err:?}").contains(MARKER),
            "secret leaked: {msg}"
        );
        assert!(!err.is_not_found(), "{msg}");
        assert!(msg.contains("credentials are wrong"), "{msg}");
        assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
        assert!(
            matches!(&err, StoreError::Remote(r) if r.code == "SignatureDoesNotMatch"),
            "{err:?}"
        );
    }

    // An unknown access key ID is reported the same way.
    config.access_key_id = Some("WALSTREAMNOSUCHKEY".into());
    let store = S3Store::new(config).expect("open");
    let err = store.list("").await.expect_err("list");
    let msg = err.to_string();
    assert!(msg.contains("credentials are wrong"), "{msg}");
    assert!(!msg.contains(MARKER), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_missing_bucket_is_named() {
    let Some(env) = s3_env() else { return };
    let bucket = format!("walstream-missing-{:08x}", rand::random::<u32>());
    let mut config = env.config("p");
    config.bucket = bucket.clone();
    let store = S3Store::new(config).expect("open");
    for err in every_op_error(&store).await {
        let msg = err.to_string();
        assert!(
            !err.is_not_found(),
            "a missing bucket is not a missing key: {msg}"
        );
        assert!(msg.contains(&bucket), "{msg}");
        assert!(
            matches!(&err, StoreError::Remote(r) if r.code == "NoSuchBucket"),
            "{err:?}"
        );
        assert!(msg.contains("does not exist"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_unreachable_endpoint_fails_fast_and_clearly() {
    let Some(env) = s3_env() else { return };
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut config = env.config("p");
    config.endpoint = Some(endpoint.clone());
    let store = S3Store::new(config).expect("open");
    let started = std::time::Instant::now();
    let err = store
        .put("k", Bytes::from_static(b"x"), PutMode::CreateOnly)
        .await
        .expect_err("closed port");
    let elapsed = started.elapsed();
    let msg = err.to_string();
    assert!(
        matches!(&err, StoreError::Remote(r) if r.code == "ConnectFailed"),
        "{err:?}"
    );
    assert!(
        msg.contains("could not connect") && msg.contains(&endpoint),
        "{msg}"
    );
    assert!(msg.contains("5 attempts"), "{msg}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let err = store.list("").await.expect_err("closed port");
    assert!(err.to_string().contains("could not connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_silent_endpoint_times_out() {
    let Some(env) = s3_env() else { return };
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let mut config = env.config("p");
    config.endpoint = Some(endpoint.clone());
    config.read_timeout = Duration::from_secs(1);
    config.max_attempts = 2;
    let store = S3Store::new(config).expect("open");
    let started = std::time::Instant::now();
    let err = store.get("k").await.expect_err("no answer");
    let elapsed = started.elapsed();
    let msg = err.to_string();
    assert!(
        matches!(&err, StoreError::Remote(r) if r.code == "Timeout"),
        "{err:?}"
    );
    assert!(msg.contains(&endpoint), "{msg}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_replica_url_opens_the_store() {
    let Some(env) = s3_env() else { return };
    let prefix = format!("url-{:016x}", rand::random::<u64>());
    // The endpoint percent-encoded, as a shell user might write it.
    let encoded: String = env
        .endpoint
        .bytes()
        .map(|b| match b {
            b':' => "%3A".to_string(),
            b'/' => "%2F".to_string(),
            b => (b as char).to_string(),
        })
        .collect();
    let url = ReplicaUrl::parse(&format!(
        "s3://{}/{prefix}/db?endpoint={encoded}",
        env.bucket
    ))
    .expect("parse");
    let store = url.open().expect("open");
    assert_eq!(store.describe(), format!("s3://{}/{prefix}/db", env.bucket));
    store
        .put("a/b", Bytes::from_static(b"via url"), PutMode::CreateOnly)
        .await
        .expect("put");
    // The same location through a second URL form (unencoded endpoint).
    let again = ReplicaUrl::parse(&format!(
        "s3://{}/{prefix}/db/?endpoint={}&force-path-style=true",
        env.bucket, env.endpoint
    ))
    .expect("parse")
    .open()
    .expect("open");
    assert_eq!(
        again.get("a/b").await.expect("get"),
        Bytes::from_static(b"via url")
    );
    assert_eq!(keys(&again.list("").await.expect("list")), ["a/b"]);
}

/// A TCP proxy in front of the test server (requests pass unchanged, so signatures stay
/// valid). It keeps a copy of everything clients send, and answers the first
/// `fail_first` connections with `503 SlowDown` itself.
struct TapProxy {
    endpoint: String,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl TapProxy {
    async fn start(upstream: &str, fail_first: usize) -> TapProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;

        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// test endpoint")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let to_fail = Arc::new(AtomicUsize::new(fail_first));
        let log = Arc::clone(&sent);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let fail = to_fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let _ = client.read(&mut buf).await;
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                            <Error><Code>SlowDown</Code><Message>Please reduce your request \
                            rate.</Message></Error>";
                        let response = format!(
                            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(response.as_bytes()).await;
                        let _ = client.shutdown().await;
                    });
                    continue;
                }
                let log = Arc::clone(&log);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = client_rx.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            log.lock().expect("log").extend_from_slice(&buf[..n]);
                            if server_tx.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_tx.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                        let _ = client_tx.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        TapProxy { endpoint, sent }
    }

    /// What clients sent so far, lower-cased where it is ASCII.
    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().expect("log")).to_ascii_lowercase()
    }
}

/// Puts, a multipart put_file, a get and a list through `store`.
async fn some_traffic(store: &dyn ObjectStore, dir: &Path) {
    store
        .put(
            "t/small",
            Bytes::from(vec![b'z'; 1000]),
            PutMode::CreateOnly,
        )
        .await
        .expect("put");
    store
        .put("t/small", Bytes::from(vec![b'y'; 10]), PutMode::Overwrite)
        .await
        .expect("overwrite");
    let src = dir.join("big");
    std::fs::write(&src, vec![b'z'; 9 * MIB]).expect("write");
    store
        .put_file("t/big", src, PutMode::CreateOnly)
        .await
        .expect("multipart put_file");
    assert_eq!(store.get("t/big").await.expect("get").len(), 9 * MIB);
    assert_eq!(
        store.get_range("t/small", 2, 3).await.expect("range"),
        Bytes::from_static(b"yyy")
    );
    assert_eq!(store.list("t/").await.expect("list").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_checksum_headers_only_when_asked_for() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().expect("tempdir");

    // The default (what Cloudflare R2 needs): no checksum headers, no Content-MD5.
    let proxy = TapProxy::start(&env.endpoint, 0).await;
    let mut config = env.config(&format!("checksums-{:016x}", rand::random::<u64>()));
    config.endpoint = Some(proxy.endpoint.clone());
    let store = S3Store::new(config.clone()).expect("open");
    some_traffic(&store, dir.path()).await;
    let sent = proxy.sent();
    assert!(sent.contains("put /"), "the proxy saw the requests");
    for header in [
        "x-amz-checksum",
        "x-amz-sdk-checksum",
        "x-amz-trailer",
        "content-md5",
    ] {
        assert!(!sent.contains(header), "{header} was sent");
    }

    // checksums_when_required = false: the SDK's default CRC32 headers (and still never
    // Content-MD5 with them).
    let proxy = TapProxy::start(&env.endpoint, 0).await;
    config.prefix = format!("checksums-{:016x}", rand::random::<u64>());
    config.endpoint = Some(proxy.endpoint.clone());
    config.checksums_when_required = false;
    let store = S3Store::new(config).expect("open");
    some_traffic(&store, dir.path()).await;
    let sent = proxy.sent();
    assert!(
        sent.contains("x-amz-checksum-crc32"),
        "CRC32 headers expected"
    );
    assert!(!sent.contains("content-md5"), "Content-MD5 was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_retries_slow_down() {
    let Some(env) = s3_env() else { return };
    // Two 503 SlowDown answers, then the real server: the SDK's retries get through.
    let proxy = TapProxy::start(&env.endpoint, 2).await;
    let mut config = env.config(&format!("retry-{:016x}", rand::random::<u64>()));
    config.endpoint = Some(proxy.endpoint.clone());
    let store = S3Store::new(config.clone()).expect("open");
    store
        .put("k", Bytes::from_static(b"v"), PutMode::CreateOnly)
        .await
        .expect("put after two 503s");
    assert_eq!(store.get("k").await.expect("get"), Bytes::from_static(b"v"));

    // Nothing but 503s: the error names the code and the attempts, in bounded time.
    let proxy = TapProxy::start(&env.endpoint, usize::MAX).await;
    config.endpoint = Some(proxy.endpoint.clone());
    config.max_attempts = 3;
    let store = S3Store::new(config).expect("open");
    let started = std::time::Instant::now();
    let err = store.list("").await.expect_err("always 503");
    assert!(
        matches!(&err, StoreError::Remote(r) if r.code == "SlowDown"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
