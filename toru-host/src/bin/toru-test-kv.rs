//! A store writer for toru-host's crash tests: `toru-test-kv <database> <round>` opens the
//! store, prints `open`, then writes from 8 tasks until it is killed, printing one line per
//! write *after* the store acknowledged it:
//!
//! - `set <plugin> <key>` once `key` is set; its value is [`value_of`]`(key)`;
//! - `del? <plugin> <key>` before asking to delete `key`, and `del <plugin> <key>` once deleted.
//!
//! Keys are `r<round>-w<writer>-<i>-<value length>`, never written twice, so whoever reads the
//! lines knows what the store must hold after the kill. Each writer deletes its key of four
//! steps before, so the database stays small while the log sees a checkpoint every few hundred
//! writes (values average 16 KiB; the log is checkpointed at 8 MiB).

use std::path::PathBuf;

use toru_host::{KvLimits, Store};

/// Concurrent writers.
const WRITERS: u64 = 8;
/// The plugins they write to.
const PLUGINS: u64 = 3;

/// The value stored under `key`: the key repeated to the length its name ends with.
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(round)) = (args.next(), args.next()) else {
        eprintln!("usage: toru-test-kv <database> <round>");
        std::process::exit(2);
    };
    let store = Store::open(&PathBuf::from(path), KvLimits::default()).expect("open the store");
    println!("open");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let plugin = format!("p{}", w % PLUGINS);
            let kv = store.kv(&plugin);
            let round = round.clone();
            tokio::spawn(async move {
                let mut keys = std::collections::VecDeque::new();
                for i in 0u64.. {
                    let len = (i.wrapping_mul(2_654_435_761) ^ w.wrapping_mul(40_503)) % 32_769;
                    let key = format!("r{round}-w{w}-{i}-{len}");
                    kv.set(&key, &value_of(&key)).await.expect("set");
                    println!("set {plugin} {key}");
                    keys.push_back(key);
                    if keys.len() > 4 {
                        let doomed = keys.pop_front().expect("a key");
                        println!("del? {plugin} {doomed}");
                        assert!(
                            kv.delete(&doomed).await.expect("delete"),
                            "{doomed} was set"
                        );
                        println!("del {plugin} {doomed}");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
}
