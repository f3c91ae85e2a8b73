//! Retention planning: which snapshots to keep and which objects no kept
//! snapshot needs any more. Planned first (so `prune --dry-run` and tests need
//! no I/O), then executed.

use std::sync::Arc;

use crate::catalog::{Catalog, ObjectInfo};
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Snapshots kept, oldest first.
    pub keep: Vec<ObjectInfo>,
    /// Objects to delete, snapshots first (so an interrupted prune never leaves a
    /// kept snapshot without its segments).
    pub delete: Vec<ObjectInfo>,
}

/// Keeps the newest `keep_snapshots` snapshots (at least one) and every segment
/// after the oldest kept one.
pub fn plan(catalog: &Catalog, keep_snapshots: usize) -> RetentionPlan {
    let keep_n = keep_snapshots.max(1);
    let split = catalog.snapshots.len().saturating_sub(keep_n);
    let (old, keep) = catalog.snapshots.split_at(split);
    let Some(oldest) = keep.first() else {
        return RetentionPlan::default();
    };
    let mut delete: Vec<ObjectInfo> = old.to_vec();
    delete.extend(
        catalog
            .segments
            .iter()
            .filter(|s| s.max_txid <= oldest.max_txid)
            .cloned(),
    );
    RetentionPlan {
        keep: keep.to_vec(),
        delete,
    }
}

pub async fn execute(store: &Arc<dyn ObjectStore>, plan: &RetentionPlan) -> Result<(), StoreError> {
    for obj in &plan.delete {
        store.delete(&obj.key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{segment_key, snapshot_key};

    fn catalog(keys: &[String]) -> Catalog {
        Catalog::from_keys(keys, 1)
    }

    #[test]
    fn keeps_newest_and_their_segments() {
        let c = catalog(&[
            snapshot_key(1, 1, 0),
            segment_key(2, 5, 1, 1, 1),
            snapshot_key(5, 1, 2),
            segment_key(6, 8, 1, 3, 3),
            snapshot_key(9, 2, 4),
            segment_key(10, 10, 2, 5, 5),
        ]);
        let p = plan(&c, 2);
        let deleted: Vec<&str> = p.delete.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            deleted,
            vec![snapshot_key(1, 1, 0), segment_key(2, 5, 1, 1, 1)]
        );
        assert_eq!(p.keep.len(), 2);
        assert!(
            plan(&c, 0).keep.len() == 1,
            "at least one snapshot is always kept"
        );
        assert!(plan(&c, 10).delete.is_empty());
    }
}
