//! Commit-to-replica lag of `walstream replicate` into a local directory replica.
//!
//! Run through `scripts/bench/lag.sh` (which builds in release mode first), or:
//!
//! ```text
//! cargo build --release --bin walstream --example lag_bench
//! target/release/examples/lag_bench --walstream target/release/walstream
//! ```
//!
//! Lag: a fresh WAL database is replicated by a child `walstream replicate DB
//! REPLICA_DIR`. Once its first snapshot (txid S) is in the replica, this program
//! (the "application", through rusqlite) commits one-row transactions at a steady
//! rate. Commit j (1-based) after the snapshot is txid S + j. For each it measures
//! the time from COMMIT returning to the moment a segment whose name covers that
//! txid (`<min 16 hex>-<max 16 hex>-...wseg`) appears in REPLICA_DIR/segments/.
//! Appearance is observed with inotify (the `notify` crate): LocalStore publishes
//! a segment by hard-linking a finished, fsynced temporary file, so the IN_CREATE
//! event of the final name is the moment the segment becomes visible.
//!
//! Throughput: the same commit loop without pauses, on a fresh database, with and
//! without walstream replicating it; the median of several runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use notify::{EventKind, RecursiveMode, Watcher};
use rusqlite::Connection;

#[derive(Parser, Debug)]
#[command(about = "Commit-to-replica lag and throughput of walstream (local replica)")]
struct Args {
    /// The walstream binary to run.
    #[arg(long, default_value = "target/release/walstream")]
    walstream: PathBuf,
    /// Commits measured for lag.
    #[arg(long, default_value_t = 2000)]
    commits: u64,
    /// Pause between lag commits (steady schedule), in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    interval_ms: f64,
    /// Unmeasured commits before the lag run (waits for each to ship).
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Commits per throughput run.
    #[arg(long, default_value_t = 10000)]
    throughput_commits: u64,
    /// Throughput runs per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// PRAGMA synchronous of the application connection.
    #[arg(long, default_value = "NORMAL")]
    synchronous: String,
    /// Directory for the databases and replicas (default: a new temporary one,
    /// removed afterwards; it must be on the disk you want to measure).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write one line per lag commit (j, txid, committed at ms, lag ms, commit ms).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Keep the working directory (a --dir is always kept).
    #[arg(long)]
    keep: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let walstream = std::path::absolute(&args.walstream)?;
    if !walstream.is_file() {
        bail!(
            "{} not found; build it with cargo build --release",
            walstream.display()
        );
    }
    let mut tmp = None;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            std::path::absolute(d)?
        }
        None => {
            let t = tempfile::Builder::new().prefix("lag-bench-").tempdir()?;
            let p = t.path().to_path_buf();
            tmp = Some(t);
            p
        }
    };
    eprintln!("working in {}", root.display());

    let load_before = load();
    let fsync = fsync_probe(&root.join("fsync-probe"))?;
    let lag = lag_run(&args, &walstream, &root.join("lag"))?;

    let mut plain = Vec::new();
    let mut replicated = Vec::new();
    for run in 0..args.runs {
        plain.push(throughput_run(
            &args,
            None,
            &root.join(format!("tp-plain-{run}")),
        )?);
        replicated.push(throughput_run(
            &args,
            Some(&walstream),
            &root.join(format!("tp-ws-{run}")),
        )?);
    }

    if let Some(path) = &args.csv {
        let mut out = String::from("j,txid,committed_at_ms,lag_ms,commit_ms\n");
        for (j, l) in lag.lags.iter().enumerate() {
            out.push_str(&format!(
                "{j},{},{:.3},{},{:.3}\n",
                lag.base_txid + 1 + j as u64,
                lag.at_ms[j],
                l.map_or(String::new(), |l| format!("{l:.3}")),
                lag.commit_ms[j]
            ));
        }
        std::fs::write(path, out)?;
    }
    print_report(&args, &fsync, &lag, &plain, &replicated);
    println!("conditions: before {load_before}; after {}", load());
    if args.keep {
        if let Some(t) = tmp {
            let _ = t.keep();
        }
        eprintln!("kept {}", root.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The application side
// ---------------------------------------------------------------------------

fn open_app(db: &Path, synchronous: &str) -> Result<Connection> {
    let conn = Connection::open(db)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        bail!("journal_mode is {mode}");
    }
    conn.execute_batch(&format!("PRAGMA synchronous={synchronous};"))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, at INTEGER NOT NULL);",
    )?;
    Ok(conn)
}

