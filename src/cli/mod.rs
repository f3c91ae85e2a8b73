//! Maps command-line arguments to library calls.

mod exec;
mod keys;
pub mod malloc;
mod monitoring;
mod output;
mod prune;
mod running;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

use std::sync::Arc;

use walstream::capture::ReplicaSpec;
use walstream::config::{Config, ReplicaConfig};
use walstream::control;
use walstream::restore::choose::{self, Candidate};
use walstream::{CaptureOptions, IntegrityCheck, ReplicaUrl, RestoreOptions, Target};

#[derive(Parser, Debug)]
#[command(
    name = "walstream",
    version,
    about = "Continuous replication and point-in-time restore for SQLite"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Check {
    None,
    Quick,
    Full,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replicate a database until SIGINT/SIGTERM (or one pass with --once).
    Replicate {
        db: Option<PathBuf>,
        replica: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not expand ${VAR} in the config file.
        #[arg(long)]
        no_expand_env: bool,
        /// One pass: snapshot if needed, ship everything committed, exit.
        #[arg(long)]
        once: bool,
        /// Serve /metrics and /health here (HOST:PORT, e.g. 127.0.0.1:9157;
        /// `:PORT` is loopback). Overrides the config's metrics_addr.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        /// Switch a database in rollback-journal mode to WAL mode first
        /// (persistent; without it such a database is refused).
        #[arg(long)]
        enable_wal: bool,
        /// Run CMD under replication: restore a missing database first, forward
        /// SIGTERM/SIGINT/SIGHUP to it, and when it exits ship what it committed
        /// and exit with its status. CMD is split into words like a shell does
        /// (quotes, backslashes; no variables or globs).
        #[arg(long, value_name = "CMD", conflicts_with = "once")]
        exec: Option<String>,
    },
    /// Restore a database from a replica (latest, or to a txid or time).
    Restore {
        #[arg(value_name = "REPLICA_URL")]
        replica_url: Option<String>,
        /// With --config: restore from the replica of this name (default:
        /// the most advanced of the database's replicas).
        #[arg(long = "replica", value_name = "NAME", conflicts_with = "replica_url")]
        replica_name: Option<String>,
        /// With --config: the [[db]] to restore (default: the one -o names,
        /// else the first).
        #[arg(long = "db", value_name = "PATH", requires = "config")]
        db_path: Option<PathBuf>,
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// RFC 3339 time: the state after every transaction recorded at or before it.
        #[arg(long, conflicts_with = "txid")]
        timestamp: Option<String>,
        /// The state right after transaction N.
        #[arg(long)]
        txid: Option<u64>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        /// Print the plan and write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "quick")]
        integrity_check: Check,
        /// Exit 0 without writing when the replica is empty.
        #[arg(long)]
        if_replica_exists: bool,
        /// Exit 0 and touch nothing when the output exists.
        #[arg(long)]
        if_db_not_exists: bool,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        no_expand_env: bool,
    },
    /// Take a full snapshot now (through the running replicate, if any).
    Snapshot { db: PathBuf, replica: String },
    /// List lineages, snapshots, segments and the restorable window.
    List {
        replica: String,
        #[arg(long)]
        json: bool,
    },
    /// Read every object and check checksums, continuity and coverage
    /// (exit 0 intact, 1 problems found, 2 could not run).
    Verify {
        replica: String,
        #[arg(long)]
        json: bool,
        /// Also restore the latest txid and --points random ones into a scratch
        /// directory, each proven by checksum and PRAGMA integrity_check.
        #[arg(long)]
        deep: bool,
        /// Random txids of the window that --deep restores besides the latest.
        #[arg(long, default_value_t = 3, requires = "deep")]
        points: usize,
        /// Seed choosing the --deep points (default: random, printed).
        #[arg(long, requires = "deep")]
        seed: Option<u64>,
        /// Where --deep restores (default: the system temp dir); needs room
        /// for one copy of the database.
        #[arg(long, requires = "deep")]
        scratch_dir: Option<PathBuf>,
        /// Read only share K of N (by a stable hash of each object's key), so
        /// that runs with K = 1..N together read every object once.
        #[arg(long, value_name = "K/N")]
        sample: Option<walstream::verify::Sample>,
        /// Read encryption keys from this config file (else the environment).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        no_expand_env: bool,
    },
    /// Print a new random encryption key (base64).
    Keygen,
    /// Turn one downloaded encrypted object into its plain form.
    Decrypt {
        /// Environment variable holding the key (base64).
        #[arg(long, default_value = walstream::crypto::KEY_ENV)]
        key_env: String,
        input: PathBuf,
        output: PathBuf,
    },
    /// Delete snapshots no retention rule keeps, and segments no kept snapshot needs.
    Prune {
        /// The replica (default: every replica of --config).
        replica: Option<String>,
        /// Print the plan (what would be deleted and why, which rule keeps each
        /// survivor) and delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        policy: prune::PolicyArgs,
        /// Take the policy (and, without REPLICA_URL, the replicas) from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        no_expand_env: bool,
    },
    /// Keep a snapshot forever, whatever the retention policy says.
    Pin {
        replica: String,
        /// The snapshot's key, as `walstream list` shows it.
        snapshot: String,
    },
    /// Undo `pin`: the snapshot is subject to the retention policy again.
    Unpin { replica: String, snapshot: String },
    /// Positions, lag, last snapshot, verification and health (exit 0 healthy,
    /// 1 warning, 2 critical, 3 could not tell).
    Status {
        /// The database (default: every [[db]] of --config).
        db: Option<PathBuf>,
        replica: Option<String>,
        #[arg(long)]
        json: bool,
        /// Take the health thresholds (and, without DB_PATH REPLICA_URL, the
        /// databases) from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        no_expand_env: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if matches!(cli.command, Command::Restore { .. }) {
        malloc::keep_freed_memory();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Replicate {
            db,
            replica,
            config,
            no_expand_env,
            once,
            metrics_addr,
            enable_wal,
            exec,
        } => {
            let t = targets(db, replica, config, !no_expand_env)?;
            let (dbs, opts) = (t.dbs, t.opts);
            if enable_wal {
                for (db, _) in &dbs {
                    if let Some(from) = walstream::capture::enable_wal(db, opts.busy_timeout)? {
                        tracing::info!(db = %db.display(), from, "switched the database to WAL mode");
                    }
                }
            }
            if let Some(cmd) = exec {
                if dbs.is_empty() {
                    tracing::info!("backups are disabled ([storage.backup] enabled = false): running the command without replication");
                }
                let monitor = monitor_with(t.monitor, metrics_addr)?;
                return exec::run(&cmd, dbs, opts, monitor, t.keys).await;
            }
            if dbs.is_empty() {
                tracing::info!(
                    "backups are disabled ([storage.backup] enabled = false): nothing to replicate"
                );
                return Ok(ExitCode::SUCCESS);
            }
            if once {
                return replicate_once(dbs, &opts).await;
            }
            let monitor = monitor_with(t.monitor, metrics_addr)?;
            replicate(dbs, opts, monitor, t.keys).await
        }
        Command::Restore {
            replica_url,
            replica_name,
            db_path,
            output,
            timestamp,
            txid,
            force,
            dry_run,
            integrity_check,
            if_replica_exists,
            if_db_not_exists,
            config,
            no_expand_env,
        } => {
            let source = RestoreSource {
                url: replica_url,
                name: replica_name,
                db: db_path,
                output,
                config,
                expand: !no_expand_env,
            };
            let Some((out, store, keys)) = restore_paths(source, if_replica_exists).await? else {
                return Ok(ExitCode::SUCCESS);
            };
            let target = match (timestamp, txid) {
                (Some(t), _) => Target::Time(parse_time(&t)?),
                (None, Some(n)) => Target::Txid(n),
                (None, None) => Target::Latest,
            };
            let check = match integrity_check {
                Check::None => IntegrityCheck::None,
                Check::Quick => IntegrityCheck::Quick,
                Check::Full => IntegrityCheck::Full,
            };
            let flags = output::RestoreFlags {
                dry_run,
                if_replica_exists,
                if_db_not_exists,
            };
            let opts = RestoreOptions {
                output: out,
                target,
                force,
                integrity_check: check,
                progress: None,
                keys,
            };
            output::restore(&store, opts, flags).await
        }
        Command::Snapshot { db, replica } => {
            let url = ReplicaUrl::parse(&replica)?;
            let key = if walstream::capture::ReplicationLock::is_held(&db) {
                let req = control::Request::Snapshot {
                    replica: Some(replica.clone()),
                };
                let reply = control::request(&db, &req)
                    .await
                    .context("asking the running replicate for a snapshot")?;
                reply
                    .snapshot
                    .ok_or_else(|| anyhow!(reply.error.unwrap_or_default()))?
            } else {
                let opts = CaptureOptions {
                    encryption: keys::settings(None)?.encrypt_with,
                    ..CaptureOptions::default()
                };
                walstream::replicate_once(&db, url.open()?, opts, true)
                    .await?
                    .ok_or_else(|| anyhow!("no snapshot was taken"))?
            };
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::List { replica, json } => {
            output::list(&ReplicaUrl::parse(&replica)?.open()?, json).await
        }
        Command::Verify {
            replica,
            json,
            deep,
            points,
            seed,
            scratch_dir,
            sample,
            config,
            no_expand_env,
        } => {
            let run = async {
                let keys = keys::keyring(config.as_deref(), !no_expand_env)?;
                let store = ReplicaUrl::parse(&replica)?.open()?;
                let deep = deep.then(|| walstream::verify::deep::DeepOptions {
                    points,
                    seed: seed.unwrap_or_else(rand::random),
                    keys: keys.clone(),
                    scratch: scratch_dir,
                });
                let opts = walstream::verify::VerifyOptions { keys, sample };
                output::verify(&store, json, &opts, deep.as_ref()).await
            };
            // 1 means "problems found": a run that could not finish says 2.
            Ok(run.await.unwrap_or_else(|e| {
                eprintln!("error: {}", output::error_chain(&e));
                ExitCode::from(2)
            }))
        }
        Command::Prune {
            replica,
            dry_run,
            json,
            policy,
            config,
            no_expand_env,
        } => {
            let cfg = match &config {
                Some(path) => Some(Config::load(path, !no_expand_env)?),
                None => None,
            };
            let policy = match (policy.policy()?, &cfg) {
                (Some(p), _) => p,
                (None, Some(c)) => c.capture.retention.clone(),
                (None, None) => walstream::retention::RetentionPolicy::default(),
            };
            let urls = match (replica, cfg) {
                (Some(r), _) => vec![ReplicaUrl::parse(&r)?],
                (None, Some(c)) => c
                    .dbs
                    .into_iter()
                    .flat_map(|d| d.replicas.into_iter().map(|r| r.url))
                    .collect(),
                (None, None) => bail!("missing REPLICA_URL (or --config FILE)"),
            };
            for url in urls {
                prune::prune(&url.open()?, &policy, dry_run, json)
                    .await
                    .with_context(|| format!("pruning {url}"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pin { replica, snapshot } => {
            prune::set_pin(&ReplicaUrl::parse(&replica)?.open()?, &snapshot, true).await
        }
        Command::Unpin { replica, snapshot } => {
            prune::set_pin(&ReplicaUrl::parse(&replica)?.open()?, &snapshot, false).await
        }
        Command::Keygen => keys::keygen(),
        Command::Decrypt {
            key_env,
            input,
            output,
        } => keys::decrypt(&key_env, &input, &output),
        Command::Status {
            db,
            replica,
            json,
            config,
            no_expand_env,
        } => {
            let run = async {
                let cfg = match &config {
                    Some(path) => Some(Config::load(path, !no_expand_env)?),
                    None => None,
                };
                let thresholds = cfg.as_ref().map(|c| c.monitor.thresholds);
                let (targets, many) = match (db, replica, cfg) {
                    (Some(db), Some(r), _) => (vec![(db, None, ReplicaUrl::parse(&r)?)], false),
                    (None, None, Some(c)) => (
                        c.dbs
                            .into_iter()
                            .flat_map(|d| {
                                let path = d.path;
                                d.replicas
                                    .into_iter()
                                    .map(move |r| (path.clone(), Some(r.name), r.url))
                            })
                            .collect(),
                        true,
                    ),
                    _ => bail!("give DB_PATH REPLICA_URL, or --config FILE for all its databases"),
                };
                let mut opened = Vec::new();
                for (db, name, url) in targets {
                    opened.push(output::StatusTarget {
                        db: std::path::absolute(&db)?,
                        name,
                        store: url.open()?,
                    });
                }
                let flags = output::StatusFlags { json, many };
                output::status(&opened, flags, &thresholds.unwrap_or_default()).await
            };
            // 1 and 2 are health levels: a status that cannot be told is 3.
            Ok(run.await.unwrap_or_else(|e| {
                eprintln!("error: {}", output::error_chain(&e));
                ExitCode::from(3)
            }))
        }
    }
}

/// A database and its replicas.
pub(crate) type DbTarget = (PathBuf, Vec<ReplicaConfig>);

/// What `replicate` runs: databases, capture options, monitoring, keys.
struct Targets {
    dbs: Vec<DbTarget>,
    opts: CaptureOptions,
    monitor: walstream::monitor::MonitorConfig,
    keys: walstream::Keyring,
}

/// Databases to replicate, from arguments or the config file.
fn targets(
    db: Option<PathBuf>,
    replica: Option<String>,
    config: Option<PathBuf>,
    expand: bool,
) -> Result<Targets> {
    match (db, replica, config) {
        (Some(db), Some(r), None) => {
            let keys = keys::settings(None)?;
            let url = ReplicaUrl::parse(&r)?;
            Ok(Targets {
                dbs: vec![(db, vec![ReplicaConfig::unnamed(&r, url)])],
                opts: CaptureOptions {
                    encryption: keys.encrypt_with,
                    ..CaptureOptions::default()
                },
                monitor: Default::default(),
                keys: keys.keyring,
            })
        }
        (None, None, Some(path)) => {
            let c = Config::load(&path, expand)?;
            if c.dbs.is_empty() && !c.backups_disabled {
                if c.backup_replica.is_some() {
                    bail!(
                        "config {}: [storage.backup] names no database: add database = \"PATH\"",
                        path.display()
                    );
                }
                bail!("config {} lists no [[db]]", path.display());
            }
            let keys = keys::settings(Some(&c))?;
            Ok(Targets {
                dbs: c.dbs.into_iter().map(|d| (d.path, d.replicas)).collect(),
                opts: CaptureOptions {
                    encryption: keys.encrypt_with,
                    ..c.capture
                },
                monitor: c.monitor,
                keys: keys.keyring,
            })
        }
        (Some(_), None, None) => {
            bail!("missing REPLICA_URL: walstream replicate DB_PATH REPLICA_URL")
        }
        _ => bail!("give either DB_PATH REPLICA_URL or --config FILE"),
    }
}

/// Where `restore` reads from and writes to, as given.
struct RestoreSource {
    url: Option<String>,
    name: Option<String>,
    db: Option<PathBuf>,
    output: Option<PathBuf>,
    config: Option<PathBuf>,
    expand: bool,
}

/// The output, the replica's store and the keys of a restore. With a config
/// and no REPLICA_URL: the database `--db` or `-o` names (else the config's first),
/// from its replica `--replica NAME`, else its most advanced replica (said on
/// stderr). `None`: every replica is empty and `--if-replica-exists` was given.
async fn restore_paths(
    src: RestoreSource,
    if_replica_exists: bool,
) -> Result<Option<(PathBuf, Arc<dyn walstream::ObjectStore>, walstream::Keyring)>> {
    let config = match &src.config {
        Some(path) => Some(Config::load(path, src.expand)?),
        None => None,
    };
    let keys = keys::settings(config.as_ref())?.keyring;
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or(p.to_path_buf());
    let from_config = match config {
        None => None,
        Some(c) => {
            let find = |p: &PathBuf| c.dbs.iter().position(|d| abs(&d.path) == abs(p));
            let i = match &src.db {
                Some(db) => Some(find(db).ok_or_else(|| {
                    let dbs: Vec<String> =
                        c.dbs.iter().map(|d| d.path.display().to_string()).collect();
                    anyhow!(
                        "--db {}: the config lists no such database (it lists {})",
                        db.display(),
                        dbs.join(", ")
                    )
                })?),
                None => src.output.as_ref().and_then(find),
            };
            c.dbs.into_iter().nth(i.unwrap_or(0))
        }
    };
    let out = src
        .output
        .or_else(|| from_config.as_ref().map(|d| d.path.clone()))
        .ok_or_else(|| anyhow!("missing -o OUT (the file to restore into)"))?;
    if let Some(r) = src.url {
        return Ok(Some((out, ReplicaUrl::parse(&r)?.open()?, keys)));
    }
    let Some(db) = from_config else {
        if src.name.is_some() {
            bail!("--replica NAME picks one of a config's replicas: add --config FILE");
        }
        bail!("missing REPLICA_URL");
    };
    let mut candidates = Vec::new();
    for r in &db.replicas {
        candidates.push(Candidate {
            name: r.name.clone(),
            store: r.url.open()?,
        });
    }
    if let Some(name) = &src.name {
        let c = choose::by_name(&candidates, name)
            .map_err(|e| anyhow!("{}: {e}", db.path.display()))?;
        return Ok(Some((out, Arc::clone(&c.store), keys)));
    }
    if let [one] = candidates.as_slice() {
        return Ok(Some((out, Arc::clone(&one.store), keys)));
    }
    let survey = choose::most_advanced(&candidates).await;
    for note in survey.notes() {
        eprintln!("warning: {note}");
    }
    let reaches: Vec<String> = candidates
        .iter()
        .zip(&survey.reaches)
        .filter_map(|(c, r)| match r {
            Ok(Some(r)) => Some(format!(
                "{} up to txid {} at {}",
                c.name,
                r.window.max_txid,
                walstream::restore::format_time(r.window.max_time_ms)
            )),
            _ => None,
        })
        .collect();
    match survey.into_chosen(&candidates) {
        Ok(i) => {
            eprintln!(
                "restoring from replica {} ({}), the most advanced of: {}",
                candidates[i].name,
                candidates[i].store.describe(),
                reaches.join("; ")
            );
            Ok(Some((out, Arc::clone(&candidates[i].store), keys)))
        }
        Err(walstream::RestoreError::EmptyReplica { replica }) if if_replica_exists => {
            eprintln!("replicas {replica} are empty; nothing restored (--if-replica-exists)");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The config's monitoring with `--metrics-addr` applied.
fn monitor_with(
    mut monitor: walstream::monitor::MonitorConfig,
    metrics_addr: Option<String>,
) -> Result<walstream::monitor::MonitorConfig> {
    if let Some(a) = metrics_addr {
        monitor.metrics_addr = Some(
            walstream::monitor::parse_metrics_addr(&a)
                .ok_or_else(|| anyhow!("--metrics-addr {a:?}: use HOST:PORT"))?,
        );
    }
    Ok(monitor)
}

/// Options with the replica's own settings, and its store's defaults where
/// the config set none.
fn with_store_defaults(opts: &CaptureOptions, r: &ReplicaConfig) -> CaptureOptions {
    let mut o = opts.clone();
    o.upload_interval = r.upload_interval.or(o.upload_interval);
    r.url.apply_defaults(&mut o);
    o
}

/// The replica specs of one database.
fn specs(replicas: &[ReplicaConfig], opts: &CaptureOptions) -> Result<Vec<ReplicaSpec>> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(ReplicaSpec {
            name: r.name.clone(),
            store: r.url.open()?,
            opts: with_store_defaults(opts, r),
        });
    }
    Ok(out)
}

/// `replicate --once`: every database, each to all its replicas at the same
/// time; a replica that fails does not stop the others (exit 1 at the end).
async fn replicate_once(dbs: Vec<DbTarget>, opts: &CaptureOptions) -> Result<ExitCode> {
    let mut failed = 0;
    for (db, replicas) in dbs {
        let names: Vec<String> = replicas.iter().map(|r| r.url.to_string()).collect();
        let results = walstream::capture::replicate_all_once(&db, specs(&replicas, opts)?, false)
            .await
            .with_context(|| format!("replicating {}", db.display()))?;
        for (r, url) in results.into_iter().zip(names) {
            if let Err(e) = r {
                let e = anyhow::Error::from(e)
                    .context(format!("replicating {} to {url}", db.display()));
                eprintln!("error: {}", output::error_chain(&e));
                failed += 1;
            }
        }
    }
    Ok(match failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn parse_time(s: &str) -> Result<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).with_context(|| {
        format!("--timestamp {s:?} is not RFC 3339 (like 2026-11-22T08:30:00.250Z)")
    })?;
    Ok(t.timestamp_millis())
}

async fn replicate(
    dbs: Vec<DbTarget>,
    opts: CaptureOptions,
    monitor: walstream::monitor::MonitorConfig,
    keys: walstream::Keyring,
) -> Result<ExitCode> {
    // Installed before start-up so a signal during the first snapshot is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = running::Running::start(dbs, &opts, &monitor, &keys).await?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if running.any_finished() {
                    tracing::error!("a replication stopped unexpectedly");
                    break;
                }
            }
        }
    }
    Ok(if running.stop().await? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
