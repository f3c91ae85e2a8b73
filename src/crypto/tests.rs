use std::io::{Read, Write};

use super::stream::{unwrap_format_error, PREAMBLE_LEN, TAG_LEN};
use super::*;
use crate::format::{
    decode_all, encode_segment, CommitRecord, FormatError, ObjectHeader, ObjectKind, RecordReader,
};

fn key(byte: u8) -> Key {
    Key::from_bytes([byte; 32])
}

fn ring(k: &Key) -> Keyring {
    Keyring::new(Some(k.clone()), Vec::new())
}

/// A sealed body (preamble, chunks, CRC trailer) of `data`.
fn seal_bytes(k: &Key, aad: &[u8], data: &[u8], chunk: u32) -> Vec<u8> {
    let mut s = Sealer::with_chunk_size(Vec::new(), k, aad, chunk).unwrap();
    s.write_all(data).unwrap();
    let mut body = s.finish().unwrap();
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

fn open_bytes(k: &Key, aad: &[u8], body: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut o = Opener::new(body, k, aad)?;
    let mut out = Vec::new();
    o.read_to_end(&mut out)
        .map_err(|e| unwrap_format_error(e).unwrap_or_else(FormatError::Io))?;
    o.finish()?;
    Ok(out)
}

/// Replaces the CRC trailer so only authentication can notice a change.
fn fix_trailer(body: &mut Vec<u8>) {
    body.truncate(body.len() - 4);
    let crc = crc32fast::hash(body);
    body.extend_from_slice(&crc.to_be_bytes());
}

fn is_auth_failure(r: &Result<Vec<u8>, FormatError>) -> bool {
    matches!(r, Err(FormatError::Crypto(CryptoError::Authentication)))
}

#[test]
fn stream_round_trips_at_every_size_around_chunk_boundaries() {
    let k = key(1);
    let data: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
    for len in [0, 1, 15, 16, 17, 31, 32, 33, 48, 200] {
        let body = seal_bytes(&k, b"hdr", &data[..len], 16);
        let chunks = len.div_ceil(16).max(1);
        assert_eq!(
            body.len(),
            PREAMBLE_LEN + len + chunks * TAG_LEN + 4,
            "len {len}"
        );
        assert_eq!(open_bytes(&k, b"hdr", &body).unwrap(), &data[..len]);
    }
}

#[test]
fn stream_writes_in_pieces_of_any_size() {
    let k = key(2);
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let mut s = Sealer::with_chunk_size(Vec::new(), &k, b"h", 64).unwrap();
    for piece in data.chunks(7) {
        s.write_all(piece).unwrap();
    }
    let mut body = s.finish().unwrap();
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(open_bytes(&k, b"h", &body).unwrap(), data);
}

/// Splits a sealed body (chunk size 16) into preamble, chunks and trailer.
fn split(body: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let pre = body[..PREAMBLE_LEN].to_vec();
    let chunks = body[PREAMBLE_LEN..body.len() - 4]
        .chunks(16 + TAG_LEN)
        .map(<[u8]>::to_vec)
        .collect();
    (pre, chunks, body[body.len() - 4..].to_vec())
}

fn join(pre: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut b = pre.to_vec();
    for c in chunks {
        b.extend_from_slice(c);
    }
    b.extend_from_slice(&[0; 4]);
    fix_trailer(&mut b);
    b
}

#[test]
fn reordered_dropped_or_truncated_chunks_fail() {
    let k = key(3);
    let data = [9u8; 48];
    let body = seal_bytes(&k, b"h", &data, 16);
    let (pre, chunks, _) = split(&body);
    assert_eq!(chunks.len(), 3);
    assert_eq!(open_bytes(&k, b"h", &join(&pre, &chunks)).unwrap(), data);
    let swapped = vec![chunks[1].clone(), chunks[0].clone(), chunks[2].clone()];
    assert!(is_auth_failure(&open_bytes(
        &k,
        b"h",
        &join(&pre, &swapped)
    )));
    let no_final = chunks[..2].to_vec();
    assert!(is_auth_failure(&open_bytes(
        &k,
        b"h",
        &join(&pre, &no_final)
    )));
    let no_middle = vec![chunks[0].clone(), chunks[2].clone()];
    assert!(is_auth_failure(&open_bytes(
        &k,
        b"h",
        &join(&pre, &no_middle)
    )));
    let repeated = vec![chunks[0].clone(), chunks[0].clone(), chunks[2].clone()];
    assert!(is_auth_failure(&open_bytes(
        &k,
        b"h",
        &join(&pre, &repeated)
    )));
    let mut extra = chunks.clone();
    extra.push(chunks[2].clone());
    assert!(open_bytes(&k, b"h", &join(&pre, &extra)).is_err());
    // Cut inside the final chunk, CRC fixed up.
    let mut cut = join(&pre, &chunks);
    cut.truncate(cut.len() - 4 - 5);
    cut.extend_from_slice(&[0; 4]);
    fix_trailer(&mut cut);
    assert!(open_bytes(&k, b"h", &cut).is_err());
    // Every plain truncation.
    for len in 0..body.len() {
        assert!(open_bytes(&k, b"h", &body[..len]).is_err(), "cut at {len}");
    }
}

#[test]
fn associated_data_and_key_bind_the_body() {
    let k = key(4);
    let body = seal_bytes(&k, b"header A", b"pages", 16);
    assert!(is_auth_failure(&open_bytes(&k, b"header B", &body)));
    assert!(is_auth_failure(&open_bytes(&key(5), b"header A", &body)));
}

fn header(txid: u64, lineage: u64) -> ObjectHeader {
    ObjectHeader {
        kind: ObjectKind::Segment,
        flags: 0,
        key_id: [0; 8],
        lineage,
        page_size: 512,
        wal: None,
        commits: vec![CommitRecord {
            txid,
            time_ms: 1000 + txid as i64,
            db_pages: 4,
            page_count: 2,
            checksum: Some(txid * 3),
        }],
        page_index: Some(vec![1, 3]),
    }
}

/// A plain segment with two pages of `fill`-derived (incompressible when
/// `noisy`) bytes.
fn plain_segment(txid: u64, lineage: u64, fill: u8, noisy: bool) -> Vec<u8> {
    let page = |n: u8| -> Vec<u8> {
        (0..512u32)
            .map(|i| {
                if noisy {
                    (i.wrapping_mul(2_654_435_761).rotate_left(n as u32) >> 13) as u8 ^ fill
                } else {
                    fill ^ n
                }
            })
            .collect()
    };
    let (a, b) = (page(1), page(2));
    encode_segment(&header(txid, lineage), &[(1, &a), (3, &b)]).unwrap()
}

fn seal(plain: &[u8], k: &Key) -> Vec<u8> {
    let mut out = Vec::new();
    seal_object(plain, &mut out, k).unwrap();
    out
}

#[test]
fn object_round_trip_restores_the_exact_plain_bytes() {
    let k = key(6);
    for noisy in [false, true] {
        let plain = plain_segment(7, 42, 0x5a, noisy);
        let sealed = seal(&plain, &k);
        let h = ObjectHeader::decode(&mut &sealed[..]).unwrap();
        assert_eq!(h.key_id(), Some(k.id()), "header readable without the key");
        assert_eq!((h.lineage, h.min_txid()), (42, 7));
        let (_, pages) = decode_all(&sealed, &ring(&k)).unwrap();
        assert_eq!(pages, decode_all(&plain, &Keyring::default()).unwrap().1);
        let mut opened = Vec::new();
        open_object(&sealed[..], &mut opened, &ring(&k)).unwrap();
        assert_eq!(opened, plain);
    }
}

#[test]
fn multi_chunk_object_round_trips() {
    let k = key(7);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    let pages: Vec<Vec<u8>> = (0..300)
        .map(|_| (0..512).map(|_| noise()).collect())
        .collect();
    let mut h = header(1, 1);
    h.commits[0].page_count = 300;
    h.commits[0].db_pages = 300;
    h.page_index = Some((1..=300).collect());
    let refs: Vec<(u32, &[u8])> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, p.as_slice()))
        .collect();
    let plain = encode_segment(&h, &refs).unwrap();
    let sealed = seal(&plain, &k);
    assert!(sealed.len() > 2 * super::stream::CHUNK_SIZE as usize);
    let (_, got) = decode_all(&sealed, &ring(&k)).unwrap();
    assert_eq!(got.len(), 300);
    assert!(got.iter().zip(&pages).all(|((_, a), b)| a == b));

    // Chosen records of the encrypted body, the rest only walked: the same
    // pages, every chunk's tag and the trailer still checked.
    let mut cursor = &sealed[..];
    let header = ObjectHeader::decode(&mut cursor).unwrap();
    let mut reader = RecordReader::new(cursor, header, &ring(&k)).unwrap();
    let mut page = vec![0; 512];
    for r in [3u64, 150, 299] {
        assert_eq!(reader.read(r, &mut page).unwrap(), r as u32 + 1);
        assert_eq!(page, pages[r as usize]);
    }
    reader.finish().unwrap();
    let mut cut = sealed[..sealed.len() - 30].to_vec();
    cut.extend_from_slice(&sealed[sealed.len() - 4..]);
    let mut cursor = &cut[..];
    let header = ObjectHeader::decode(&mut cursor).unwrap();
    let mut reader = RecordReader::new(cursor, header, &ring(&k)).unwrap();
    reader.read(3, &mut page).unwrap();
    assert!(reader.finish().is_err(), "a cut last chunk is caught");
}