/// One small transaction; returns the instant COMMIT returned.
fn commit_one(conn: &Connection, i: u64) -> Result<Instant> {
    conn.execute_batch("BEGIN")?;
    conn.execute(
        "INSERT INTO t(v, at) VALUES (?1, ?2)",
        (format!("row {i:08} ............................"), i as i64),
    )?;
    conn.execute_batch("COMMIT")?;
    Ok(Instant::now())
}

// ---------------------------------------------------------------------------
// The replicator side
// ---------------------------------------------------------------------------

struct Replicator {
    child: Child,
    log: PathBuf,
}

impl Replicator {
    fn start(bin: &Path, db: &Path, replica: &Path) -> Result<Replicator> {
        let log = replica.with_extension("log");
        let err = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("replicate")
            .arg(db)
            .arg(replica)
            .env(
                "WALSTREAM_LOG",
                std::env::var("WALSTREAM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Replicator { child, log })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// CPU time (user + system) the replicator has used so far.
    fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }

    /// Waits for the first snapshot; returns its txid.
    fn wait_snapshot(&mut self, replica: &Path) -> Result<u64> {
        let dir = replica.join("snapshots");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("walstream exited with {status}; see {}", self.log.display());
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".wsnap") && !name.starts_with(".tmp-") {
                        return u64::from_str_radix(&name[..16], 16)
                            .with_context(|| format!("snapshot name {name}"));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("no snapshot after 60 s; see {}", self.log.display())
    }

    /// SIGTERM, then wait: walstream ships what is committed and exits.
    fn stop(mut self) -> Result<()> {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("walstream exited with {status}; see {}", self.log.display());
        }
        Ok(())
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Txid range from a segment file name.
fn segment_range(name: &str) -> Option<(u64, u64)> {
    if name.starts_with(".tmp-") || !name.ends_with(".wseg") {
        return None;
    }
    let min = u64::from_str_radix(name.get(0..16)?, 16).ok()?;
    let max = u64::from_str_radix(name.get(17..33)?, 16).ok()?;
    Some((min, max))
}

/// When each txid first became visible in REPLICA/segments/.
#[derive(Default)]
struct Seen {
    at: HashMap<u64, Instant>,
    max: u64,
}

impl Seen {
    fn add(&mut self, min: u64, max: u64, now: Instant) {
        for t in min..=max {
            self.at.entry(t).or_insert(now);
        }
        self.max = self.max.max(max);
    }
}

/// Watches REPLICA/segments/ (which must exist) with inotify.
fn watch_segments(dir: &Path) -> Result<(notify::RecommendedWatcher, Arc<Mutex<Seen>>)> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = Arc::clone(&seen);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let now = Instant::now();
        let Ok(ev) = res else { return };
        if !matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_)) {
            return;
        }
        for p in &ev.paths {
            if let Some((min, max)) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(segment_range)
            {
                s.lock().unwrap().add(min, max, now);
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, seen))
}

