//! Who commits, checkpoints, and recovery from the log (`commit.rs`, `writer.rs`, `log.rs`).

use std::time::Instant;

use redb::ReadableDatabase;

use super::*;
use crate::store::commit::CHECKPOINT_BYTES;
use crate::store::log::{self, Log};
use crate::store::record::Change;
use crate::store::writer::QUEUE_PERMITS;
use crate::store::{STORE_LOG, StoreError};

/// Polls `done` (yielding the thread between looks) until it holds, failing after 10 s with
/// `what`. Blocks: for a multi-threaded runtime, whose workers run the tasks meanwhile.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn stats(store: &Store) -> crate::store::commit::Stats {
    store
        .inner
        .writer
        .with_engine(|e| e.stats)
        .expect("the store is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_write_commits_on_its_callers_thread() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    let kv = store.kv("p");
    // Run as a task: a task on a multi-threaded runtime may block in place.
    let writes = tokio::spawn(async move {
        for i in 0..10 {
            kv.set(&format!("k{i}"), "v").await.unwrap();
        }
        kv.delete("k0").await.unwrap()
    });
    assert!(within("10 writes", writes).await.unwrap());
    assert_eq!(store.inner.writer.inline_commits(), 11);
    assert_eq!(stats(&store).batches, 11);
    assert_eq!(store.kv("p").list("", None, 100).await.unwrap().len(), 9);
}

#[tokio::test]
async fn on_a_current_thread_runtime_writes_go_through_the_writer_thread() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    for i in 0..5 {
        store.kv("p").set(&format!("k{i}"), "v").await.unwrap();
    }
    assert_eq!(store.inner.writer.inline_commits(), 0);
    assert_eq!(stats(&store).batches, 5);
    assert_eq!(store.kv("p").get("k4").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_arrive_during_a_commit_share_the_next_one() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    // While a commit holds the engine, every write queues; releasing it commits them together.
    let held = store.inner.writer.hold_engine();
    let writes: Vec<_> = (0..64)
        .map(|i| {
            let kv = store.kv(&format!("plugin{}", i % 4));
            tokio::spawn(async move { kv.set(&format!("key{i}"), &format!("value{i}")).await })
        })
        .collect();
    until("64 queued writes", || store.inner.writer.queued() == 64);
    drop(held);
    for write in writes {
        within("a queued write", write).await.unwrap().unwrap();
    }
    assert_eq!(
        stats(&store).batches,
        1,
        "64 writes took more than one commit"
    );
    assert_eq!(store.inner.writer.inline_commits(), 0);
    assert_eq!(
        store.kv("plugin3").get("key63").await.unwrap().as_deref(),
        Some("value63")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_wait_for_room_when_the_queue_is_full() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    let held = store.inner.writer.hold_engine();
    // Each write holds 2 permits (1 KiB of value): half as many as there are permits fit.
    let value = "v".repeat(1024);
    let writes: Vec<_> = (0..QUEUE_PERMITS)
        .map(|i| {
            let (kv, value) = (store.kv("p"), value.clone());
            tokio::spawn(async move { kv.set(&format!("k{i:04}"), &value).await })
        })
        .collect();
    let fit = QUEUE_PERMITS / 2;
    until("a full queue", || store.inner.writer.queued() == fit);
    assert_eq!(store.inner.writer.room(), 0);
    let finished = writes.iter().filter(|w| w.is_finished()).count();
    assert_eq!(finished, 0, "writes finished while the engine was held");
    drop(held);
    for write in writes {
        within("a write that waited for room", write)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(store.inner.writer.room(), QUEUE_PERMITS);
    let each = ("k0000".len() + value.len()) as u64;
    assert_eq!(
        store.kv("p").usage().await.unwrap(),
        QUEUE_PERMITS as u64 * each
    );
}

#[tokio::test]
async fn the_log_is_checkpointed_and_starts_over_when_it_grows() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let kv = store.kv("big");
    let value = "x".repeat(1 << 20);
    // 20 MiB through a log that is checkpointed at 8 MiB.
    for i in 0..20 {
        kv.set(&format!("k{i:02}"), &value).await.unwrap();
        let logged = store.inner.writer.with_engine(|e| e.log().bytes()).unwrap();
        assert!(logged < CHECKPOINT_BYTES, "{logged} bytes logged after {i}");
    }
    assert!(stats(&store).checkpoints >= 3, "{:?}", stats(&store));
    let log_len = std::fs::metadata(log::path_for(&path)).unwrap().len();
    assert!(
        log_len <= 2 * CHECKPOINT_BYTES,
        "the log file grew to {log_len}"
    );
    within("close", store.close()).await.unwrap();
    let store = open(&path);
    assert_eq!(store.kv("big").list("", None, 100).await.unwrap().len(), 20);
    assert_eq!(store.kv("big").get("k19").await.unwrap(), Some(value));
}

#[tokio::test]
async fn a_failed_log_append_fails_its_batch_and_the_next_write_starts_a_clean_log() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let kv = store.kv("p");
    kv.set("before", "1").await.unwrap();
    let checkpoints = stats(&store).checkpoints;
    store
        .inner
        .writer
        .with_engine(|e| e.log().fail_next_append = true);
    let err = kv.set("lost", "2").await.unwrap_err();
    match &err {
        KvError::Storage(StoreError::Log { path: log_path, .. }) => {
            assert_eq!(log_path, &log::path_for(&path))
        }
        other => panic!("expected a log error, got {other:?}"),
    }
    assert_eq!(err.code(), error_code::INTERNAL);
    // The failed write is not visible, and the next one goes to a new log generation.
    assert_eq!(kv.get("lost").await.unwrap(), None);
    kv.set("after", "3").await.unwrap();
    assert_eq!(stats(&store).checkpoints, checkpoints + 1);
    assert_eq!(kv.usage().await.unwrap(), "before1after3".len() as u64);
    within("close", store.close()).await.unwrap();

    let store = open(&path);
    let kv = store.kv("p");
    assert_eq!(kv.get("lost").await.unwrap(), None);
    assert_eq!(kv.get("after").await.unwrap().as_deref(), Some("3"));
}

