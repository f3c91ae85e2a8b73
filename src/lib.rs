//! walstream: continuous replication and point-in-time restore for SQLite.
//!
//! The library API is small: [`Replicator`] embeds replication of one database
//! in an application's tokio runtime (backups on demand, their list, status,
//! waiting for a transaction to be durable), [`Replication`] is the capture
//! underneath it,
//! [`restore()`] rebuilds a database at any transaction or time in the
//! restorable window, [`verify()`] proves what a replica holds, and [`Catalog`]
//! lists it. Replicas live in an [`ObjectStore`] opened from a [`ReplicaUrl`].

#[cfg(feature = "axum")]
pub mod admin;
pub mod capture;
pub mod catalog;
pub mod checksum;
pub mod compaction;
pub mod config;
pub mod control;
pub mod crypto;
pub mod error;
pub mod format;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod monitor;
pub mod replica;
pub mod replicator;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod status;
pub mod store;
pub mod verify;
pub mod wal;
pub mod webhook;

pub use capture::{replicate_once, CaptureOptions, EngineStatus, Replication};
pub use catalog::{Catalog, Window};
pub use crypto::{Key, Keyring};
pub use error::{CaptureError, RestoreError};
pub use replica::ReplicaUrl;
pub use replicator::{BackupInfo, Backups, Replicator, ReplicatorBuilder, ReplicatorError};
pub use restore::{
    plan_restore, restore, IntegrityCheck, RestoreOptions, RestorePlan, RestoreReport, Target,
};
pub use store::{ObjectStore, PutMode};
pub use verify::{verify, verify_with_keys, VerifyReport};
