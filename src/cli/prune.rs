//! `prune`, `pin` and `unpin`: retention from the command line.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use walstream::catalog::Catalog;
use walstream::config::parse_duration;
use walstream::retention::{self, RetentionPlan, RetentionPolicy};
use walstream::ObjectStore;

/// Retention rules given on the command line; any of them replaces the
/// configured (or default) policy as a whole.
#[derive(Args, Debug, Default)]
pub struct PolicyArgs {
    /// Keep the newest N snapshots.
    #[arg(long)]
    retention_count: Option<usize>,
    /// Keep snapshots younger than this ("30d", "12h").
    #[arg(long)]
    retention_age: Option<String>,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long)]
    keep_daily: Option<usize>,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long)]
    keep_weekly: Option<usize>,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long)]
    keep_monthly: Option<usize>,
    /// Never keep fewer than N snapshots (at least 1).
    #[arg(long)]
    min_snapshots: Option<usize>,
}

impl PolicyArgs {
    /// The policy these flags give, or `None` when no flag was given.
    pub fn policy(&self) -> Result<Option<RetentionPolicy>> {
        let tiers = (self.keep_daily, self.keep_weekly, self.keep_monthly);
        if self.retention_count.is_none()
            && self.retention_age.is_none()
            && tiers == (None, None, None)
            && self.min_snapshots.is_none()
        {
            return Ok(None);
        }
        let age = match &self.retention_age {
            Some(s) => Some(parse_duration(s).with_context(|| {
                format!("--retention-age {s:?}: use a duration like 30d or 12h")
            })?),
            None => None,
        };
        Ok(Some(RetentionPolicy {
            count: self.retention_count,
            age,
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            min: self.min_snapshots.unwrap_or(1).max(1),
        }))
    }
}

/// Plans retention for `store`, prints the plan, and unless `dry_run` deletes.
pub async fn prune(
    store: &Arc<dyn ObjectStore>,
    policy: &RetentionPolicy,
    dry_run: bool,
    as_json: bool,
) -> Result<ExitCode> {
    let catalog = Catalog::load(store).await?;
    let pins = retention::load_pins(store).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let plan = retention::plan(&catalog, policy, &pins, now);
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan_json(&plan, dry_run))?
        );
    } else {
        print_plan(&store.describe(), &plan, dry_run);
    }
    if !dry_run {
        retention::execute(store, &plan).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn delete_reason(plan: &RetentionPlan, key: &str) -> String {
    match plan.window_from {
        Some(from) if key.starts_with("segments/") => {
            format!("before the restorable window, which starts at txid {from}")
        }
        _ => "no retention rule keeps it".to_string(),
    }
}

fn plan_json(plan: &RetentionPlan, dry_run: bool) -> serde_json::Value {
    json!({
        "dry_run": dry_run,
        "window_from_txid": plan.window_from,
        "keep": plan.keep.iter().map(|k| json!({
            "key": k.snapshot.key,
            "reasons": k.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "delete": plan.delete.iter().map(|o| json!({
            "key": o.key,
            "size": o.size,
            "reason": delete_reason(plan, &o.key),
        })).collect::<Vec<_>>(),
    })
}

fn print_plan(replica: &str, plan: &RetentionPlan, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "delete" };
    for k in &plan.keep {
        let why: Vec<String> = k.reasons.iter().map(ToString::to_string).collect();
        println!("keep          {}  ({})", k.snapshot.key, why.join(", "));
    }
    for o in &plan.delete {
        println!("{verb:<13} {}  ({})", o.key, delete_reason(plan, &o.key));
    }
    let bytes: u64 = plan.delete.iter().map(|o| o.size).sum();
    println!(
        "{replica}: {} snapshots kept, {} objects ({bytes} bytes) {}; every txid from {} on stays restorable",
        plan.keep.len(),
        plan.delete.len(),
        if dry_run { "would be deleted" } else { "deleted" },
        plan.window_from.map_or("-".to_string(), |t| t.to_string()),
    );
}

/// `pin` / `unpin`.
pub async fn set_pin(
    store: &Arc<dyn ObjectStore>,
    snapshot: &str,
    pinned: bool,
) -> Result<ExitCode> {
    retention::set_pin(store, snapshot, pinned)
        .await
        .with_context(|| {
            format!(
                "{} {snapshot}",
                if pinned { "pinning" } else { "unpinning" }
            )
        })?;
    let pins: BTreeSet<String> = retention::load_pins(store).await?;
    println!(
        "{snapshot} is {}; {} snapshot(s) pinned in {}",
        if pinned { "pinned" } else { "no longer pinned" },
        pins.len(),
        store.describe()
    );
    Ok(ExitCode::SUCCESS)
}
