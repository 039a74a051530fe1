//! Durable KV writes: 64 concurrent writers through `toru_host::store::Store` (group commit)
//! against one writer that commits one redb transaction per write, both with
//! `Durability::Immediate`, on the same file system in the same run.
//!
//! ```text
//! cargo bench -p toru-benches --bench kv
//! ```
//!
//! Each iteration is one durable write; criterion reports writes per second as `thrpt`.

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use redb::{Database, Durability, TableDefinition};
use tempfile::TempDir;
use toru_host::store::{KvLimits, Store};

/// Concurrent writers through the store.
const WRITERS: u64 = 64;
/// Plugins the writers are spread over.
const PLUGINS: u64 = 8;

/// The same layout as the store's `plugin_kv` table: (plugin id, key) -> value.
const TABLE: TableDefinition<'_, (&str, &str), &str> = TableDefinition::new("bench");

/// Which keys the writes go to: writer `w`'s `i`-th write sets `key(w, i)` in plugin
/// `w % PLUGINS`. Both sides write the same keys: the single writer takes the writers' writes
/// round-robin.
#[derive(Clone, Copy)]
struct Keys {
    name: &'static str,
    /// Distinct keys per writer; writes cycle through them.
    per_writer: u64,
}

impl Keys {
    fn plugin(w: u64) -> String {
        format!("plugin{}", w % PLUGINS)
    }

    fn key(self, w: u64, i: u64) -> String {
        format!("w{w:02}-{:04}", i % self.per_writer)
    }
}

/// Each writer rewrites one key of its own (a plugin updating its state).
const HOT: Keys = Keys {
    name: "64_keys",
    per_writer: 1,
};
/// Each writer cycles through 1000 keys of its own: 64,000 keys spread over the file.
const SPREAD: Keys = Keys {
    name: "64000_keys",
    per_writer: 1000,
};

fn value() -> String {
    "v".repeat(100)
}

fn group_commit(g: &mut BenchmarkGroup<'_, WallTime>, keys: Keys) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = TempDir::new().expect("temp dir");
    let store = Store::open(&dir.path().join("toru.redb"), KvLimits::default()).expect("store");
    let value = value();
    let name = format!("{}/store_group_commit_{WRITERS}_writers", keys.name);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        // Spread `iters` writes over the writers as evenly as possible.
                        let n = iters / WRITERS + u64::from(w < iters % WRITERS);
                        let kv = store.kv(&Keys::plugin(w));
                        let value = value.clone();
                        tokio::spawn(async move {
                            for i in 0..n {
                                kv.set(&keys.key(w, i), &value).await.expect("durable set");
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("writer task");
                }
                start.elapsed()
            })
        });
    });
    rt.block_on(store.close()).expect("close the store");
}

fn commit_per_write(g: &mut BenchmarkGroup<'_, WallTime>, keys: Keys) {
    let dir = TempDir::new().expect("temp dir");
    let db = Database::create(dir.path().join("plain.redb")).expect("redb database");
    let value = value();
    let name = format!("{}/redb_commit_per_write_1_writer", keys.name);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for j in 0..iters {
                let (w, i) = (j % WRITERS, j / WRITERS);
                let (plugin, key) = (Keys::plugin(w), keys.key(w, i));
                let mut txn = db.begin_write().expect("begin write");
                txn.set_durability(Durability::Immediate)
                    .expect("durability");
                {
                    let mut table = txn.open_table(TABLE).expect("open table");
                    table
                        .insert((plugin.as_str(), key.as_str()), value.as_str())
                        .expect("insert");
                }
                txn.commit().expect("commit");
            }
            start.elapsed()
        });
    });
}

fn durable_writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv_durable_writes");
    g.throughput(Throughput::Elements(1));
    for keys in [HOT, SPREAD] {
        commit_per_write(&mut g, keys);
        group_commit(&mut g, keys);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = durable_writes
}
criterion_main!(benches);