#[test]
fn every_flipped_byte_fails_even_with_checksums_fixed() {
    let k = key(8);
    let good = seal(&plain_segment(3, 9, 1, false), &k);
    let header_len = ObjectHeader::decode(&mut &good[..]).unwrap().encode().len();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(
            decode_all(&bad, &ring(&k)).is_err(),
            "flip at {i} went unnoticed"
        );
        // Now repair both CRCs (a flip inside a CRC is simply undone): only
        // authentication stands in the way.
        if i < header_len - 4 {
            let crc = crc32fast::hash(&bad[..header_len - 4]);
            bad[header_len - 4..header_len].copy_from_slice(&crc.to_be_bytes());
        } else if i >= header_len && i < good.len() - 4 {
            fix_trailer_after(&mut bad, header_len);
        } else {
            continue;
        }
        assert!(
            decode_all(&bad, &ring(&k)).is_err(),
            "flip at {i} with repaired CRCs went unnoticed"
        );
    }
}

fn fix_trailer_after(obj: &mut [u8], header_len: usize) {
    let end = obj.len() - 4;
    let crc = crc32fast::hash(&obj[header_len..end]);
    obj[end..].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn a_changed_header_field_fails_authentication() {
    let k = key(9);
    let sealed = seal(&plain_segment(3, 9, 1, false), &k);
    let mut h = ObjectHeader::decode(&mut &sealed[..]).unwrap();
    let old_len = h.encode().len();
    h.commits[0].time_ms += 1; // what a rename to another time would need
    let mut forged = h.encode();
    forged.extend_from_slice(&sealed[old_len..]);
    let err = decode_all(&forged, &ring(&k)).unwrap_err();
    assert!(
        matches!(err, FormatError::Crypto(CryptoError::Authentication)),
        "{err}"
    );
}

#[test]
fn header_of_one_object_with_the_body_of_another_fails() {
    let k = key(10);
    let a = seal(&plain_segment(5, 1, 1, false), &k);
    let b = seal(&plain_segment(6, 1, 1, false), &k);
    let a_len = ObjectHeader::decode(&mut &a[..]).unwrap().encode().len();
    let b_len = ObjectHeader::decode(&mut &b[..]).unwrap().encode().len();
    let mut swapped = a[..a_len].to_vec();
    swapped.extend_from_slice(&b[b_len..]);
    let err = decode_all(&swapped, &ring(&k)).unwrap_err();
    assert!(
        matches!(err, FormatError::Crypto(CryptoError::Authentication)),
        "{err}"
    );
}

#[test]
fn wrong_or_missing_key_names_the_key_ids() {
    let (a, b, c) = (key(11), key(12), key(13));
    let sealed = seal(&plain_segment(1, 1, 1, false), &a);
    let keys = Keyring::new(Some(b.clone()), vec![c.clone()]);
    let msg = decode_all(&sealed, &keys).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("encrypted with key {}", a.id())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("the configured key is {}", b.id())),
        "{msg}"
    );
    assert!(msg.contains(&c.id().to_string()), "{msg}");
    assert!(!msg.contains(&b.to_base64()) && !msg.contains(&a.to_base64()));
    let msg = decode_all(&sealed, &Keyring::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&a.id().to_string()) && msg.contains(KEY_ENV),
        "{msg}"
    );
    // A previous key still opens it.
    let rotated = Keyring::new(Some(b), vec![a]);
    assert!(decode_all(&sealed, &rotated).is_ok());
}

