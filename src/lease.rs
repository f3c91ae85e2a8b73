//! Single writer per replica: a lease kept in the replica itself.
//!
//! Two walstream processes writing one replica location (a copied config,
//! a second host) would interleave lineages with overlapping txids. Segment
//! names carry the lineage, so their writes never collide on a key and nothing
//! else would notice. The lease makes the second writer fail at start instead.
//!
//! The lease is a chain of write-once objects `lease/<generation>.json`
//! (16 hex digits). Every claim and every renewal creates the next generation
//! with a create-only write, so of two processes racing for generation g+1
//! exactly one wins, and a holder whose renewal finds g+1 already written knows
//! it was taken over and stops. Only plain create-only writes, reads, deletes
//! and one listing at start are needed: every S3-compatible store and the local
//! directory support them. See `docs/format.md` for the record.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{ObjectStore, PutMode, StoreError};

/// Folder of the lease chain in a replica.
pub const LEASE_DIR: &str = "lease/";

/// How long a lease lasts without renewal, and how often it is renewed.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    /// Another process may claim the lease once its newest record is this old.
    pub ttl: Duration,
    /// The holder renews this often.
    pub renew_every: Duration,
    /// The holder stops writing this long before the ttl ends, to absorb clock
    /// differences between hosts.
    pub margin: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        LeaseTimes {
            ttl: Duration::from_secs(300),
            renew_every: Duration::from_secs(60),
            margin: Duration::from_secs(60),
        }
    }
}

/// Who is asking for the lease.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Random id kept in the database's state directory: the same database on
    /// the same host keeps it across restarts.
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub db: String,
}

impl Identity {
    /// Reads the owner id from `state_dir/owner-id`, creating it on first use.
    pub fn load_or_create(state_dir: &Path, db: &Path) -> std::io::Result<Identity> {
        let path = state_dir.join("owner-id");
        let owner = match std::fs::read_to_string(&path) {
            Ok(s) if is_owner_id(s.trim()) => s.trim().to_string(),
            Ok(_) | Err(_) => {
                let id = format!("{:016x}", rand::random::<u64>());
                let tmp = state_dir.join(format!(".owner-id.{id}.tmp"));
                std::fs::write(&tmp, format!("{id}\n"))?;
                std::fs::rename(&tmp, &path)?;
                id
            }
        };
        Ok(Identity {
            owner,
            host: hostname(),
            pid: std::process::id(),
            db: db.display().to_string(),
        })
    }

    fn describe(&self) -> String {
        format!("host {}, pid {}, database {}", self.host, self.pid, self.db)
    }
}

fn is_owner_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// One generation of the lease, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub db: String,
    /// Wall-clock time of this claim or renewal, ms since the Unix epoch.
    pub renewed_ms: i64,
    pub ttl_ms: u64,
    /// Written on a clean shutdown: anyone may claim the next generation.
    pub released: bool,
    /// Written with `released` by a writer some of whose uploads failed after
    /// they may have been sent: they may still land in the replica.
    #[serde(default)]
    pub uploads_may_land: bool,
    /// Random, so a retried create can recognise its own record.
    pub nonce: u64,
}

impl LeaseRecord {
    fn new(me: &Identity, times: &LeaseTimes, end: Option<Release>) -> LeaseRecord {
        LeaseRecord {
            owner: me.owner.clone(),
            host: me.host.clone(),
            pid: me.pid,
            db: me.db.clone(),
            renewed_ms: now_ms(),
            ttl_ms: times.ttl.as_millis() as u64,
            released: end.is_some(),
            uploads_may_land: end == Some(Release::UploadsMayLand),
            nonce: rand::random(),
        }
    }

    /// Whether `me` may claim the generation after this one at `now_ms`.
    fn claimable_by(&self, me: &Identity, now_ms: i64) -> bool {
        // The same owner id on the same host: the state directory's lock, which
        // the caller holds, proves the process that wrote this is gone.
        let same = self.owner == me.owner && self.host == me.host;
        self.released || same || self.expires_ms() <= now_ms
    }

