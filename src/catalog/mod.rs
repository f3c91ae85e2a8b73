//! What a replica holds: object naming and the catalog built from one listing.
//!
//! Object names carry everything planning needs (kind, lineage, txid range and
//! time range), so a restore learns the whole history from a single listing
//! without reading any object.

use std::collections::HashSet;
use std::sync::Arc;

use crate::store::{ObjectStore, StoreError};

mod fence;
pub use fence::Superseded;

pub const SNAPSHOT_DIR: &str = "snapshots/";
pub const SEGMENT_DIR: &str = "segments/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Snapshot,
    Segment,
}

/// One object in the replica, as described by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub kind: Kind,
    pub lineage: u64,
    pub min_txid: u64,
    pub max_txid: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub size: u64,
}

/// Key of a snapshot holding the state at `txid`, observed at `time_ms`.
pub fn snapshot_key(txid: u64, lineage: u64, time_ms: i64) -> String {
    format!("{SNAPSHOT_DIR}{txid:016x}-{lineage:016x}-{time_ms:013}.wsnap")
}

/// Key of a segment with commits `min..=max` observed between the two times.
pub fn segment_key(min: u64, max: u64, lineage: u64, tmin: i64, tmax: i64) -> String {
    format!("{SEGMENT_DIR}{min:016x}-{max:016x}-{lineage:016x}-{tmin:013}-{tmax:013}.wseg")
}

/// Parses a key written by [`snapshot_key`] or [`segment_key`].
pub fn parse_key(key: &str, size: u64) -> Option<ObjectInfo> {
    let hex = |s: &str| {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let ms = |s: &str| (s.len() == 13).then(|| s.parse::<i64>().ok()).flatten();
    if let Some(name) = key
        .strip_prefix(SNAPSHOT_DIR)
        .and_then(|k| k.strip_suffix(".wsnap"))
    {
        let p: Vec<&str> = name.split('-').collect();
        let [txid, lineage, time] = p.as_slice() else {
            return None;
        };
        let (txid, time) = (hex(txid)?, ms(time)?);
        return Some(ObjectInfo {
            key: key.to_string(),
            kind: Kind::Snapshot,
            lineage: hex(lineage)?,
            min_txid: txid,
            max_txid: txid,
            min_time_ms: time,
            max_time_ms: time,
            size,
        });
    }
    let name = key.strip_prefix(SEGMENT_DIR)?.strip_suffix(".wseg")?;
    let p: Vec<&str> = name.split('-').collect();
    let [min, max, lineage, tmin, tmax] = p.as_slice() else {
        return None;
    };
    let info = ObjectInfo {
        key: key.to_string(),
        kind: Kind::Segment,
        lineage: hex(lineage)?,
        min_txid: hex(min)?,
        max_txid: hex(max)?,
        min_time_ms: ms(tmin)?,
        max_time_ms: ms(tmax)?,
        size,
    };
    (info.min_txid <= info.max_txid && info.min_time_ms <= info.max_time_ms).then_some(info)
}

/// The restorable range starting at one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain<'a> {
    pub snapshot: &'a ObjectInfo,
    /// Segments of the snapshot's lineage, contiguous from `snapshot.max_txid + 1`.
    pub segments: Vec<&'a ObjectInfo>,
}

impl Chain<'_> {
    pub fn max_txid(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.snapshot.max_txid, |s| s.max_txid)
    }
    pub fn max_time_ms(&self) -> i64 {
        self.segments
            .last()
            .map_or(self.snapshot.max_time_ms, |s| s.max_time_ms)
    }
}

/// Everything in a replica, from one listing.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Sorted by txid.
    pub snapshots: Vec<ObjectInfo>,
    /// Sorted by min txid.
    pub segments: Vec<ObjectInfo>,
    /// Keys in the replica's directories that walstream did not write.
    pub unknown: Vec<String>,
    /// Objects whose txids a later-written lineage holds (see `fence`):
    /// never used, deleted by retention once the window has passed them.
    pub superseded: Vec<Superseded>,
}

/// The restorable window: every txid in `min_txid..=max_txid` that a chain covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub min_txid: u64,
    pub max_txid: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
}

impl Catalog {
    pub async fn load(store: &Arc<dyn ObjectStore>) -> Result<Catalog, StoreError> {
        let mut cat = Catalog::default();
        for dir in [SNAPSHOT_DIR, SEGMENT_DIR] {
            for meta in store.list(dir).await? {
                match parse_key(&meta.key, meta.size) {
                    Some(info) if info.kind == Kind::Snapshot => cat.snapshots.push(info),
                    Some(info) => cat.segments.push(info),
                    None => cat.unknown.push(meta.key),
                }
            }
        }
        cat.sort();
        cat.fence();
        Ok(cat)
    }

