//! Object names: any listing, however strange its keys, must parse, sort and
//! plan (chains, window) without panicking.
//!
//! Input: text, one key per line.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use walstream::catalog::{parse_key, segment_key, snapshot_key, Catalog, Kind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let keys: Vec<&str> = text.lines().collect();
    for k in &keys {
        if let Some(info) = parse_key(k, 1) {
            // What a parsed name says survives writing it out and parsing again.
            let again = match info.kind {
                Kind::Snapshot => snapshot_key(info.max_txid, info.lineage, info.max_time_ms),
                Kind::Segment => segment_key(
                    info.min_txid,
                    info.max_txid,
                    info.lineage,
                    info.min_time_ms,
                    info.max_time_ms,
                ),
            };
            if let Some(back) = parse_key(&again, 1) {
                assert_eq!(
                    (back.kind, back.lineage, back.min_txid, back.max_txid),
                    (info.kind, info.lineage, info.min_txid, info.max_txid)
                );
                assert_eq!(
                    (back.min_time_ms, back.max_time_ms),
                    (info.min_time_ms, info.max_time_ms)
                );
            }
        }
    }
    let cat = Catalog::from_keys(&keys, 1);
    let _ = cat.max_txid();
    let _ = cat.newest();
    let mut exclude = HashSet::new();
    for chain in cat.chains(&exclude) {
        let _ = (chain.max_txid(), chain.max_time_ms());
    }
    if let Some(w) = cat.window() {
        assert!(w.min_txid <= w.max_txid);
    }
    if let Some(s) = cat.snapshots.first() {
        exclude.insert(s.key.clone());
        let _ = cat.chains(&exclude);
    }
});
