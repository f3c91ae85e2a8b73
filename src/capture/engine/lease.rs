//! The engine's side of the replica lease: claimed before the first write,
//! renewed while running, released on a clean stop.

use super::*;
use crate::lease::{Identity, Lease, Release};

impl Engine {
    /// Claims the lease on first use; renews it when due. Writes need a lease
    /// that is still valid, so a failed renewal only stops them once it lapses.
    pub(super) fn ensure_lease(&mut self) -> Result<(), CaptureError> {
        let (rt, store) = (self.rt.clone(), Arc::clone(&self.store));
        let Some(lease) = self.lease.as_mut() else {
            let me = Identity::load_or_create(&self.slot.state_dir, &self.db_path).map_err(
                |source| CaptureError::Io {
                    path: self.slot.state_dir.clone(),
                    source,
                },
            )?;
            let lease = rt.block_on(Lease::acquire(&store, me, self.opts.lease))?;
            if lease.after_unclean_stop() {
                // Known exactly when the process before ran on this host in
                // this boot; else anything may still land.
                self.may_land_up_to(self.sent.previous().unwrap_or(u64::MAX));
            }
            self.lease = Some(lease);
            return self.sent.claimed();
        };
        // Not while the application's writers are held: a renewal can wait
        // for the next write, and a slow store must not hold them.
        let held = self.writers_held_until.is_some() && lease.is_valid();
        if !lease.renewal_due() || held {
            return Ok(());
        }
        match rt.block_on(lease.renew(&store)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = CaptureError::from(e);
                if e.is_fatal() || !lease.is_valid() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "renewing the replica lease failed; retrying");
                Ok(())
            }
        }
    }

    /// Lets the next start, on any host, claim the replica at once.
    pub(super) fn release_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            let how = if self.uploads_may_land.is_some() {
                Release::UploadsMayLand
            } else {
                Release::Settled
            };
            if let Err(e) = self.block_on(lease.release(&self.store, how)) {
                tracing::warn!(error = %e, "could not release the replica lease; it expires by itself");
            }
        }
    }
}