#[test]
fn malformed_keys_are_refused_clearly() {
    let e = Key::from_base64("not base64!", "TEST_VAR").unwrap_err();
    assert!(e.to_string().contains("TEST_VAR") && e.to_string().contains("base64"));
    for n in [0usize, 16, 31, 33, 64] {
        let text = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let e = Key::from_base64(&text, "k").unwrap_err().to_string();
        assert!(e.contains(&format!("{n} bytes")) && e.contains("32"), "{e}");
        assert!(!e.contains(&text) || text.is_empty(), "{e}");
    }
    let good = key(1).to_base64();
    assert_eq!(good.len(), 44);
    assert_eq!(
        Key::from_base64(&format!(" {good}\n"), "k").unwrap().id(),
        key(1).id()
    );
}

#[test]
fn key_ids_are_stable_distinct_fingerprints() {
    let k = key(1);
    assert_eq!(k.id(), key(1).id());
    assert_ne!(k.id(), key(2).id());
    assert_ne!(&k.id().0[..], &[1u8; 8][..]);
    assert_eq!(k.id().to_string().len(), 16);
    assert!(!format!("{k:?}").contains(&k.to_base64()));
    let g = Key::generate().unwrap();
    assert_ne!(g.to_base64(), Key::generate().unwrap().to_base64());
}

