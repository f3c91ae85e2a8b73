//! Upload batching (`upload_interval`): one PUT carries many commits, and each
//! commit still restores on its own, by txid and by time.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;

#[test]
fn batched_segments_keep_every_commit_and_its_time() {
    let env = Env::new();
    let replica = env.replica_arg();
    let config = env.path("walstream.toml");
    let text = format!(
        "upload_interval = \"1s\"\n[[db]]\npath = \"{}\"\n[[db.replica]]\nurl = \"{}\"\n",
        env.db.display(),
        replica
    );
    std::fs::write(&config, text).expect("writing the config");
    let mut app = App::create(&env.db);
    let log = std::fs::File::create(env.path("replicate.log")).expect("log");
    let mut child = Command::new(bin())
        .arg("replicate")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawning walstream");
    wait_shipped(&env.db, &replica, 1);

    // 40 commits about 20 ms apart: well inside one upload interval each batch.
    // Batching looks at the WAL at most every 50 ms (a twentieth of the
    // interval), and a commit is dated by the look that finds it: the time
    // sampled between two commits sits 150 ms after the first.
    let mut states = vec![app.digest()];
    let mut between = Vec::new();
    for i in 0..40 {
        app.commit_insert_one();
        states.push(app.digest());
        let gap = if i == 20 { 150 } else { 10 };
        std::thread::sleep(Duration::from_millis(gap));
        if i == 20 {
            between.push((states.len() - 1, SystemTime::now()));
        }
        std::thread::sleep(Duration::from_millis(gap));
    }
    wait_shipped(&env.db, &replica, 41);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut child, Duration::from_secs(30)).expect("walstream exits");
    assert!(status.success(), "replicate exited with {status:?}");

    let list = list_json(&replica);
    assert_eq!(window(&list), Some((1, 41)));
    let segs = segments(&list);
    assert!(
        segs.len() <= 6,
        "40 commits in under 1.5 s should take a handful of PUTs, not {}",
        segs.len()
    );
    assert!(
        segs.iter().any(|s| s.max_txid > s.min_txid),
        "some segment carries several commits: {segs:?}"
    );

    // Every txid restores to the state after its own commit.
    for txid in [1u64, 2, 7, 21, 22, 40, 41] {
        let out = env.path(&format!("txid-{txid}.db"));
        let digest = restore_digest(&replica, &out, &["--txid", &txid.to_string()]);
        assert_eq!(digest, states[(txid - 1) as usize], "txid {txid}");
    }
    // A time between two commits of one batch resolves inside the segment.
    for (state, at) in between {
        let out = env.path("at-time.db");
        let digest = restore_digest(&replica, &out, &["--timestamp", &rfc3339(at)]);
        assert_eq!(digest, states[state], "restore at {}", rfc3339(at));
    }
}