    /// A catalog of the given keys (each of size `size`), as a listing would give.
    pub fn from_keys<S: AsRef<str>>(keys: &[S], size: u64) -> Catalog {
        let mut cat = Catalog::default();
        for k in keys {
            match parse_key(k.as_ref(), size) {
                Some(info) if info.kind == Kind::Snapshot => cat.snapshots.push(info),
                Some(info) => cat.segments.push(info),
                None => cat.unknown.push(k.as_ref().to_string()),
            }
        }
        cat.sort();
        cat.fence();
        cat
    }

    pub fn sort(&mut self) {
        self.snapshots
            .sort_by(|a, b| (a.max_txid, &a.key).cmp(&(b.max_txid, &b.key)));
        self.segments.sort_by(|a, b| {
            (a.min_txid, a.max_txid, &a.key).cmp(&(b.min_txid, b.max_txid, &b.key))
        });
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.segments.is_empty()
    }

    /// Highest txid any object holds.
    pub fn max_txid(&self) -> u64 {
        self.snapshots
            .iter()
            .chain(&self.segments)
            .map(|o| o.max_txid)
            .max()
            .unwrap_or(0)
    }

    /// The object ending at the highest txid (a segment wins a tie with a snapshot
    /// of the same lineage: both describe the same state).
    pub fn newest(&self) -> Option<&ObjectInfo> {
        self.snapshots
            .iter()
            .chain(&self.segments)
            .max_by_key(|o| (o.max_txid, o.kind == Kind::Segment))
    }

    /// The chain starting at `snapshot`, skipping objects in `exclude`.
    pub fn chain_from<'a>(
        &'a self,
        snapshot: &'a ObjectInfo,
        exclude: &HashSet<String>,
    ) -> Chain<'a> {
        // Greedy by reach: where a compacted segment overlaps the small ones it
        // was made from, the one reaching furthest is taken. Segments are
        // sorted by first txid, so one pass finds every candidate.
        let mut segments = Vec::new();
        let mut end = snapshot.max_txid;
        let usable = |s: &ObjectInfo| s.lineage == snapshot.lineage && !exclude.contains(&s.key);
        let mut best: Option<&ObjectInfo> = None;
        let mut i = 0;
        loop {
            while let Some(seg) = self
                .segments
                .get(i)
                .filter(|s| s.min_txid <= end.saturating_add(1))
            {
                if usable(seg) && seg.max_txid > best.map_or(end, |b| b.max_txid) {
                    best = Some(seg);
                }
                i += 1;
            }
            match best.take() {
                Some(seg) => {
                    segments.push(seg);
                    end = seg.max_txid;
                }
                None => break,
            }
        }
        Chain { snapshot, segments }
    }

    /// Chains, one per snapshot not excluded, newest snapshot first.
    pub fn chains<'a>(&'a self, exclude: &HashSet<String>) -> Vec<Chain<'a>> {
        self.snapshots
            .iter()
            .rev()
            .filter(|s| !exclude.contains(&s.key))
            .map(|s| self.chain_from(s, exclude))
            .collect()
    }

    /// The run of restorable txids that ends at the newest one: every txid in
    /// it restores. Older snapshots kept on their own (by calendar retention or
    /// a pin) restore only at their own txid and are not part of it.
    pub fn window(&self) -> Option<Window> {
        let mut chains = self.chains(&HashSet::new());
        chains.sort_by_key(|c| c.snapshot.max_txid);
        let mut window: Option<Window> = None;
        for c in &chains {
            match &mut window {
                Some(w) if c.snapshot.max_txid <= w.max_txid.saturating_add(1) => {
                    if c.max_txid() > w.max_txid {
                        w.max_txid = c.max_txid();
                        w.max_time_ms = c.max_time_ms();
                    }
                }
                _ => {
                    window = Some(Window {
                        min_txid: c.snapshot.max_txid,
                        max_txid: c.max_txid(),
                        min_time_ms: c.snapshot.max_time_ms,
                        max_time_ms: c.max_time_ms(),
                    })
                }
            }
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_txid() {
        let k = segment_key(10, 255, 0xfeed, 1_700_000_000_000, 1_700_000_000_500);
        let info = parse_key(&k, 9).unwrap();
        assert_eq!(
            (info.min_txid, info.max_txid, info.lineage, info.size),
            (10, 255, 0xfeed, 9)
        );
        assert!(segment_key(9, 9, 1, 0, 0) < segment_key(10, 10, 1, 0, 0));
        let s = parse_key(&snapshot_key(7, 3, 12), 1).unwrap();
        assert_eq!((s.kind, s.max_txid, s.max_time_ms), (Kind::Snapshot, 7, 12));
        assert!(parse_key("segments/garbage.wseg", 0).is_none());
    }

    #[test]
    fn chains_take_the_segment_reaching_furthest() {
        // 2..=9 compacted from the small ones, which are still there.
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 0),
                segment_key(2, 3, 1, 1, 2),
                segment_key(2, 9, 1, 1, 8),
                segment_key(4, 6, 1, 3, 5),
                segment_key(7, 9, 1, 6, 8),
                segment_key(10, 10, 1, 9, 9),
            ],
            1,
        );
        let chain = cat.chain_from(&cat.snapshots[0], &HashSet::new());
        let ranges: Vec<(u64, u64)> = chain
            .segments
            .iter()
            .map(|s| (s.min_txid, s.max_txid))
            .collect();
        assert_eq!(ranges, vec![(2, 9), (10, 10)]);
        // Without the compacted one, the small ones still make the chain.
        let exclude = HashSet::from([segment_key(2, 9, 1, 1, 8)]);
        let chain = cat.chain_from(&cat.snapshots[0], &exclude);
        assert_eq!(chain.segments.len(), 4);
        assert_eq!(chain.max_txid(), 10);
    }

    #[test]
    fn chains_stop_at_gaps_and_lineages() {
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 0),
                segment_key(2, 3, 1, 1, 2),
                segment_key(4, 4, 1, 3, 3),
                segment_key(6, 6, 1, 5, 5),
                snapshot_key(7, 2, 6),
                segment_key(8, 9, 2, 7, 8),
            ],
            1,
        );
        let chains = cat.chains(&HashSet::new());
        assert_eq!(chains[0].max_txid(), 9);
        assert_eq!(chains[1].max_txid(), 4);
        // Txids 5 and 6 do not restore: the window is what ends at the newest.
        let w = cat.window().unwrap();
        assert_eq!((w.min_txid, w.max_txid), (7, 9));
    }

    /// Found by fuzzing (fuzz/ target catalog_keys): a name with the largest
    /// txid overflowed `txid + 1` while chaining.
    #[test]
    fn names_with_the_largest_txid_do_not_overflow() {
        let cat = Catalog::from_keys(
            &[
                snapshot_key(u64::MAX, 2, 0),
                segment_key(5, 6, 1, 0, 0),
                snapshot_key(u64::MAX - 1, 2, 0),
                segment_key(u64::MAX, u64::MAX, 2, 0, 0),
            ],
            1,
        );
        let chains = cat.chains(&HashSet::new());
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].max_txid(), u64::MAX);
        assert!(chains[0].segments.is_empty());
        assert_eq!(chains[1].max_txid(), u64::MAX);
        assert_eq!(chains[1].segments.len(), 1);
        let w = cat.window().unwrap();
        assert_eq!((w.min_txid, w.max_txid), (u64::MAX - 1, u64::MAX));
    }
}

