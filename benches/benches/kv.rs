//! Durable KV writes: 64 concurrent writers through `toru_host::store::Store` (group commit)
//! against one writer that commits one redb transaction per write, both with
//! `Durability::Immediate`, on the same file system in the same run. The store with a single
//! writer is measured too, to show its own cost per commit.
//!
//! Two key sets: `64_keys` (each writer rewrites one key of its own) and `64000_keys` (each
//! writer cycles through 1000 keys of its own, so a batch touches many pages). Every variant
//! writes the same sequence of keys.
//!
//! ```text
//! cargo bench -p toru-benches --bench kv -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Each iteration is one durable write; criterion reports writes per second as `thrpt`. After
//! criterion's figures, a paired comparison in alternating slices prints the ratio of the two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group};
use redb::{Database, Durability, TableDefinition};
use tempfile::TempDir;
use toru_host::store::{KvLimits, PluginKv, Store};

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

/// A plain redb database written one transaction per write.
struct Plain {
    _dir: TempDir,
    db: Database,
    value: String,
}

impl Plain {
    fn new() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let db = Database::create(dir.path().join("plain.redb")).expect("redb database");
        Plain {
            _dir: dir,
            db,
            value: value(),
        }
    }

    /// Write `j` of the sequence, committed durably on its own.
    fn write(&self, keys: Keys, j: u64) {
        let (w, i) = (j % WRITERS, j / WRITERS);
        let (plugin, key) = (Keys::plugin(w), keys.key(w, i));
        let mut txn = self.db.begin_write().expect("begin write");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        {
            let mut table = txn.open_table(TABLE).expect("open table");
            table
                .insert((plugin.as_str(), key.as_str()), self.value.as_str())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
}

/// A `Store` with one KV handle per plugin, and a runtime for its writers.
struct Through {
    _dir: TempDir,
    rt: tokio::runtime::Runtime,
    store: Store,
    kvs: Arc<Vec<PluginKv>>,
    value: Arc<str>,
}

impl Through {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(&dir.path().join("toru.redb"), KvLimits::default()).expect("store");
        let kvs = (0..PLUGINS).map(|p| store.kv(&Keys::plugin(p))).collect();
        Through {
            _dir: dir,
            rt,
            store,
            kvs: Arc::new(kvs),
            value: value().into(),
        }
    }

    /// Runs `writers` concurrent writers; writer `t` makes writes t, t + writers, ... of the
    /// sequence the single writer makes, while `go(j)` says so. Returns the writes made and the
    /// time taken.
    fn run(
        &self,
        keys: Keys,
        writers: u64,
        go: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> (u64, Duration) {
        let go = Arc::new(go);
        self.rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|t| {
                    let (kvs, value, go) = (self.kvs.clone(), self.value.clone(), go.clone());
                    tokio::spawn(async move {
                        let mut made = 0;
                        let mut j = t;
                        while go(j) {
                            let (w, i) = (j % WRITERS, j / WRITERS);
                            let kv = &kvs[(w % PLUGINS) as usize];
                            kv.set(&keys.key(w, i), &value).await.expect("durable set");
                            made += 1;
                            j += writers;
                        }
                        made
                    })
                })
                .collect();
            let mut made = 0;
            for task in tasks {
                made += task.await.expect("writer task");
            }
            (made, start.elapsed())
        })
    }

    fn close(self) {
        self.rt
            .block_on(self.store.close())
            .expect("close the store");
    }
}

fn through_store(g: &mut BenchmarkGroup<'_, WallTime>, keys: Keys, writers: u64) {
    let through = Through::new();
    let name = format!("{}/store_{writers}_writers", keys.name);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| through.run(keys, writers, move |j| j < iters).1);
    });
    through.close();
}

fn commit_per_write(g: &mut BenchmarkGroup<'_, WallTime>, keys: Keys) {
    let plain = Plain::new();
    let name = format!("{}/redb_commit_per_write_1_writer", keys.name);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for j in 0..iters {
                plain.write(keys, j);
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
        through_store(&mut g, keys, 1);
        through_store(&mut g, keys, WRITERS);
    }
    g.finish();
}

/// The disk's speed drifts when other work shares it, which skews a ratio of two figures
/// measured a minute apart. This compares the two in alternating half-second slices and
/// prints each slice's ratio and the median.
fn paired_ratio(keys: Keys, rounds: usize) {
    let (plain, through) = (Plain::new(), Through::new());
    let slice = Duration::from_millis(500);
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let start = Instant::now();
        let mut j = 0;
        while start.elapsed() < slice {
            plain.write(keys, j);
            j += 1;
        }
        let plain_rate = j as f64 / start.elapsed().as_secs_f64();
        let deadline = Instant::now() + slice;
        let (made, took) = through.run(keys, WRITERS, move |_| Instant::now() < deadline);
        let store_rate = made as f64 / took.as_secs_f64();
        let ratio = store_rate / plain_rate;
        println!(
            "paired {} round {round}: commit per write {plain_rate:.0}/s, store with {WRITERS} \
             writers {store_rate:.0}/s, ratio {ratio:.1}x",
            keys.name
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "paired {}: median ratio {:.1}x over {rounds} rounds",
        keys.name,
        ratios[rounds / 2]
    );
    through.close();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = durable_writes
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (which passes `--bench`), not in `cargo test --benches`.
    if std::env::args().any(|a| a == "--bench") {
        for keys in [HOT, SPREAD] {
            paired_ratio(keys, 5);
        }
    }
}
