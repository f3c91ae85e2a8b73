//! Health of one replication: a pure function of the clock and what `status`
//! knows, so `walstream status`, the `/health` endpoint and webhooks agree.
//! Rules and defaults: `docs/monitoring.md`.

use std::time::Duration;

/// Ordered: the worst rule decides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Healthy,
    Warning,
    Critical,
}

impl Level {
    /// The exit code of `walstream status` (monitoring-plugin convention).
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Healthy => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Healthy => "healthy",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// When each rule turns warning and critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Age of the newest snapshot.
    pub snapshot_warning: Duration,
    pub snapshot_critical: Duration,
    /// Age of the oldest commit not yet in the replica.
    pub lag_warning: Duration,
    pub lag_critical: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            snapshot_warning: Duration::from_secs(25 * 3600),
            snapshot_critical: Duration::from_secs(48 * 3600),
            lag_warning: Duration::from_secs(5 * 60),
            lag_critical: Duration::from_secs(30 * 60),
        }
    }
}

/// What the rules look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Time of the newest snapshot (the time of the state it holds).
    pub last_snapshot_ms: Option<i64>,
    /// The newest snapshot holds the current state (nothing committed since):
    /// an idle database is not stale however old that state is.
    pub snapshot_current: bool,
    pub lag_ms: Option<u64>,
    /// A `replicate` process holds the database.
    pub replicating: bool,
    /// Result of the last scheduled verification, if one ran.
    pub last_verify_ok: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub level: Level,
    /// Why it is not healthy (empty when healthy).
    pub reasons: Vec<String>,
}

/// Applies every rule at time `now_ms` and keeps the worst.
pub fn assess(now_ms: i64, i: &Inputs, t: &Thresholds) -> Health {
    let mut h = Health {
        level: Level::Healthy,
        reasons: Vec::new(),
    };
    let mut raise = |level: Level, reason: String| {
        h.level = h.level.max(level);
        h.reasons.push(reason);
    };
    match i.last_snapshot_ms {
        None => raise(Level::Critical, "the replica has no snapshot".into()),
        Some(_) if i.snapshot_current => {}
        Some(t_ms) => {
            let age = Duration::from_millis(now_ms.saturating_sub(t_ms).max(0) as u64);
            if let Some(l) = grade(age, t.snapshot_warning, t.snapshot_critical) {
                raise(l, format!("last snapshot is {} old", human(age)));
            }
        }
    }
    if let Some(lag) = i.lag_ms.map(Duration::from_millis) {
        if let Some(l) = grade(lag, t.lag_warning, t.lag_critical) {
            raise(l, format!("replication lags {} behind", human(lag)));
        }
    }
    // Not critical by itself: a stopped replicator loses nothing (the next start
    // continues or snapshots), and the snapshot-age and lag rules escalate.
    if !i.replicating {
        raise(Level::Warning, "replicate is not running".into());
    }
    if i.last_verify_ok == Some(false) {
        raise(Level::Critical, "the last verification failed".into());
    }
    h
}

fn grade(value: Duration, warning: Duration, critical: Duration) -> Option<Level> {
    if value >= critical {
        Some(Level::Critical)
    } else if value >= warning {
        Some(Level::Warning)
    } else {
        None
    }
}

/// "3h 20m", "45 s": enough precision for a reason line.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn rules_table() {
        let now = 1_000 * H;
        let t = Thresholds::default();
        let ok = Inputs {
            snapshot_current: false,
            last_snapshot_ms: Some(now - H),
            lag_ms: Some(0),
            replicating: true,
            last_verify_ok: Some(true),
        };
        let cases: Vec<(&str, Inputs, Level)> = vec![
            ("all fine", ok.clone(), Level::Healthy),
            (
                "snapshot 24h59m",
                Inputs {
                    last_snapshot_ms: Some(now - 25 * H + 60_000),
                    ..ok.clone()
                },
                Level::Healthy,
            ),
            (
                "snapshot exactly 25h",
                Inputs {
                    last_snapshot_ms: Some(now - 25 * H),
                    ..ok.clone()
                },
                Level::Warning,
            ),
            (
                "snapshot 47h",
                Inputs {
                    last_snapshot_ms: Some(now - 47 * H),
                    ..ok.clone()
                },
                Level::Warning,
            ),
            (
                "snapshot 48h",
                Inputs {
                    last_snapshot_ms: Some(now - 48 * H),
                    ..ok.clone()
                },
                Level::Critical,
            ),
            (
                "no snapshot",
                Inputs {
                    last_snapshot_ms: None,
                    ..ok.clone()
                },
                Level::Critical,
            ),
            (
                "snapshot in the future (clock skew)",
                Inputs {
                    last_snapshot_ms: Some(now + H),
                    ..ok.clone()
                },
                Level::Healthy,
            ),
            (
                "idle database, old but current snapshot",
                Inputs {
                    last_snapshot_ms: Some(now - 100 * H),
                    snapshot_current: true,
                    ..ok.clone()
                },
                Level::Healthy,
            ),
            (
                "lag 6 min",
                Inputs {
                    lag_ms: Some(6 * 60_000),
                    ..ok.clone()
                },
                Level::Warning,
            ),
            (
                "lag 31 min",
                Inputs {
                    lag_ms: Some(31 * 60_000),
                    ..ok.clone()
                },
                Level::Critical,
            ),
            (
                "lag unknown",
                Inputs {
                    lag_ms: None,
                    ..ok.clone()
                },
                Level::Healthy,
            ),
            (
                "not running",
                Inputs {
                    replicating: false,
                    ..ok.clone()
                },
                Level::Warning,
            ),
            (
                "not running, old snapshot",
                Inputs {
                    replicating: false,
                    last_snapshot_ms: Some(now - 50 * H),
                    ..ok.clone()
                },
                Level::Critical,
            ),
            (
                "verification failed",
                Inputs {
                    last_verify_ok: Some(false),
                    ..ok.clone()
                },
                Level::Critical,
            ),
            (
                "never verified",
                Inputs {
                    last_verify_ok: None,
                    ..ok.clone()
                },
                Level::Healthy,
            ),
        ];
        for (name, inputs, want) in cases {
            let h = assess(now, &inputs, &t);
            assert_eq!(h.level, want, "{name}: {h:?}");
            assert_eq!(
                h.reasons.is_empty(),
                want == Level::Healthy,
                "{name}: {h:?}"
            );
        }
    }

    #[test]
    fn thresholds_are_configurable() {
        let now = 100 * H;
        let t = Thresholds {
            snapshot_warning: Duration::from_secs(3600),
            snapshot_critical: Duration::from_secs(2 * 3600),
            ..Thresholds::default()
        };
        let i = |age: i64| Inputs {
            snapshot_current: false,
            last_snapshot_ms: Some(now - age),
            lag_ms: None,
            replicating: true,
            last_verify_ok: None,
        };
        assert_eq!(assess(now, &i(H / 2), &t).level, Level::Healthy);
        assert_eq!(assess(now, &i(H + 1), &t).level, Level::Warning);
        assert_eq!(assess(now, &i(2 * H), &t).level, Level::Critical);
        assert_eq!(Level::Critical.exit_code(), 2);
    }
}