/// Why an object's header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object {key}: {source}")]
    Format {
        key: String,
        #[source]
        source: crate::format::FormatError,
    },
    #[error("object {key} does not match its name: {reason}")]
    Mismatch { key: String, reason: String },
}

impl HeaderError {
    pub(crate) fn into_capture(self) -> crate::error::CaptureError {
        match self {
            HeaderError::Store(e) => e.into(),
            HeaderError::Format { key, source } => {
                crate::error::CaptureError::Format { key, source }
            }
            HeaderError::Mismatch { key, reason } => crate::error::CaptureError::Format {
                key,
                source: crate::format::FormatError::Malformed(reason),
            },
        }
    }
}

/// Reads and validates the header of `info` (one or two ranged reads), and
/// checks it agrees with the object's name.
pub async fn fetch_header(
    store: &Arc<dyn ObjectStore>,
    info: &ObjectInfo,
) -> Result<crate::format::ObjectHeader, HeaderError> {
    const FIRST_READ: u64 = 8192;
    let mut bytes = store.get_range(&info.key, 0, FIRST_READ).await?;
    if bytes.len() >= 32 {
        let header_len = u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]) as u64;
        if header_len > bytes.len() as u64 && header_len <= info.size {
            bytes = store.get_range(&info.key, 0, header_len).await?;
        }
    }
    let header = crate::format::ObjectHeader::decode(&mut &bytes[..]).map_err(|source| {
        HeaderError::Format {
            key: info.key.clone(),
            source,
        }
    })?;
    check_name(info, &header)?;
    Ok(header)
}

/// An object's header must say what its name says (a renamed or swapped object
/// is refused).
pub fn check_name(info: &ObjectInfo, h: &crate::format::ObjectHeader) -> Result<(), HeaderError> {
    let first = h.commits.first().map_or(0, |c| c.time_ms);
    let last = h.commits.last().map_or(0, |c| c.time_ms);
    let kind = match h.kind {
        crate::format::ObjectKind::Segment => Kind::Segment,
        crate::format::ObjectKind::Snapshot => Kind::Snapshot,
    };
    let reason = if kind != info.kind {
        "object kind differs"
    } else if h.lineage != info.lineage {
        "lineage differs"
    } else if h.min_txid() != info.min_txid || h.max_txid() != info.max_txid {
        "txid range differs"
    } else if first != info.min_time_ms || last != info.max_time_ms {
        "time range differs"
    } else {
        return Ok(());
    };
    Err(HeaderError::Mismatch {
        key: info.key.clone(),
        reason: reason.to_string(),
    })
}
