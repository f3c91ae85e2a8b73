//! Rendering library results for people (text) and scripts (JSON).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use walstream::catalog::{Catalog, ObjectInfo};
use walstream::restore::format_time;
use walstream::verify::deep::DeepOptions;
use walstream::{ObjectStore, RestoreError, RestoreOptions};

/// The error and its causes, like `{:#}`, but without repeating a cause the
/// message already includes (library errors often embed their source).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

pub struct RestoreFlags {
    pub dry_run: bool,
    pub if_replica_exists: bool,
    pub if_db_not_exists: bool,
}

pub async fn restore(
    store: &Arc<dyn ObjectStore>,
    mut opts: RestoreOptions,
    flags: RestoreFlags,
) -> Result<ExitCode> {
    if flags.if_db_not_exists && opts.output.symlink_metadata().is_ok() {
        eprintln!(
            "{} exists; nothing restored (--if-db-not-exists)",
            opts.output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if flags.dry_run {
        return match walstream::plan_restore(store, opts.target).await {
            Ok(plan) => {
                println!("{plan}");
                println!("  output {}", opts.output.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(RestoreError::EmptyReplica { .. }) if flags.if_replica_exists => {
                empty_replica(store)
            }
            Err(e) => Err(e.into()),
        };
    }
    let bar = progress_bar();
    if let Some(bar) = &bar {
        let bar = bar.clone();
        opts.progress = Some(Arc::new(move |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        }));
    }
    let result = walstream::restore(store, &opts).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(r) => {
            let proof = if r.checksum_verified {
                "checksum verified"
            } else {
                "checksum not recorded for this txid"
            };
            eprintln!(
                "restored {} to txid {} ({}), {} pages of {} bytes, {proof}",
                r.output.display(),
                r.txid,
                format_time(r.time_ms),
                r.db_pages,
                r.page_size
            );
            for key in &r.skipped_damaged {
                eprintln!("warning: damaged object {key} was planned around");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(RestoreError::EmptyReplica { .. }) if flags.if_replica_exists => empty_replica(store),
        Err(e) => Err(e.into()),
    }
}

fn empty_replica(store: &Arc<dyn ObjectStore>) -> Result<ExitCode> {
    eprintln!(
        "replica {} is empty; nothing restored (--if-replica-exists)",
        store.describe()
    );
    Ok(ExitCode::SUCCESS)
}

fn progress_bar() -> Option<ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("restoring [{bar:40}] {bytes}/{total_bytes} {eta}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

fn object_json(o: &ObjectInfo) -> serde_json::Value {
    json!({
        "key": o.key,
        "lineage": format!("{:016x}", o.lineage),
        "min_txid": o.min_txid,
        "max_txid": o.max_txid,
        "time": format_time(o.max_time_ms),
        "min_time": format_time(o.min_time_ms),
        "size": o.size,
    })
}

pub async fn list(store: &Arc<dyn ObjectStore>, as_json: bool) -> Result<ExitCode> {
    let cat = Catalog::load(store).await?;
    let window = cat.window();
    if as_json {
        let v = json!({
            "window": window.map(|w| json!({
                "min_txid": w.min_txid,
                "max_txid": w.max_txid,
                "min_time": format_time(w.min_time_ms),
                "max_time": format_time(w.max_time_ms),
            })),
            "snapshots": cat.snapshots.iter().map(object_json).collect::<Vec<_>>(),
            "segments": cat.segments.iter().map(object_json).collect::<Vec<_>>(),
            "superseded": cat.superseded.iter().map(|s| {
                let mut v = object_json(&s.object);
                v["by_lineage"] = json!(format!("{:016x}", s.by_lineage));
                v
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    match window {
        Some(w) => println!(
            "restorable window: txid {}..={} ({} .. {})",
            w.min_txid,
            w.max_txid,
            format_time(w.min_time_ms),
            format_time(w.max_time_ms)
        ),
        None => println!("restorable window: empty"),
    }
    let mut lineages: Vec<u64> = cat
        .snapshots
        .iter()
        .chain(&cat.segments)
        .map(|o| o.lineage)
        .collect();
    lineages.sort_unstable();
    lineages.dedup();
    for l in lineages {
        let segs: Vec<&ObjectInfo> = cat.segments.iter().filter(|o| o.lineage == l).collect();
        let bytes: u64 = segs.iter().map(|o| o.size).sum();
        println!("lineage {l:016x}:");
        for s in cat.snapshots.iter().filter(|o| o.lineage == l) {
            println!(
                "  snapshot txid {:>8}  {}  {:>12} bytes  {}",
                s.max_txid,
                format_time(s.max_time_ms),
                s.size,
                s.key
            );
        }
        if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
            println!(
                "  segments txid {}..={} ({} objects, {bytes} bytes, {} .. {})",
                first.min_txid,
                last.max_txid,
                segs.len(),
                format_time(first.min_time_ms),
                format_time(last.max_time_ms)
            );
        }
    }
    for s in &cat.superseded {
        println!(
            "superseded by lineage {:016x} (a late upload; restores ignore it): txid {}..={}  {}",
            s.by_lineage, s.object.min_txid, s.object.max_txid, s.object.key
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(
    store: &Arc<dyn ObjectStore>,
    as_json: bool,
    opts: &walstream::verify::VerifyOptions,
    deep: Option<&DeepOptions>,
) -> Result<ExitCode> {
    let mut report = walstream::verify::verify_with(store, opts).await?;
    let checks = match deep {
        Some(d) => Some(walstream::verify::deep::deep_verify(store, d, &mut report).await?),
        None => None,
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": report.is_ok(),
                "objects": report.objects,
                "bytes": report.bytes,
                "commits_checked": report.commits_checked,
                "problems": report.problems,
                "unencrypted_objects": report.unencrypted_objects,
                "keys": report.keys,
                "sample": report.sample.map(|s| s.to_string()),
                "checked_keys": report.checked_keys,
                "deep": deep.map(|d| json!({"seed": d.seed, "restores": checks})),
            }))?
        );
    } else {
        print_verify_text(&report, deep, checks.as_deref());
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_verify_text(
    report: &walstream::VerifyReport,
    deep: Option<&DeepOptions>,
    checks: Option<&[walstream::verify::deep::DeepCheck]>,
) {
    for p in &report.problems {
        let sev = match p.severity {
            walstream::verify::Severity::Error => "ERROR",
            walstream::verify::Severity::Warning => "warning",
        };
        match &p.key {
            Some(k) => println!("{sev}: {k}: {}", p.problem),
            None => println!("{sev}: {}", p.problem),
        }
    }
    print_key_usage(report);
    if let Some(s) = report.sample {
        println!(
            "sample {s}: read {} of the replica's objects",
            report.objects
        );
    }
    if let (Some(d), Some(checks)) = (deep, checks) {
        let txids: Vec<String> = checks.iter().map(|c| c.txid.to_string()).collect();
        let good = checks.iter().filter(|c| c.ok).count();
        println!(
            "deep (seed {}): restored txids {}: {good} of {} proven",
            d.seed,
            txids.join(", "),
            checks.len()
        );
    }
    println!(
        "{}: {} objects, {} bytes, {} commits checked",
        if report.is_ok() { "OK" } else { "FAILED" },
        report.objects,
        report.bytes,
        report.commits_checked
    );
}

/// Which keys the replica's objects need: a rotation is complete once no
/// object needs a previous key.
fn print_key_usage(report: &walstream::VerifyReport) {
    for k in &report.keys {
        println!(
            "key {}: {} objects, {}",
            k.key_id,
            k.objects,
            if k.available {
                "key available"
            } else {
                "KEY NOT CONFIGURED"
            }
        );
    }
    if !report.keys.is_empty() && report.unencrypted_objects > 0 {
        println!("unencrypted: {} objects", report.unencrypted_objects);
    }
}

pub struct StatusFlags {
    pub json: bool,
    /// Several databases or replicas (from a config): JSON is an array, text
    /// is separated.
    pub many: bool,
}

/// One replica of one database to report on.
pub struct StatusTarget {
    pub db: std::path::PathBuf,
    /// The replica's name in the config.
    pub name: Option<String>,
    pub store: Arc<dyn ObjectStore>,
}

/// Exit code: the worst health level, 3 when some status could not be told.
pub async fn status(
    targets: &[StatusTarget],
    flags: StatusFlags,
    thresholds: &walstream::health::Thresholds,
) -> Result<ExitCode> {
    let mut worst = 0u8;
    let mut all = Vec::new();
    // The running process of each database, asked once.
    let mut live: Vec<(&Path, Option<Vec<walstream::control::Live>>)> = Vec::new();
    for t in targets {
        if !live.iter().any(|(db, _)| *db == t.db.as_path()) {
            // One replica asked about: only it answers (a busy one elsewhere
            // does not hold up the reply).
            let only = match targets.len() {
                1 => Some(t.store.describe()),
                _ => None,
            };
            live.push((
                &t.db,
                walstream::control::live(&t.db, only.as_deref()).await,
            ));
        }
    }
    for t in targets {
        let running = live
            .iter()
            .find(|(db, _)| *db == t.db.as_path())
            .and_then(|(_, l)| l.as_deref());
        match status_of(t, running, thresholds).await {
            Ok(s) => {
                worst = worst.max(s.health.as_ref().map_or(3, |h| h.level.exit_code()));
                all.push(s);
            }
            Err(e) if flags.many => {
                let name = t
                    .name
                    .as_deref()
                    .map_or(String::new(), |n| format!(" replica {n}"));
                eprintln!("error: {}{name}: {}", t.db.display(), error_chain(&e));
                worst = 3;
            }
            Err(e) => return Err(e),
        }
    }
    if flags.json {
        let values = all.iter().map(status_json).collect::<Result<Vec<_>>>()?;
        let v = match flags.many {
            true => serde_json::Value::Array(values),
            false => values.into_iter().next().unwrap_or_default(),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (i, s) in all.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_status(s);
        }
    }
    Ok(ExitCode::from(worst))
}

async fn status_of(
    t: &StatusTarget,
    running: Option<&[walstream::control::Live]>,
    thresholds: &walstream::health::Thresholds,
) -> Result<walstream::status::Status> {
    let live = running
        .and_then(|all| walstream::control::live_for(all, &t.store.describe(), t.name.as_deref()));
    let verification = live.and_then(|l| l.verification.clone());
    let mut s = walstream::status::status(&t.db, &t.store, live.map(|l| l.engine.clone())).await?;
    s.replica_name = t
        .name
        .clone()
        .or_else(|| live.map(|l| l.name.clone()).filter(|n| !n.is_empty()));
    s.last_verification = verification;
    s.assess(chrono::Utc::now().timestamp_millis(), thresholds);
    Ok(s)
}

fn status_json(s: &walstream::status::Status) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    v["last_snapshot_time"] = json!(s.last_snapshot_time_ms.map(format_time));
    Ok(v)
}

fn print_status(s: &walstream::status::Status) {
    let opt = |v: Option<u64>| v.map_or("unknown".to_string(), |n| n.to_string());
    if let Some(h) = &s.health {
        println!("health:              {}", h.level.as_str().to_uppercase());
        for r in &h.reasons {
            println!("  - {r}");
        }
    }
    println!("database:            {}", s.database);
    match &s.replica_name {
        Some(name) => println!("replica:             {name} ({})", s.replica),
        None => println!("replica:             {}", s.replica),
    }
    println!(
        "replicating:         {}",
        if s.replicating { "yes" } else { "no" }
    );
    println!("last committed txid: {}", opt(s.last_committed_txid));
    println!("last shipped txid:   {}", s.last_shipped_txid);
    println!("pending commits:     {}", opt(s.pending_commits));
    println!(
        "lag:                 {}, {} bytes",
        s.lag_ms.map_or("unknown".into(), |ms| format!(
            "{:.3} s",
            ms as f64 / 1000.0
        )),
        opt(s.lag_bytes)
    );
    println!("WAL size:            {} bytes", s.wal_bytes);
    println!(
        "last snapshot:       {}{}",
        s.last_snapshot_time_ms.map_or("none".into(), format_time),
        s.last_snapshot_age_ms.map_or(String::new(), |a| format!(
            " ({:.1} h ago)",
            a as f64 / 3.6e6
        ))
    );
    if let Some(w) = &s.window {
        println!(
            "restorable window:   txid {}..={} ({} .. {})",
            w.min_txid,
            w.max_txid,
            format_time(w.min_time_ms),
            format_time(w.max_time_ms)
        );
    }
    if let Some(v) = &s.last_verification {
        println!(
            "last verification:   {} at {} (txid {})",
            if v.ok { "passed" } else { "FAILED" },
            format_time(v.time_ms),
            opt(v.txid)
        );
        for p in &v.problems {
            println!("  - {p}");
        }
    }
    if let Some(e) = &s.last_error {
        println!("last error:          {e}");
    }
    if s.wal_released {
        println!("WAL released:        yes (failing too long: no longer holding the WAL for this replica)");
    }
}