    fn expires_ms(&self) -> i64 {
        self.renewed_ms
            .saturating_add(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX))
    }

    fn holder(&self) -> String {
        format!("host {}, pid {}, database {}", self.host, self.pid, self.db)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "replica {store} is in use by another walstream ({holder}; last renewed {age_s} s ago): \
         each database needs its own replica location. If that process is gone, its lease expires \
         in {expires_in_s} s and this one can start then"
    )]
    Held {
        store: String,
        holder: String,
        age_s: i64,
        expires_in_s: i64,
    },
    #[error(
        "replica {store} was taken over by another walstream ({holder}) while this one ({me}) \
         could not renew its lease: replication stopped so the two do not interleave"
    )]
    Lost {
        store: String,
        holder: String,
        me: String,
    },
    #[error("lease object {key} in {store} is not a walstream lease record: {reason}")]
    Corrupt {
        store: String,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a writer lets its lease go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Every upload it sent was answered.
    Settled,
    /// Some failed after they may have been sent, and may still land.
    UploadsMayLand,
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    me: Identity,
    times: LeaseTimes,
    generation: u64,
    /// When the request that wrote the current generation was sent.
    renewed_at: Instant,
    /// The holder before this one never released the lease.
    after_unclean_stop: bool,
}

fn lease_key(generation: u64) -> String {
    format!("{LEASE_DIR}{generation:016x}.json")
}

