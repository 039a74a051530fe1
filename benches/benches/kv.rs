//! Durable KV writes through `toru_host::Store` against plain redb committing one
//! `Durability::Immediate` transaction per write, on the same file system in the same run.
//!
//! Both sides are durable when a write returns, write the same keys with the same 100-byte
//! values, and start from a keyspace that already holds every key of the set (so every write
//! replaces a value, and the 64,000-key set really is spread over the whole file):
//!
//! - `64_keys`: each of 64 writers rewrites one key of its own (a plugin updating its state);
//! - `64000_keys`: each of 64 writers cycles through 1000 keys of its own, so a batch touches
//!   many pages.
//!
//! Variants: `redb_commit_per_write_1_writer` (the baseline), `store_1_writer` (one task writing
//! in a loop: the lone write's cost) and `store_64_writers` (64 tasks: group commit).
//!
//! ```text
//! cargo bench -p toru-benches --bench kv -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Criterion reports writes per second as `thrpt`. The disk's speed drifts a lot when other work
//! shares it (here, `fsync` takes anywhere from 0.1 to 5 ms: on the development VM an
//! `fdatasync` issued while the machine is otherwise idle takes a whole 4 ms timer tick, and
//! about 0.1 ms while another thread keeps a CPU busy, so figures swing between two regimes),
//! which makes a ratio of two figures measured a minute apart meaningless; so after criterion's figures, a paired comparison runs
//! the three variants in alternating slices (`TORU_KV_ROUNDS` rounds of three slices of
//! `TORU_KV_SLICE_MS` each, default 20 of 250 ms; 0 rounds to skip) and prints each round's
//! ratios, their medians, the ratios of all the rounds' writes together, and the latency of
//! single writes (p50, p99, max) of each variant. Those paired figures are the ones to quote.
//!
//! The files go to the system's temp dir, or to `TORU_KV_DIR`: on a tmpfs
//! (`TORU_KV_DIR=/dev/shm`) `fdatasync` costs nothing, which shows what each side costs besides
//! the disk.
//!
//! What the measurements below found (the store before the write-ahead log):
//!
//! - A lone durable redb commit writes about 9 pages with one `pwrite` each, then one
//!   `fdatasync`. The store added the usage table's page to that, and two thread hand-offs (to
//!   the writer thread and back to the caller's task): on a tmpfs, where `fdatasync` costs
//!   nothing, 34 µs a write against redb's 24 µs.
//! - With 64,000 keys a group commit of 64 writes wrote about 70 scattered pages before its
//!   `fdatasync`, and the `fdatasync` took as long as writing them.
//!
//! Now a lone write costs one redb transaction committed without `fsync`, one `pwrite` of its
//! log record and one `fdatasync` (13 µs on a tmpfs), and a group of 64 writes one record of
//! about 8 KiB, whatever the keyspace; the pages are written at checkpoints.
//!
//! Where the time goes, with the commands used:
//!
//! ```text
//! # syscalls per commit, and how long fdatasync takes (wall clock)
//! strace -f -w -c -e trace=pwrite64,fdatasync,futex -o /tmp/kv.strace \
//!     target/release/deps/kv-<hash> --bench 64000_keys/store_64 --measurement-time 3
//! # CPU profile (no hardware counters in the VM: use the cpu-clock software event)
//! perf record -e cpu-clock -g -o /tmp/kv.perf \
//!     target/release/deps/kv-<hash> --bench 64000_keys/store_1 --measurement-time 3
//! perf report -i /tmp/kv.perf --no-children --stdio | head -60
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group};
use redb::{Database, Durability, TableDefinition};
use tempfile::TempDir;
use toru_host::{KvLimits, PluginKv, Store};

