//! Compaction: consecutive segments of one lineage merged into one segment
//! that keeps every commit record, so a restore fetches one object instead of
//! hundreds while still reaching every transaction on its own.
//!
//! A compacted segment is an ordinary segment (docs/format.md): its commit
//! records are those of its inputs, in order, and its body their page records,
//! in order. Readers need nothing new; where it overlaps the inputs it was made
//! from (until they are deleted), chains take the object reaching furthest.

use std::io::{Read, Write};

use crate::crypto::Keyring;
use crate::format::{
    BodyReader, BodyWriter, FormatError, ObjectHeader, ObjectKind, MAX_INDEXED_PAGES,
};

/// Most commit records in one compacted segment (its header holds 36 bytes
/// for each, and readers keep the header in memory).
pub const MAX_COMMITS: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("segment {index} of the compaction: {source}")]
    Format {
        index: usize,
        #[source]
        source: FormatError,
    },
    #[error("segment {index} of the compaction does not continue the one before it: {reason}")]
    NotContiguous { index: usize, reason: String },
    #[error("nothing to compact: {0}")]
    Empty(&'static str),
}

/// The header of the merged segment: every input's commits, the last input's
/// WAL position. Inputs must be unencrypted, of one lineage and page size,
/// with consecutive txids.
pub fn merged_header(headers: &[ObjectHeader]) -> Result<ObjectHeader, CompactError> {
    let (first, last) = match headers {
        [first, .., last] => (first, last),
        _ => return Err(CompactError::Empty("fewer than two segments")),
    };
    let mut commits = Vec::new();
    // The inputs' page indexes, concatenated like their bodies; an input
    // without one (written before indexes existed) leaves the merge without.
    let mut page_index = Some(Vec::new());
    for (index, h) in headers.iter().enumerate() {
        let reason = if h.kind != ObjectKind::Segment {
            Some("not a segment".to_string())
        } else if h.is_encrypted() {
            Some("encrypted (compaction reads the plain form)".to_string())
        } else if h.lineage != first.lineage || h.page_size != first.page_size {
            Some("another lineage or page size".to_string())
        } else if commits
            .last()
            .is_some_and(|c: &crate::format::CommitRecord| h.min_txid() != c.txid + 1)
        {
            Some(format!(
                "txid {} does not follow the previous segment",
                h.min_txid()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(CompactError::NotContiguous { index, reason });
        }
        commits.extend_from_slice(&h.commits);
        page_index = match (page_index, &h.page_index) {
            (Some(mut all), Some(ix)) if (all.len() + ix.len()) as u64 <= MAX_INDEXED_PAGES => {
                all.extend_from_slice(ix);
                Some(all)
            }
            _ => None,
        };
    }
    Ok(ObjectHeader {
        kind: ObjectKind::Segment,
        flags: 0,
        key_id: [0; 8],
        lineage: first.lineage,
        page_size: first.page_size,
        wal: last.wal,
        commits,
        page_index,
    })
}

/// Writes the merged segment of `inputs` (each a whole plain segment object,
/// whose headers are `headers`) to `out`. Every input's body is decoded and
/// its trailer checked on the way. Memory: one page.
pub fn write_merged<R: Read, W: Write>(
    headers: &[ObjectHeader],
    inputs: impl IntoIterator<Item = R>,
    mut out: W,
) -> Result<(ObjectHeader, W), CompactError> {
    let merged = merged_header(headers)?;
    let io = |index| {
        move |e: std::io::Error| CompactError::Format {
            index,
            source: FormatError::Io(e),
        }
    };
    out.write_all(&merged.encode()).map_err(io(0))?;
    let mut body = BodyWriter::new(out, ObjectKind::Segment);
    let mut page = vec![0u8; merged.page_size as usize];
    let no_keys = Keyring::default();
    let mut count = 0;
    for (index, mut input) in inputs.into_iter().enumerate() {
        let fmt = |source| CompactError::Format { index, source };
        let header = ObjectHeader::decode(&mut input).map_err(fmt)?;
        if Some(&header) != headers.get(index) {
            return Err(fmt(FormatError::Malformed(
                "header differs from the one planned".into(),
            )));
        }
        let mut reader = BodyReader::new(input, header, &no_keys).map_err(fmt)?;
        while let Some(r) = reader.next_page(&mut page).map_err(fmt)? {
            body.write_page(r.pgno, &page).map_err(io(index))?;
        }
        reader.finish().map_err(fmt)?;
        count += 1;
    }
    if count != headers.len() {
        return Err(CompactError::Empty("fewer inputs than headers"));
    }
    let out = body.finish().map_err(|source| CompactError::Format {
        index: count,
        source,
    })?;
    Ok((merged, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_all, encode_segment, CommitRecord};

    fn segment(lineage: u64, first_txid: u64, pages: &[&[(u32, u8)]]) -> (ObjectHeader, Vec<u8>) {
        segment_indexed(lineage, first_txid, pages, true)
    }

    fn segment_indexed(
        lineage: u64,
        first_txid: u64,
        pages: &[&[(u32, u8)]],
        indexed: bool,
    ) -> (ObjectHeader, Vec<u8>) {
        let index = pages.iter().flat_map(|p| p.iter().map(|&(n, _)| n));
        let commits: Vec<CommitRecord> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| CommitRecord {
                txid: first_txid + i as u64,
                time_ms: 1000 + (first_txid + i as u64) as i64,
                db_pages: 4,
                page_count: p.len() as u32,
                checksum: Some(first_txid + i as u64),
            })
            .collect();
        let header = ObjectHeader {
            kind: ObjectKind::Segment,
            flags: 0,
            key_id: [0; 8],
            lineage,
            page_size: 512,
            wal: None,
            commits,
            page_index: indexed.then(|| index.collect()),
        };
        let bufs: Vec<(u32, Vec<u8>)> = pages
            .iter()
            .flat_map(|p| p.iter().map(|&(pgno, fill)| (pgno, vec![fill; 512])))
            .collect();
        let refs: Vec<(u32, &[u8])> = bufs.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        (header.clone(), encode_segment(&header, &refs).unwrap())
    }

    #[test]
    fn merged_segment_keeps_every_commit_and_page_in_order() {
        let a = segment(7, 10, &[&[(1, 1), (2, 2)], &[(1, 3)]]);
        let b = segment(7, 12, &[&[(3, 4)]]);
        let c = segment(7, 13, &[&[(2, 5), (4, 6)], &[(1, 7)]]);
        let headers = vec![a.0.clone(), b.0.clone(), c.0.clone()];
        let inputs = [&a.1, &b.1, &c.1].map(|v| v.as_slice());
        let (merged, bytes) = write_merged(&headers, inputs, Vec::new()).unwrap();
        assert_eq!((merged.min_txid(), merged.max_txid()), (10, 14));
        let (h, pages) = decode_all(&bytes, &Keyring::default()).unwrap();
        assert_eq!(h, merged);
        let commit_of: Vec<(u64, u32, u8)> = pages
            .iter()
            .map(|(r, data)| (h.commits[r.commit].txid, r.pgno, data[0]))
            .collect();
        assert_eq!(
            commit_of,
            vec![
                (10, 1, 1),
                (10, 2, 2),
                (11, 1, 3),
                (12, 3, 4),
                (13, 2, 5),
                (13, 4, 6),
                (14, 1, 7)
            ]
        );
    }

    /// The merged index is the inputs' indexes in order (checked against the
    /// merged body when it is read back); one input without an index leaves
    /// the merge without one, and it still reads.
    #[test]
    fn merged_index_concatenates_the_inputs_or_is_absent() {
        let a = segment(7, 10, &[&[(1, 1), (2, 2)], &[(1, 3)]]);
        let b = segment(7, 12, &[&[(4, 4), (3, 5)]]);
        let headers = vec![a.0.clone(), b.0.clone()];
        let (merged, bytes) =
            write_merged(&headers, [a.1.as_slice(), b.1.as_slice()], Vec::new()).unwrap();
        assert_eq!(merged.page_index, Some(vec![1, 2, 1, 4, 3]));
        let (h, _) = decode_all(&bytes, &Keyring::default()).unwrap();
        assert_eq!(h.page_index, Some(vec![1, 2, 1, 4, 3]));

        let old = segment_indexed(7, 12, &[&[(4, 4), (3, 5)]], false);
        let headers = vec![a.0.clone(), old.0.clone()];
        let (merged, bytes) =
            write_merged(&headers, [a.1.as_slice(), old.1.as_slice()], Vec::new()).unwrap();
        assert_eq!(merged.page_index, None);
        let (_, pages) = decode_all(&bytes, &Keyring::default()).unwrap();
        assert_eq!(pages.len(), 5);
    }

    #[test]
    fn refuses_gaps_other_lineages_and_damaged_inputs() {
        let a = segment(7, 10, &[&[(1, 1)]]);
        let gap = segment(7, 12, &[&[(1, 2)]]);
        let other = segment(8, 11, &[&[(1, 2)]]);
        for bad in [&gap, &other] {
            let e = merged_header(&[a.0.clone(), bad.0.clone()]).unwrap_err();
            assert!(
                matches!(e, CompactError::NotContiguous { index: 1, .. }),
                "{e}"
            );
        }
        assert!(matches!(
            merged_header(std::slice::from_ref(&a.0)),
            Err(CompactError::Empty(_))
        ));
        let b = segment(7, 11, &[&[(2, 9)]]);
        let mut damaged = b.1.clone();
        let n = damaged.len();
        damaged[n - 6] ^= 0xff;
        let headers = [a.0.clone(), b.0.clone()];
        let e =
            write_merged(&headers, [a.1.as_slice(), damaged.as_slice()], Vec::new()).unwrap_err();
        assert!(matches!(e, CompactError::Format { index: 1, .. }), "{e}");
    }
}