fn parse_generation(key: &str) -> Option<u64> {
    let hex = key.strip_prefix(LEASE_DIR)?.strip_suffix(".json")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Lease {
    /// Claims the replica's lease for `me`, or says who holds it.
    pub async fn acquire(
        store: &Arc<dyn ObjectStore>,
        me: Identity,
        times: LeaseTimes,
    ) -> Result<Lease, LeaseError> {
        // A lost race re-reads the chain; three rounds settle any real contention.
        let mut last_err = None;
        for _ in 0..3 {
            let listed = generations(store).await?;
            let newest = listed.last().copied();
            let mut unreleased = false;
            if let Some(g) = newest {
                match read_record(store, g).await {
                    Ok(rec) if !rec.claimable_by(&me, now_ms()) => {
                        return Err(held(store, &rec));
                    }
                    Ok(rec) => unreleased = !rec.released || rec.uploads_may_land,
                    // Deleted under us by a renewal: read the chain again.
                    Err(LeaseError::Store(e)) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
            let generation = newest.map_or(1, |g| g + 1);
            let renewed_at = Instant::now();
            let rec = LeaseRecord::new(&me, &times, None);
            match write_generation(store, generation, &rec).await? {
                Written::Ours => {
                    for old in listed {
                        let _ = store.delete(&lease_key(old)).await;
                    }
                    tracing::debug!(generation, "replica lease claimed");
                    return Ok(Lease {
                        me,
                        times,
                        generation,
                        renewed_at,
                        after_unclean_stop: unreleased,
                    });
                }
                Written::Theirs(rec) => last_err = Some(held(store, &rec)),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            LeaseError::Store(StoreError::Config {
                store: store.describe(),
                reason: "the replica's lease kept changing while it was read".into(),
            })
        }))
    }

    /// Whether the process that held the replica before stopped without
    /// releasing it (killed, crashed, or cut off from the store): uploads it
    /// had sent may still land after this process lists the replica.
    pub fn after_unclean_stop(&self) -> bool {
        self.after_unclean_stop
    }

    /// Time for the periodic renewal.
    pub fn renewal_due(&self) -> bool {
        self.renewed_at.elapsed() >= self.times.renew_every
    }

    /// Whether writes to the replica are still covered by the lease.
    pub fn is_valid(&self) -> bool {
        self.renewed_at.elapsed() + self.times.margin < self.times.ttl
    }

    /// Writes the next generation; [`LeaseError::Lost`] when another process
    /// wrote it first.
    pub async fn renew(&mut self, store: &Arc<dyn ObjectStore>) -> Result<(), LeaseError> {
        self.advance(store, None).await
    }

    /// Marks the lease released so the next start, on any host, claims it at
    /// once, saying whether uploads of this process may still land.
    pub async fn release(
        mut self,
        store: &Arc<dyn ObjectStore>,
        how: Release,
    ) -> Result<(), LeaseError> {
        self.advance(store, Some(how)).await
    }

    async fn advance(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        end: Option<Release>,
    ) -> Result<(), LeaseError> {
        let next = self.generation + 1;
        let sent = Instant::now();
        let rec = LeaseRecord::new(&self.me, &self.times, end);
        match write_generation(store, next, &rec).await? {
            Written::Ours => {
                let _ = store.delete(&lease_key(self.generation)).await;
                self.generation = next;
                self.renewed_at = sent;
                Ok(())
            }
            Written::Theirs(rec) => Err(LeaseError::Lost {
                store: store.describe(),
                holder: rec.holder(),
                me: self.me.describe(),
            }),
        }
    }
}

fn held(store: &Arc<dyn ObjectStore>, rec: &LeaseRecord) -> LeaseError {
    let now = now_ms();
    LeaseError::Held {
        store: store.describe(),
        holder: rec.holder(),
        age_s: (now - rec.renewed_ms).max(0) / 1000,
        expires_in_s: ((rec.expires_ms() - now).max(0) + 999) / 1000,
    }
}

async fn generations(store: &Arc<dyn ObjectStore>) -> Result<Vec<u64>, StoreError> {
    let mut gens: Vec<u64> = store
        .list(LEASE_DIR)
        .await?
        .iter()
        .filter_map(|m| parse_generation(&m.key))
        .collect();
    gens.sort_unstable();
    Ok(gens)
}

async fn read_record(
    store: &Arc<dyn ObjectStore>,
    generation: u64,
) -> Result<LeaseRecord, LeaseError> {
    let key = lease_key(generation);
    let bytes = store.get(&key).await?;
    serde_json::from_slice(&bytes).map_err(|e| LeaseError::Corrupt {
        store: store.describe(),
        key,
        reason: e.to_string(),
    })
}

enum Written {
    Ours,
    Theirs(LeaseRecord),
}

/// Create-only write of one generation. A key that already exists may be our
/// own earlier attempt whose answer was lost: the record's nonce tells.
async fn write_generation(
    store: &Arc<dyn ObjectStore>,
    generation: u64,
    rec: &LeaseRecord,
) -> Result<Written, LeaseError> {
    let body = serde_json::to_vec(rec).map_err(|e| LeaseError::Corrupt {
        store: store.describe(),
        key: lease_key(generation),
        reason: e.to_string(),
    })?;
    match store
        .put(
            &lease_key(generation),
            Bytes::from(body),
            PutMode::CreateOnly,
        )
        .await
    {
        Ok(()) => Ok(Written::Ours),
        Err(StoreError::AlreadyExists { .. }) => {
            let there = read_record(store, generation).await?;
            Ok(if there == *rec {
                Written::Ours
            } else {
                Written::Theirs(there)
            })
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    fn store(dir: &Path) -> Arc<dyn ObjectStore> {
        Arc::new(LocalStore::new(dir.to_path_buf()))
    }

    fn who(owner: &str, host: &str) -> Identity {
        Identity {
            owner: owner.into(),
            host: host.into(),
            pid: 42,
            db: format!("/data/{owner}.db"),
        }
    }

    fn keys(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("lease"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn first_claim_creates_generation_one_and_renewals_advance() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        rt().block_on(async {
            let mut lease = Lease::acquire(&s, who("a", "h1"), LeaseTimes::default())
                .await
                .unwrap();
            assert_eq!(keys(dir.path()), vec!["0000000000000001.json"]);
            lease.renew(&s).await.unwrap();
            lease.renew(&s).await.unwrap();
            // Old generations are deleted as the chain advances.
            assert_eq!(keys(dir.path()), vec!["0000000000000003.json"]);
            let rec = read_record(&s, 3).await.unwrap();
            assert_eq!((rec.owner.as_str(), rec.released), ("a", false));
        });
    }

    #[test]
    fn another_owner_is_refused_while_the_lease_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        rt().block_on(async {
            let _held = Lease::acquire(&s, who("a", "h1"), LeaseTimes::default())
                .await
                .unwrap();
            let e = Lease::acquire(&s, who("b", "h2"), LeaseTimes::default())
                .await
                .unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, LeaseError::Held { .. }), "{msg}");
            assert!(
                msg.contains("host h1") && msg.contains("/data/a.db"),
                "{msg}"
            );
            assert!(msg.contains("expires in 300 s"), "{msg}");
            // The same owner id on another host is another process too.
            let e = Lease::acquire(&s, who("a", "h2"), LeaseTimes::default()).await;
            assert!(matches!(e, Err(LeaseError::Held { .. })));
        });
    }

    #[test]
    fn the_same_owner_on_the_same_host_reclaims_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        rt().block_on(async {
            let mut crashed = Lease::acquire(&s, who("a", "h1"), LeaseTimes::default())
                .await
                .unwrap();
            let _restarted = Lease::acquire(&s, who("a", "h1"), LeaseTimes::default())
                .await
                .unwrap();
            assert_eq!(keys(dir.path()), vec!["0000000000000002.json"]);
            // The old process, had it survived, learns it lost the lease.
            let e = crashed.renew(&s).await.unwrap_err();
            assert!(matches!(e, LeaseError::Lost { .. }), "{e}");
            assert!(e.to_string().contains("taken over"), "{e}");
        });
    }

    #[test]
    fn a_claim_tells_whether_the_holder_before_settled_its_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let claim = || Lease::acquire(&s, who("a", "h1"), LeaseTimes::default());
        rt().block_on(async {
            let first = claim().await.unwrap();
            assert!(
                !first.after_unclean_stop(),
                "an empty replica has no holder before"
            );
            first.release(&s, Release::Settled).await.unwrap();
            let settled = claim().await.unwrap();
            assert!(!settled.after_unclean_stop());
            settled.release(&s, Release::UploadsMayLand).await.unwrap();
            let rec = read_record(&s, 4).await.unwrap();
            assert!(rec.released && rec.uploads_may_land);
            let after_failures = claim().await.unwrap();
            assert!(after_failures.after_unclean_stop());
            // Never released: killed, its uploads possibly on their way.
            drop(after_failures);
            assert!(claim().await.unwrap().after_unclean_stop());
        });
    }

    #[test]
    fn released_and_expired_leases_are_claimable_by_anyone() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        rt().block_on(async {
            let lease = Lease::acquire(&s, who("a", "h1"), LeaseTimes::default())
                .await
                .unwrap();
            lease.release(&s, Release::Settled).await.unwrap();
            assert!(read_record(&s, 2).await.unwrap().released);
            let short = LeaseTimes {
                ttl: Duration::from_millis(200),
                renew_every: Duration::from_millis(50),
                margin: Duration::from_millis(50),
            };
            let b = Lease::acquire(&s, who("b", "h2"), short).await.unwrap();
            assert_eq!(b.generation, 3);
            assert!(b.is_valid());
            let e = Lease::acquire(&s, who("c", "h3"), short).await;
            assert!(matches!(e, Err(LeaseError::Held { .. })));
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(
                !b.is_valid(),
                "a lease past its ttl no longer covers writes"
            );
            let c = Lease::acquire(&s, who("c", "h3"), short).await.unwrap();
            assert_eq!(c.generation, 4);
        });
    }

    #[test]
    fn a_retried_create_recognises_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        rt().block_on(async {
            let me = who("a", "h1");
            let times = LeaseTimes::default();
            let rec = LeaseRecord::new(&me, &times, None);
            assert!(matches!(
                write_generation(&s, 7, &rec).await.unwrap(),
                Written::Ours
            ));
            // The same write again (its first answer lost) finds its own record.
            assert!(matches!(
                write_generation(&s, 7, &rec).await.unwrap(),
                Written::Ours
            ));
            // A different record at the same generation is someone else's.
            let other = LeaseRecord::new(&me, &times, None);
            match write_generation(&s, 7, &other).await.unwrap() {
                Written::Theirs(there) => assert_eq!(there.nonce, rec.nonce),
                Written::Ours => panic!("a record with another nonce is not ours"),
            }
        });
    }

    #[test]
    fn a_garbled_lease_object_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        rt().block_on(async {
            s.put(
                &lease_key(1),
                Bytes::from_static(b"not json"),
                PutMode::CreateOnly,
            )
            .await
            .unwrap();
            let e = Lease::acquire(&s, who("a", "h1"), LeaseTimes::default())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("lease/0000000000000001.json"), "{e}");
        });
    }

    #[test]
    fn owner_ids_persist_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), Path::new("/x.db")).unwrap();
        let b = Identity::load_or_create(dir.path(), Path::new("/x.db")).unwrap();
        assert_eq!(a.owner, b.owner);
        assert!(is_owner_id(&a.owner));
        assert!(!a.host.is_empty());
    }
}