/// Concurrent writers through the store.
const WRITERS: u64 = 64;
/// Plugins the writers are spread over.
const PLUGINS: u64 = 8;
/// One slice of the paired comparison, unless `TORU_KV_SLICE_MS` says otherwise.
const SLICE: Duration = Duration::from_millis(250);
/// Rounds of the paired comparison, unless `TORU_KV_ROUNDS` says otherwise.
const ROUNDS: usize = 20;

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

    /// Write `j` of the sequence: (writer, plugin, key).
    fn nth(self, j: u64) -> (u64, String, String) {
        let (w, i) = (j % WRITERS, j / WRITERS);
        (w, Self::plugin(w), self.key(w, i))
    }

    fn total(self) -> u64 {
        WRITERS * self.per_writer
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

/// A temp dir in `TORU_KV_DIR` if set (to compare file systems), else in the system's.
fn temp_dir() -> TempDir {
    match std::env::var_os("TORU_KV_DIR") {
        Some(dir) => TempDir::new_in(dir),
        None => TempDir::new(),
    }
    .expect("temp dir")
}

fn value() -> String {
    "v".repeat(100)
}

/// A plain redb database written one durable transaction per write.
struct Plain {
    _dir: TempDir,
    db: Database,
    keys: Keys,
    value: String,
    next: u64,
}

impl Plain {
    /// A database already holding every key of `keys`.
    fn new(keys: Keys) -> Self {
        let dir = temp_dir();
        let db = Database::create(dir.path().join("plain.redb")).expect("redb database");
        let value = value();
        let txn = db.begin_write().expect("begin write");
        {
            let mut table = txn.open_table(TABLE).expect("open table");
            for j in 0..keys.total() {
                let (_, plugin, key) = keys.nth(j);
                table
                    .insert((plugin.as_str(), key.as_str()), value.as_str())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit the prefill");
        Plain {
            _dir: dir,
            db,
            keys,
            value,
            next: 0,
        }
    }

    /// The next write of the sequence, committed durably on its own.
    fn write(&mut self) {
        let (_, plugin, key) = self.keys.nth(self.next);
        self.next += 1;
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

    /// Writes for `slice`; returns the writes per second and each write's latency.
    fn run_for(&mut self, slice: Duration) -> (f64, Vec<Duration>) {
        let start = Instant::now();
        let mut latencies = Vec::new();
        while start.elapsed() < slice {
            let t = Instant::now();
            self.write();
            latencies.push(t.elapsed());
        }
        (
            latencies.len() as f64 / start.elapsed().as_secs_f64(),
            latencies,
        )
    }
}

/// A `Store` with one KV handle per plugin, and a runtime for its writers.
struct Through {
    _dir: TempDir,
    rt: tokio::runtime::Runtime,
    store: Store,
    kvs: Arc<Vec<PluginKv>>,
    value: Arc<str>,
    keys: Keys,
    /// Where in the sequence the next run starts, so runs keep moving through the keys.
    next: u64,
}

impl Through {
    /// A store already holding every key of `keys`, written through the store itself.
    fn new(keys: Keys) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = temp_dir();
        let store = Store::open(&dir.path().join("toru.redb"), KvLimits::default()).expect("store");
        let kvs = (0..PLUGINS).map(|p| store.kv(&Keys::plugin(p))).collect();
        let mut through = Through {
            _dir: dir,
            rt,
            store,
            kvs: Arc::new(kvs),
            value: value().into(),
            keys,
            next: 0,
        };
        let total = keys.total();
        through.run(WRITERS, move |j| j < total);
        through
    }

    /// Runs `writers` concurrent writers; writer `t` makes writes t, t + writers, ... of the
    /// sequence (counted from this run's start) while `go(j)` says so. Returns the writes made,
    /// the time taken and each write's latency.
    fn run(
        &mut self,
        writers: u64,
        go: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> (u64, Duration, Vec<Duration>) {
        let go = Arc::new(go);
        let (keys, base) = (self.keys, self.next);
        let (made, took, latencies) = self.rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|t| {
                    let (kvs, value, go) = (self.kvs.clone(), self.value.clone(), go.clone());
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        let mut j = t;
                        while go(j) {
                            let (w, _, key) = keys.nth(base + j);
                            let kv = &kvs[(w % PLUGINS) as usize];
                            let t = Instant::now();
                            kv.set(&key, &value).await.expect("durable set");
                            latencies.push(t.elapsed());
                            j += writers;
                        }
                        (j / writers, latencies)
                    })
                })
                .collect();
            let mut made = 0;
            let mut latencies = Vec::new();
            for task in tasks {
                let (n, l) = task.await.expect("writer task");
                made += n;
                latencies.extend(l);
            }
            (made, start.elapsed(), latencies)
        });
        self.next += made;
        (made, took, latencies)
    }

    /// Writes with `writers` writers for `slice`; returns the writes per second and each
    /// write's latency.
    fn run_for(&mut self, writers: u64, slice: Duration) -> (f64, Vec<Duration>) {
        let deadline = Instant::now() + slice;
        let (made, took, latencies) = self.run(writers, move |_| Instant::now() < deadline);
        (made as f64 / took.as_secs_f64(), latencies)
    }

    fn close(self) {
        self.rt
            .block_on(self.store.close())
            .expect("close the store");
    }
}