/// Segments already in the directory (catches anything an event missed).
fn list_segments(dir: &Path) -> Vec<(u64, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| segment_range(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until an event reported `txid`; a listing is the fallback should an
/// event have been missed (such commits then count as missed, without a lag).
fn wait_txid(seen: &Mutex<Seen>, dir: &Path, txid: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut polls = 0u64;
    while seen.lock().unwrap().max < txid {
        polls += 1;
        if polls.is_multiple_of(5000) && list_segments(dir).iter().any(|&(_, max)| max >= txid) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("txid {txid} not in the replica after {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

struct LagResult {
    /// When each measured commit returned, in ms since the first one started.
    at_ms: Vec<f64>,
    base_txid: u64,
    /// Lag per measured commit, in ms (None: never seen by an event).
    lags: Vec<Option<f64>>,
    /// Duration of each COMMIT call path (BEGIN..COMMIT), in ms.
    commit_ms: Vec<f64>,
    elapsed: Duration,
    segments: u64,
    missed_events: usize,
    cpu: Option<Duration>,
    restored_rows: i64,
    expected_rows: i64,
}

fn lag_run(args: &Args, bin: &Path, dir: &Path) -> Result<LagResult> {
    std::fs::create_dir_all(dir)?;
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let conn = open_app(&db, &args.synchronous)?;
    conn.execute("INSERT INTO t(v, at) VALUES ('seed', 0)", [])?;
    let mut rep = Replicator::start(bin, &db, &replica)?;
    let snap = rep.wait_snapshot(&replica)?;
    eprintln!("lag: first snapshot at txid {snap}");

    // The first commit creates segments/; watch it from then on.
    let first = snap + 1;
    commit_one(&conn, 0)?;
    let seg_dir = replica.join("segments");
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_segments(&seg_dir).iter().all(|&(_, max)| max < first) {
        if Instant::now() > deadline {
            bail!("first segment did not appear; see {}", rep.log.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_watcher, seen) = watch_segments(&seg_dir)?;
    let mut txid = first;
    for i in 0..args.warmup {
        commit_one(&conn, 1 + i)?;
        txid += 1;
        wait_txid(&seen, &seg_dir, txid, Duration::from_secs(10))?;
    }
    let base = txid;

    eprintln!(
        "lag: {} commits every {} ms (txids {}..={})",
        args.commits,
        args.interval_ms,
        base + 1,
        base + args.commits
    );
    let cpu0 = rep.cpu_time();
    let interval = Duration::from_secs_f64(args.interval_ms / 1000.0);
    let mut committed = Vec::with_capacity(args.commits as usize);
    let mut commit_ms = Vec::with_capacity(args.commits as usize);
    let start = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "lag: measured commits start at unix time {:.3} s (committed_at_ms is relative to it)",
        wall.as_secs_f64()
    );
    for j in 0..args.commits {
        let due = start + interval.mul_f64(j as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let t0 = Instant::now();
        let t = commit_one(&conn, 1000 + j)?;
        commit_ms.push(ms(t - t0));
        committed.push(t);
    }
    let last = base + args.commits;
    wait_txid(&seen, &seg_dir, last, Duration::from_secs(30))?;
    let elapsed = start.elapsed();
    let cpu = rep.cpu_time().zip(cpu0).map(|(a, b)| a.saturating_sub(b));
    drop(_watcher);

    // Anything a missed event did not record still counts as shipped, without a time.
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    let listed: u64 = list_segments(&seg_dir)
        .iter()
        .filter(|&&(_, max)| max > base)
        .count() as u64;
    let lags: Vec<Option<f64>> = committed
        .iter()
        .enumerate()
        .map(|(j, t)| {
            seen.at
                .remove(&(base + 1 + j as u64))
                .map(|s| signed_ms(s, *t))
        })
        .collect();
    let missed = lags.iter().filter(|l| l.is_none()).count();
    let segments = listed;
    rep.stop()?;
    drop(conn);

    // Sanity: the replica restores to the application's rows.
    let restored = replica.parent().unwrap().join("restored.db");
    let out = Command::new(bin)
        .arg("restore")
        .arg(&replica)
        .arg("-o")
        .arg(&restored)
        .output()?;
    if !out.status.success() {
        bail!(
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rows: i64 =
        Connection::open(&restored)?.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    let expected: i64 =
        Connection::open(&db)?.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    Ok(LagResult {
        at_ms: committed.iter().map(|t| ms(*t - start)).collect(),
        base_txid: base,
        lags,
        commit_ms,
        elapsed,
        segments,
        missed_events: missed,
        cpu,
        restored_rows: rows,
        expected_rows: expected,
    })
}

struct Throughput {
    commits_per_s: f64,
    /// After the loop: time until the last commit was visible in the replica.
    drain: Option<Duration>,
}

fn throughput_run(args: &Args, bin: Option<&Path>, dir: &Path) -> Result<Throughput> {
    std::fs::create_dir_all(dir)?;
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let conn = open_app(&db, &args.synchronous)?;
    conn.execute("INSERT INTO t(v, at) VALUES ('seed', 0)", [])?;
    let mut rep = None;
    let mut snap = 0;
    if let Some(bin) = bin {
        let mut r = Replicator::start(bin, &db, &replica)?;
        snap = r.wait_snapshot(&replica)?;
        rep = Some(r);
    }
    let n = args.throughput_commits;
    let start = Instant::now();
    for i in 0..n {
        commit_one(&conn, i)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut drain = None;
    if let Some(r) = rep {
        let last = snap + n;
        let seg_dir = replica.join("segments");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if list_segments(&seg_dir).iter().any(|&(_, max)| max >= last) {
                drain = Some(
                    start
                        .elapsed()
                        .saturating_sub(Duration::from_secs_f64(secs)),
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("txid {last} never shipped; see {}", r.log.display());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        r.stop()?;
    }
    let label = if bin.is_some() { "with" } else { "without" };
    eprintln!(
        "throughput {label} walstream: {:.0} commits/s",
        n as f64 / secs
    );
    Ok(Throughput {
        commits_per_s: n as f64 / secs,
        drain,
    })
}

struct Fsync {
    file_ms: Vec<f64>,
    dir_ms: Vec<f64>,
}

/// What one durable object publication costs on this disk: write + fsync of a
/// small file, and fsync of its directory.
fn fsync_probe(dir: &Path) -> Result<Fsync> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut file_ms = Vec::new();
    let mut dir_ms = Vec::new();
    let buf = vec![7u8; 4096];
    for i in 0..50 {
        let p = dir.join(format!("f{i}"));
        let t = Instant::now();
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        file_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        std::fs::File::open(dir)?.sync_all()?;
        dir_ms.push(ms(t.elapsed()));
    }
    std::fs::remove_dir_all(dir)?;
    Ok(Fsync { file_ms, dir_ms })
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// Load average and IO pressure: the benchmark is only as quiet as the machine.
fn load() -> String {
    let la = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let la: Vec<&str> = la.split_whitespace().take(3).collect();
    let io = std::fs::read_to_string("/proc/pressure/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "n/a".into());
    format!("loadavg {} / io pressure some {io}", la.join(" "))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a - b` in ms, negative when `a` is earlier.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a - b)
    } else {
        -ms(b - a)
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

fn row(name: &str, v: &[f64]) -> String {
    let s = sorted(v);
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.len(),
        pct(&s, 50.0),
        pct(&s, 95.0),
        pct(&s, 99.0),
        s.last().copied().unwrap_or(f64::NAN),
        s.first().copied().unwrap_or(f64::NAN),
    )
}

fn print_report(
    args: &Args,
    fsync: &Fsync,
    lag: &LagResult,
    plain: &[Throughput],
    ws: &[Throughput],
) {
    let lags: Vec<f64> = lag.lags.iter().flatten().copied().collect();
    println!();
    println!(
        "### Commit-to-replica lag ({} commits, one every {} ms, synchronous={})",
        args.commits, args.interval_ms, args.synchronous
    );
    println!();
    println!("| measure | n | p50 ms | p95 ms | p99 ms | max ms | min ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("{}", row("COMMIT returned → segment visible", &lags));
    println!("{}", row("BEGIN..COMMIT in the app", &lag.commit_ms));
    let stalled = lag.commit_ms.iter().filter(|&&m| m > 50.0).count();
    println!("{}", row("probe: 4 KiB file write + fsync", &fsync.file_ms));
    println!("{}", row("probe: directory fsync", &fsync.dir_ms));
    println!();
    let cpu = lag
        .cpu
        .map(|c| {
            format!(
                "{:.1}%",
                100.0 * c.as_secs_f64() / lag.elapsed.as_secs_f64()
            )
        })
        .unwrap_or_else(|| "n/a".into());
    println!(
        "segments: {} for {} commits ({:.2} commits/segment); commits seen only by listing (missed events): {}; \
         app commits that took > 50 ms: {stalled}; \
         walstream CPU during the run: {cpu} of one core; restored rows {} / expected {}",
        lag.segments,
        args.commits,
        args.commits as f64 / lag.segments.max(1) as f64,
        lag.missed_events,
        lag.restored_rows,
        lag.expected_rows,
    );
    println!();
    println!(
        "### Throughput ({} one-row commits back to back, median of {} runs)",
        args.throughput_commits, args.runs
    );
    println!();
    println!("| configuration | median commits/s | runs | drain after loop |");
    println!("|---|---:|---|---|");
    let fmt_runs = |v: &[Throughput]| {
        v.iter()
            .map(|t| format!("{:.0}", t.commits_per_s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cps = |v: &[Throughput]| median(&v.iter().map(|t| t.commits_per_s).collect::<Vec<_>>());
    println!(
        "| without walstream | {:.0} | {} | - |",
        cps(plain),
        fmt_runs(plain)
    );
    let drains = ws
        .iter()
        .map(|t| t.drain.map_or("-".into(), |d| format!("{:.0} ms", ms(d))))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "| with walstream replicating | {:.0} | {} | {drains} |",
        cps(ws),
        fmt_runs(ws)
    );
    println!();
    if lag.restored_rows != lag.expected_rows {
        println!("WARNING: the restored replica does not hold the application's rows");
    }
}