#[test]
fn plain_objects_are_refused_by_open_and_sealed_ones_by_seal() {
    let k = key(1);
    let plain = plain_segment(1, 1, 1, false);
    let e = open_object(&plain[..], Vec::new(), &ring(&k)).unwrap_err();
    assert!(matches!(e, FormatError::Crypto(CryptoError::NotEncrypted)));
    let e = seal_object(&seal(&plain, &k)[..], Vec::new(), &k).unwrap_err();
    assert!(matches!(
        e,
        FormatError::Crypto(CryptoError::AlreadyEncrypted)
    ));
    let mut damaged = plain.clone();
    let n = damaged.len();
    damaged[n - 6] ^= 1;
    assert!(seal_object(&damaged[..], Vec::new(), &k).is_err());
}

#[test]
fn settings_resolve_config_and_environment() {
    let a = key(1).to_base64();
    let b = key(2).to_base64();
    let env = |a: String, b: Option<String>| {
        move |name: &str| match name {
            KEY_ENV => Some(a.clone()),
            PREVIOUS_KEYS_ENV => b.clone(),
            _ => None,
        }
    };
    let s = EncryptionConfig::default()
        .resolve(env(a.clone(), Some(format!("{b}, {b}"))))
        .unwrap();
    assert_eq!(s.encrypt_with.unwrap().id(), key(1).id());
    assert_eq!(s.keyring.ids(), vec![key(1).id(), key(2).id(), key(2).id()]);
    let cfg = EncryptionConfig {
        enabled: Some(true),
        key: Some(b.clone()),
        previous_keys: vec![a.clone()],
    };
    let s = cfg.resolve(|_| None).unwrap();
    assert_eq!(s.encrypt_with.unwrap().id(), key(2).id());
    assert!(s.keyring.find(key(1).id()).is_some());
    assert!(!format!("{cfg:?}").contains(&b));
    let off = EncryptionConfig {
        enabled: Some(false),
        ..Default::default()
    };
    let s = off.resolve(env(a.clone(), None)).unwrap();
    assert!(s.encrypt_with.is_none() && s.keyring.find(key(1).id()).is_some());
    let on = EncryptionConfig {
        enabled: Some(true),
        ..Default::default()
    };
    assert!(matches!(on.resolve(|_| None), Err(KeyError::Missing)));
    let bad = EncryptionConfig {
        previous_keys: vec!["AAAA".into()],
        ..Default::default()
    };
    let e = bad.resolve(|_| None).unwrap_err().to_string();
    assert!(
        e.contains("previous_keys[0]") && e.contains("3 bytes"),
        "{e}"
    );
}

#[test]
fn config_accepts_either_encryption_table() {
    use crate::config::Config;
    use std::path::Path;
    let top = "[encryption]\nenabled = true\nkey = \"k\"\nprevious_keys = [\"p\"]\n";
    let c = Config::parse(Path::new("t"), top, false).unwrap();
    let e = c.encryption.unwrap();
    assert_eq!((e.enabled, e.key.as_deref()), (Some(true), Some("k")));
    assert_eq!(e.previous_keys, vec!["p".to_string()]);
    let nested = "[storage.backup.encryption]\nenabled = true\nkey = \"k2\"\n";
    let c = Config::parse(Path::new("t"), nested, false).unwrap();
    assert_eq!(c.encryption.unwrap().key.as_deref(), Some("k2"));
    let both = format!("{top}{nested}");
    let e = Config::parse(Path::new("t"), &both, false).unwrap_err();
    assert!(e.to_string().contains("configured twice"), "{e}");
    let typo = "[encryption]\nenabeld = true\n";
    assert!(Config::parse(Path::new("t"), typo, false).is_err());
}

#[test]
fn config_errors_never_quote_an_expanded_key() {
    use crate::config::Config;
    use std::path::Path;
    let secret = key(3).to_base64();
    std::env::set_var("WALSTREAM_TEST_SECRET_KEY", &secret);
    for text in [
        "[encryption]\nkye = \"${WALSTREAM_TEST_SECRET_KEY}\"\n",
        "[encryption]\nkey = \"${WALSTREAM_TEST_SECRET_KEY}\"\nenabled = \"yes\"\n",
        "[encryption]\nkey = ${WALSTREAM_TEST_SECRET_KEY}\n",
    ] {
        let e = Config::parse(Path::new("t"), text, true).unwrap_err();
        assert!(!e.to_string().contains(&secret), "{e}");
    }
}