fn through_store(g: &mut BenchmarkGroup<'_, WallTime>, through: &mut Through, writers: u64) {
    let name = format!(
        "{}/store_{writers}_writer{}",
        through.keys.name,
        plural(writers)
    );
    g.bench_function(name, |b| {
        b.iter_custom(|iters| through.run(writers, move |j| j < iters).1);
    });
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn commit_per_write(g: &mut BenchmarkGroup<'_, WallTime>, plain: &mut Plain) {
    let name = format!("{}/redb_commit_per_write_1_writer", plain.keys.name);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                plain.write();
            }
            start.elapsed()
        });
    });
}

/// The paired comparison's results for one key set.
#[derive(Default)]
struct Paired {
    /// Per round: the store with 64 writers, then with one, against commit-per-write.
    many: Vec<f64>,
    lone: Vec<f64>,
    /// Over all rounds: writes made and time taken by commit-per-write, 1 writer, 64 writers.
    totals: [(f64, f64); 3],
    latency: [Vec<Duration>; 3],
}

/// Runs commit-per-write, the store with one writer and the store with 64 writers in
/// alternating slices (rotating which goes first), and prints each round's ratios.
fn paired(plain: &mut Plain, through: &mut Through, rounds: usize, slice: Duration) -> Paired {
    let name = plain.keys.name;
    let mut out = Paired::default();
    for round in 0..rounds {
        let mut rates = [0.0; 3];
        for step in 0..3 {
            let variant = (round + step) % 3;
            let start = Instant::now();
            let (rate, latencies) = match variant {
                0 => plain.run_for(slice),
                1 => through.run_for(1, slice),
                _ => through.run_for(WRITERS, slice),
            };
            rates[variant] = rate;
            let took = start.elapsed().as_secs_f64();
            out.totals[variant].0 += rate * took;
            out.totals[variant].1 += took;
            out.latency[variant].extend(latencies);
        }
        let [plain_rate, lone_rate, many_rate] = rates;
        let (many, lone) = (many_rate / plain_rate, lone_rate / plain_rate);
        println!(
            "paired {name} round {round}: commit per write {plain_rate:.0}/s, store 1 writer \
             {lone_rate:.0}/s ({lone:.2}x), store {WRITERS} writers {many_rate:.0}/s ({many:.1}x)"
        );
        out.many.push(many);
        out.lone.push(lone);
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn durable_writes(c: &mut Criterion) {
    let rounds = env("TORU_KV_ROUNDS").unwrap_or(ROUNDS);
    let slice = env("TORU_KV_SLICE_MS").map_or(SLICE, Duration::from_millis);
    // Only under `cargo bench` (which passes `--bench`), not in `cargo test --benches`.
    let paired_too = rounds > 0 && std::env::args().any(|a| a == "--bench");
    let mut summary = Vec::new();
    for keys in [HOT, SPREAD] {
        let mut plain = Plain::new(keys);
        let mut through = Through::new(keys);
        let mut g = c.benchmark_group("kv_durable_writes");
        g.throughput(Throughput::Elements(1));
        commit_per_write(&mut g, &mut plain);
        through_store(&mut g, &mut through, 1);
        through_store(&mut g, &mut through, WRITERS);
        g.finish();
        if paired_too {
            summary.push((keys.name, paired(&mut plain, &mut through, rounds, slice)));
        }
        through.close();
    }
    for (name, mut p) in summary {
        let rate = |(writes, secs): (f64, f64)| writes / secs;
        let [plain, lone, many] = p.totals.map(rate);
        println!(
            "paired {name}, {} rounds of {slice:?}: store {WRITERS} writers {:.1}x commit per \
             write (median of rounds; {:.1}x over all: {many:.0}/s against {plain:.0}/s), \
             store 1 writer {:.2}x (median; {:.2}x over all: {lone:.0}/s)",
            p.many.len(),
            median(&mut p.many),
            many / plain,
            median(&mut p.lone),
            lone / plain,
        );
        let names = [
            "redb commit per write",
            "store, 1 writer",
            "store, 64 writers",
        ];
        for (what, latencies) in names.into_iter().zip(&mut p.latency) {
            println!(
                "paired {name}: one write's latency, {what}: p50 {:?}, p99 {:?}, max {:?}",
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
                percentile(latencies, 1.0),
            );
        }
    }
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
}
