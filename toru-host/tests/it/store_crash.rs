//! The store survives SIGKILL: a child process (`toru-test-kv`) writes through `Store` and
//! prints every acknowledged write; it is killed at random moments, and after each kill the
//! database must open cleanly and hold every acknowledged write, nothing half-written, and
//! usage counts that match what is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use toru_host::{KvLimits, Store};

/// Kills, each at a random moment.
const ROUNDS: u32 = 10;
const PLUGINS: [&str; 3] = ["p0", "p1", "p2"];

/// The value `toru-test-kv` stores under `key` (its `value_of`).
fn value_of(key: &str) -> String {
    let len: usize = key
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut value = key.repeat(len / key.len() + 1);
    value.truncate(len);
    value
}

/// A small xorshift generator: the test prints its seed, and `TORU_CRASH_SEED` replays one.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the child said before it died.
#[derive(Default)]
struct Acked {
    /// Keys whose set was acknowledged, by plugin.
    set: BTreeSet<(String, String)>,
    /// Keys the child asked to delete (acknowledged or not).
    delete_asked: BTreeSet<(String, String)>,
    /// Keys whose delete was acknowledged.
    deleted: BTreeSet<(String, String)>,
}

impl Acked {
    fn take(&mut self, line: &str) {
        let mut words = line.split(' ');
        let (Some(what), Some(plugin), Some(key)) = (words.next(), words.next(), words.next())
        else {
            panic!("unexpected line from toru-test-kv: {line:?}");
        };
        let entry = (plugin.to_owned(), key.to_owned());
        match what {
            "set" => self.set.insert(entry),
            "del?" => self.delete_asked.insert(entry),
            "del" => self.deleted.insert(entry),
            _ => panic!("unexpected line from toru-test-kv: {line:?}"),
        };
    }
}

/// Runs the child for one round until it has acknowledged `kill_after` writes, then SIGKILLs
/// it.
async fn write_until_killed(path: &Path, round: u32, kill_after: u64, acked: &mut Acked) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_toru-test-kv"))
        .arg(path)
        .arg(round.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn toru-test-kv");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("round {round}: toru-test-kv went silent"))
            .expect("read toru-test-kv")
            .unwrap_or_else(|| panic!("round {round}: toru-test-kv exited"))
    };
    assert_eq!(next().await, "open", "round {round}");
    let mut acks = 0;
    while acks < kill_after {
        let line = next().await;
        if !line.starts_with("del?") {
            acks += 1;
        }
        acked.take(&line);
    }
    child.start_kill().expect("SIGKILL toru-test-kv");
    // Lines already in the pipe were acknowledged too.
    while let Ok(Some(line)) = lines.next_line().await {
        acked.take(&line);
    }
    child.wait().await.expect("reap toru-test-kv");
}

/// Opens the store as the next start would, and checks it against what was acknowledged.
async fn check(path: &Path, round: u32, acked: &Acked) {
    let store = Store::open(path, KvLimits::default())
        .unwrap_or_else(|e| panic!("round {round}: the store does not open after a kill: {e}"));
    let mut present = BTreeMap::new();
    for plugin in PLUGINS {
        let kv = store.kv(plugin);
        let mut stored = 0;
        let mut after: Option<String> = None;
        loop {
            let page = kv.list("", after.as_deref(), 1000).await.unwrap();
            let Some(last) = page.last().cloned() else {
                break;
            };
            for key in page {
                let value = kv
                    .get(&key)
                    .await
                    .unwrap()
                    .expect("a listed key has a value");
                assert_eq!(
                    value,
                    value_of(&key),
                    "round {round}: {plugin}/{key} holds a value never written"
                );
                stored += (key.len() + value.len()) as u64;
                present.insert((plugin.to_owned(), key), ());
            }
            after = Some(last);
        }
        assert_eq!(
            kv.usage().await.unwrap(),
            stored,
            "round {round}: {plugin}'s usage does not match what it stores"
        );
    }
    for entry in &acked.set {
        if !acked.delete_asked.contains(entry) {
            assert!(
                present.contains_key(entry),
                "round {round}: the acknowledged set of {entry:?} was lost"
            );
        }
    }
    for entry in &acked.deleted {
        assert!(
            !present.contains_key(entry),
            "round {round}: the acknowledged delete of {entry:?} was lost"
        );
    }
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkills_at_random_moments() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("data").join("toru.redb");
    let seed = std::env::var("TORU_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("TORU_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut acked = Acked::default();
    for round in 0..ROUNDS {
        // Up to about two checkpoints' worth of writes (values average 16 KiB, the log is
        // checkpointed at 8 MiB), so some kills land in or near a checkpoint.
        let kill_after = 1 + rng.below(1200);
        println!("round {round}: SIGKILL after {kill_after} acknowledged writes");
        write_until_killed(&path, round, kill_after, &mut acked).await;
        check(&path, round, &acked).await;
    }
    assert!(
        acked.set.len() >= ROUNDS as usize,
        "only {} writes were acknowledged",
        acked.set.len()
    );
}