/// What the last checkpoint recorded: (salt, base, applied, open).
fn meta(path: &Path) -> [u64; 4] {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(STORE_LOG).unwrap();
    ["salt", "base", "applied", "open"].map(|k| table.get(k).unwrap().unwrap().value())
}

/// Rewrites what the last checkpoint recorded, as a crash after other checkpoints would leave it.
fn set_meta(path: &Path, values: [u64; 4]) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(STORE_LOG).unwrap();
        for (k, v) in ["salt", "base", "applied", "open"].iter().zip(values) {
            table.insert(*k, v).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Writes records of `changes` to the log of the closed store at `path`, as a store killed
/// after acknowledging them would have left them, and marks the log as in use. Returns where
/// each record ends.
fn write_records(path: &Path, records: &[&[Change<'_>]]) -> Vec<u64> {
    let [salt, base, applied, _] = meta(path);
    set_meta(path, [salt, base, applied, 1]);
    let log_path = log::path_for(path);
    let file = log::open_file(&log_path).unwrap().expect("the log exists");
    let mut log = Log::new(file, log_path, salt, base).unwrap();
    let mut ends = Vec::new();
    for changes in records {
        let mut record = vec![0; log::HEADER];
        for change in *changes {
            change.encode(&mut record);
        }
        log.append(&mut record).unwrap();
        ends.push(log.bytes());
    }
    ends
}

fn event_json(plugin_id: &str, time_ms: u64) -> String {
    serde_json::to_string(&event(plugin_id, EventKind::Started, time_ms)).unwrap()
}

#[tokio::test]
async fn writes_beyond_the_last_checkpoint_are_recovered_from_the_log() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store.kv("p").set("a", "1").await.unwrap();
    store.kv("p").set("old", "x").await.unwrap();
    within("close", store.close()).await.unwrap();

    let json = event_json("p", 5);
    let ends = write_records(
        &path,
        &[
            &[
                Change::KvSet {
                    plugin: "p",
                    key: "b",
                    value: "22",
                },
                Change::KvDelete {
                    plugin: "p",
                    key: "old",
                },
                Change::Setting {
                    key: "admin_secret_hash",
                    value: "h",
                },
            ],
            &[
                Change::Event {
                    plugin: "p",
                    time_ms: 5,
                    seq: 0,
                    json: &json,
                },
                Change::KvSet {
                    plugin: "q",
                    key: "c",
                    value: "3",
                },
            ],
            &[Change::KvSet {
                plugin: "p",
                key: "torn",
                value: "never acknowledged",
            }],
        ],
    );
    // The third record cut short, as a crash in the middle of its write leaves it.
    let log_path = log::path_for(&path);
    let mut bytes = std::fs::read(&log_path).unwrap();
    bytes[(ends[1] as usize + log::HEADER + 20)..ends[2] as usize].fill(0);
    std::fs::write(&log_path, &bytes).unwrap();

    for round in 0..2 {
        // The first open recovers; the second finds it all checkpointed.
        let store = open(&path);
        assert_eq!(stats(&store).replayed, [2, 0][round], "records replayed");
        let p = store.kv("p");
        assert_eq!(p.get("a").await.unwrap().as_deref(), Some("1"), "{round}");
        assert_eq!(p.get("b").await.unwrap().as_deref(), Some("22"));
        assert_eq!(p.get("old").await.unwrap(), None);
        assert_eq!(p.get("torn").await.unwrap(), None);
        assert_eq!(p.usage().await.unwrap(), 2 + 3);
        assert_eq!(store.kv("q").get("c").await.unwrap().as_deref(), Some("3"));
        assert_eq!(
            store.setting("admin_secret_hash").unwrap().as_deref(),
            Some("h")
        );
        let events = store
            .events(&EventQuery {
                plugin_id: Some("p".into()),
                page: 0,
                page_size: 10,
            })
            .await
            .unwrap();
        assert_eq!(kinds(&events), [("p", EventKind::Started, 5)]);
        within("close", store.close()).await.unwrap();
    }
}

#[tokio::test]
async fn replaying_a_record_again_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store.kv("p").set("y", "to delete").await.unwrap();
    within("close", store.close()).await.unwrap();
    let before = meta(&path);
    let json = event_json("p", 7);
    write_records(
        &path,
        &[&[
            Change::KvSet {
                plugin: "p",
                key: "x",
                value: "1",
            },
            Change::KvSet {
                plugin: "p",
                key: "x",
                value: "22",
            },
            Change::KvDelete {
                plugin: "p",
                key: "y",
            },
            Change::Event {
                plugin: "p",
                time_ms: 7,
                seq: 0,
                json: &json,
            },
        ]],
    );
    for round in 0..2 {
        let store = open(&path);
        assert_eq!(stats(&store).replayed, 1, "round {round}");
        let p = store.kv("p");
        assert_eq!(p.get("x").await.unwrap().as_deref(), Some("22"), "{round}");
        assert_eq!(p.get("y").await.unwrap(), None);
        assert_eq!(p.usage().await.unwrap(), 3, "usage after replay {round}");
        let all = EventQuery {
            plugin_id: None,
            page: 0,
            page_size: 10,
        };
        assert_eq!(store.events(&all).await.unwrap().len(), 1);
        within("close", store.close()).await.unwrap();
        // As if redb had made the replayed state durable but the checkpoint that followed had
        // not happened: the same record is replayed over a state that already has it.
        let [salt, base, applied, _] = before;
        set_meta(&path, [salt, base, applied, 1]);
    }
}

#[tokio::test]
async fn a_missing_log_is_refused_after_an_unclean_shutdown_only() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let log_path = log::path_for(&path);
    let store = open(&path);
    store.kv("p").set("k", "v").await.unwrap();
    within("close", store.close()).await.unwrap();
    // After a clean close the log holds nothing the database lacks.
    std::fs::remove_file(&log_path).unwrap();
    let store = open(&path);
    assert_eq!(store.kv("p").get("k").await.unwrap().as_deref(), Some("v"));
    within("close", store.close()).await.unwrap();

    let [salt, base, applied, _] = meta(&path);
    set_meta(&path, [salt, base, applied, 1]);
    std::fs::remove_file(&log_path).unwrap();
    let err = Store::open(&path, KvLimits::default()).expect_err("opened without its log");
    assert!(matches!(err, StoreError::LogMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&log_path.display().to_string()),
        "{err}"
    );
    // The way out the message offers: an empty log.
    std::fs::write(&log_path, b"").unwrap();
    let store = open(&path);
    assert_eq!(store.kv("p").get("k").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test]
async fn a_log_damaged_in_the_middle_is_refused_and_left_untouched() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    within("close", open(&path).close()).await.unwrap();
    let set = |key| Change::KvSet {
        plugin: "p",
        key,
        value: "value",
    };
    let ends = write_records(&path, &[&[set("one")], &[set("two")], &[set("three")]]);
    let log_path = log::path_for(&path);
    let mut bytes = std::fs::read(&log_path).unwrap();
    bytes[ends[0] as usize + log::HEADER + 3] ^= 0x20;
    std::fs::write(&log_path, &bytes).unwrap();

    let err = Store::open(&path, KvLimits::default()).expect_err("opened a damaged log");
    assert!(matches!(err, StoreError::LogCorrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(
        std::fs::read(&log_path).unwrap(),
        bytes,
        "the log was changed"
    );
    // The database was released: it can be opened again once the log is dealt with.
    std::fs::write(&log_path, b"").unwrap();
    within("close", open(&path).close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_holds_under_concurrent_writers() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    // 4 plugins, each with 64 concurrent writes of 10 bytes against a 320-byte quota, plus 64
    // concurrent rewrites of one key with values of different sizes: exactly 31 of the distinct
    // keys fit beside the shared key, whatever the interleaving, as long as every write sees the
    // usage left by the ones before it.
    let store = Store::open(&path, small_quota(320)).unwrap();
    let tasks: Vec<_> = (0..4)
        .flat_map(|p| {
            let store = store.clone();
            (0..64).flat_map(move |i| {
                let kv = store.kv(&format!("plugin{p}"));
                let shared = kv.clone();
                [
                    tokio::spawn(async move { kv.set(&format!("k{i:02}"), "1234567").await }),
                    tokio::spawn(async move { shared.set("shared", &"s".repeat(i % 4)).await }),
                ]
            })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        match within("a write", task).await.unwrap() {
            Ok(()) => {}
            Err(KvError::QuotaExceeded { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "the quota refused nothing");
    within("close", store.close()).await.unwrap();

    let store = Store::open(&path, small_quota(320)).unwrap();
    for p in 0..4 {
        let kv = store.kv(&format!("plugin{p}"));
        let keys = kv.list("", None, 1000).await.unwrap();
        let mut stored = 0;
        for key in &keys {
            stored += (key.len() + kv.get(key).await.unwrap().unwrap().len()) as u64;
        }
        let used = kv.usage().await.unwrap();
        assert_eq!(
            used, stored,
            "plugin{p}: usage does not match what is stored"
        );
        assert!(used <= 320, "plugin{p} stores {used} bytes, over its quota");
        // Every distinct key that fits was stored: no room is left for one more.
        assert!(used + 10 > 320 - 3, "plugin{p} stores only {used} bytes");
    }
}
