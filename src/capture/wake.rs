//! File events → engine wake-ups, at most one outstanding.
//!
//! An application committing tens of thousands of times a second writes the
//! WAL a hundred thousand times a second, and inotify reports each write. Read
//! one by one, those events cost the watcher thread about a third of a core.
//! The gate lets one wake-up wait for the engine at a time, and holds the
//! watcher thread until the engine has taken it: meanwhile the kernel merges
//! the identical events queued behind it, so the watcher wakes about once per
//! engine step instead of once per write. No event is lost: the engine takes a
//! wake-up before it reads the WAL, and any event read after that sends a new
//! one. On Linux the watches are one-shot instead (see `events`): taking a
//! wake-up re-arms them, and the watcher is never held.

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::events::Rearm;
use super::Command;

/// Longest the watcher waits for the engine to take a wake-up (a safety net:
/// the engine takes every one it receives).
const MAX_HOLD: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub(crate) struct WakeGate {
    /// A wake-up was sent and the engine has not taken it yet, and whether
    /// the engine has stopped.
    state: Mutex<GateState>,
    taken: Condvar,
    /// One-shot file watches to put back when a wake-up is taken.
    rearm: Option<Arc<Rearm>>,
}

#[derive(Debug, Default)]
struct GateState {
    pending: bool,
    closed: bool,
}

impl WakeGate {
    pub(crate) fn new(rearm: Option<Arc<Rearm>>) -> WakeGate {
        WakeGate {
            rearm,
            ..WakeGate::default()
        }
    }

    /// Watcher side: sends a wake-up unless one is already waiting, then, with
    /// `hold`, holds the calling thread until the engine took it (or
    /// `MAX_HOLD` passed).
    pub(crate) fn wake(&self, tx: &SyncSender<Command>, hold: bool) {
        let Ok(mut state) = self.state.lock() else {
            let _ = tx.try_send(Command::Wake);
            return;
        };
        if state.closed {
            return;
        }
        // A full queue already holds a wake-up; nothing to wait for then.
        if !state.pending && tx.try_send(Command::Wake).is_ok() {
            state.pending = true;
        }
        if !hold {
            return;
        }
        let _ = self
            .taken
            .wait_timeout_while(state, MAX_HOLD, |s| s.pending && !s.closed);
    }

    /// Engine side: called before each look at the WAL that a wake-up asked
    /// for, so events from then on send a new one.
    pub(crate) fn taken(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.pending = false;
        }
        self.taken.notify_all();
        // Only after `pending` is cleared: a watch that fires from here on
        // sends a new wake-up, so no write goes unnoticed.
        if let Some(r) = &self.rearm {
            r.rearm();
        }
    }

    /// Engine side, when it stops: the watcher is never held again.
    pub(crate) fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.taken.notify_all();
    }
}

/// Closes the gate when the engine's loop ends, however it ends.
pub(crate) struct CloseOnDrop(pub std::sync::Arc<WakeGate>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn wake_in_thread(
        gate: &Arc<WakeGate>,
        tx: &SyncSender<Command>,
        n: usize,
    ) -> std::thread::JoinHandle<()> {
        let (g, t) = (Arc::clone(gate), tx.clone());
        std::thread::spawn(move || (0..n).for_each(|_| g.wake(&t, true)))
    }

    fn expect_wake(rx: &std::sync::mpsc::Receiver<Command>) {
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert!(matches!(got, Ok(Command::Wake)), "no wake-up arrived");
    }

    #[test]
    fn one_wake_up_outstanding_and_released_when_taken() {
        let gate = Arc::new(WakeGate::default());
        let (tx, rx) = sync_channel(8);
        let watcher = wake_in_thread(&gate, &tx, 1);
        expect_wake(&rx);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!watcher.is_finished(), "the watcher is held");
        // Another event meanwhile (a second watcher call) sends nothing more.
        let second = wake_in_thread(&gate, &tx, 1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "a second wake-up while one waits");
        gate.taken();
        watcher.join().unwrap();
        second.join().unwrap();
        // An event after the wake-up was taken sends a new one.
        let third = wake_in_thread(&gate, &tx, 1);
        expect_wake(&rx);
        gate.taken();
        third.join().unwrap();
    }

    #[test]
    fn without_hold_the_watcher_goes_on_and_still_sends_one_wake_up() {
        let gate = WakeGate::default();
        let (tx, rx) = sync_channel(8);
        // Returns at once (the test would hang for MAX_HOLD per call otherwise
        // and the second call would still find the first wake-up pending).
        gate.wake(&tx, false);
        gate.wake(&tx, false);
        expect_wake(&rx);
        assert!(rx.try_recv().is_err(), "one wake-up while one waits");
        gate.taken();
        gate.wake(&tx, false);
        expect_wake(&rx);
    }

    #[test]
    fn a_closed_gate_holds_nothing() {
        let gate = Arc::new(WakeGate::default());
        let (tx, rx) = sync_channel(8);
        let watcher = wake_in_thread(&gate, &tx, 1);
        expect_wake(&rx);
        gate.taken();
        watcher.join().unwrap();
        drop(CloseOnDrop(Arc::clone(&gate)));
        // Events after the engine stopped send nothing (an open gate would
        // send one now that the last was taken).
        wake_in_thread(&gate, &tx, 3).join().unwrap();
        assert!(rx.try_recv().is_err());
    }
}
