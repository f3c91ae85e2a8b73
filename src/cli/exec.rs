//! `replicate --exec CMD`: walstream as the parent of the application, the
//! container pattern. Restore a missing database, start replication, run the
//! command, forward signals to it, and when it exits ship what it committed
//! and exit with its status.
//!
//! CMD is split into words like a shell would for plain words and quotes
//! ('…', "…", backslash), without variables, globs or operators, and run
//! directly (no shell in between, so signals reach the application itself).
//! Use `--exec "sh -c '…'"` for shell features.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};

use anyhow::{anyhow, bail, Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use walstream::monitor::MonitorConfig;
use walstream::restore::choose::Candidate;
use walstream::{CaptureOptions, Keyring};

use super::running::Running;
use super::DbTarget;

/// The signals passed on to the child.
struct Forwarded {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Forwarded {
    fn install() -> Result<Forwarded> {
        Ok(Forwarded {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

pub async fn run(
    command: &str,
    dbs: Vec<DbTarget>,
    opts: CaptureOptions,
    monitor: MonitorConfig,
    keys: Keyring,
) -> Result<ExitCode> {
    let words = split_words(command)?;
    // Installed first: a signal during restore or start-up reaches the child
    // as soon as it runs.
    let mut signals = Forwarded::install()?;
    for (db, replicas) in &dbs {
        let mut candidates = Vec::new();
        for r in replicas {
            candidates.push(Candidate {
                name: r.name.clone(),
                store: r.url.open()?,
            });
        }
        let urls: Vec<String> = replicas.iter().map(|r| r.url.to_string()).collect();
        // From the most advanced replica when there are several.
        walstream::replicator::restore_if_missing_from(db, &candidates, &keys)
            .await
            .with_context(|| {
                format!(
                    "restoring the missing {} from {}",
                    db.display(),
                    urls.join(" or ")
                )
            })?;
    }
    let running = match dbs.is_empty() {
        true => None,
        false => Some(Running::start(dbs, &opts, &monitor, &keys).await?),
    };
    let mut child = tokio::process::Command::new(&words[0])
        .args(&words[1..])
        .spawn()
        .with_context(|| format!("starting {:?}", words[0]))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the command exited at once"))?;
    tracing::info!(pid, command = %words[0], "started the command");
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut replication_failed = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            sig = signals.next() => forward(pid, sig),
            _ = tick.tick(), if !replication_failed => {
                if running.as_ref().is_some_and(Running::any_finished) {
                    // A stopped replicator cannot protect new commits: stop
                    // the application too, so its supervisor notices.
                    tracing::error!("replication stopped unexpectedly: stopping the command");
                    replication_failed = true;
                    forward(pid, libc::SIGTERM);
                }
            }
        }
    };
    let code = exit_code(status);
    tracing::info!(code, "the command exited");
    let synced = match running {
        Some(r) => r.stop().await?,
        None => true,
    };
    Ok(match (synced && !replication_failed, code) {
        (true, c) => ExitCode::from(c),
        (false, 0) => ExitCode::from(1),
        (false, c) => ExitCode::from(c),
    })
}

fn forward(pid: u32, sig: i32) {
    tracing::info!(pid, signal = sig, "forwarding the signal to the command");
    // SAFETY: kill(2) takes plain integers; a pid that already exited makes it fail
    // harmlessly with ESRCH (the child is not reaped before `wait` returns).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The child's exit code, or 128 + the signal that killed it (as shells say).
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => (128 + s) as u8,
        (None, None) => 1,
    }
}

/// Splits CMD into words: whitespace separates; '…' is literal; in "…" a
/// backslash escapes `"`, `\`, `$` and `` ` ``; elsewhere a backslash escapes
/// the next character.
pub fn split_words(cmd: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("--exec: unterminated ' in {cmd:?}"),
                    }
                }
            }
            '"' => double_quoted(&mut chars, word.get_or_insert_with(String::new), cmd)?,
            '\\' => {
                let next = chars.next().ok_or_else(|| anyhow!("--exec: trailing \\"))?;
                word.get_or_insert_with(String::new).push(next);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        bail!("--exec: the command is empty");
    }
    Ok(words)
}

fn double_quoted(chars: &mut std::str::Chars<'_>, w: &mut String, cmd: &str) -> Result<()> {
    loop {
        match chars.next() {
            Some('"') => return Ok(()),
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                Some(c) => {
                    w.push('\\');
                    w.push(c);
                }
                None => bail!("--exec: unterminated \" in {cmd:?}"),
            },
            Some(c) => w.push(c),
            None => bail!("--exec: unterminated \" in {cmd:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_without_expansion() {
        let cases: &[(&str, &[&str])] = &[
            ("app --port 8080", &["app", "--port", "8080"]),
            ("  sh -c 'exit 7' ", &["sh", "-c", "exit 7"]),
            (
                r#"echo "a \"b\" $HOME" x\ y"#,
                &["echo", "a \"b\" $HOME", "x y"],
            ),
            (r#"a''b "" c"#, &["ab", "", "c"]),
            (r#""\n""#, &["\\n"]),
        ];
        for (cmd, want) in cases {
            assert_eq!(split_words(cmd).unwrap(), *want, "{cmd}");
        }
        for bad in ["", "   ", "a 'b", "a \"b", "a\\"] {
            assert!(split_words(bad).is_err(), "{bad:?}");
        }
    }
}
