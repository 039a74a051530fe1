//! Helpers shared by Toru's tests, so that each lives in one place: whether a process is alive
//! and waiting for it to exit, a small seeded random generator with key mutation for fuzz-style
//! tests, the binaries of other workspace packages (built when missing), and what a notifying
//! test plugin was told.
//!
//! A dev-dependency only; never published.
//!
//! ```
//! use toru_test_support::{Mutation, Rng, mutate};
//!
//! let mut rng = Rng::new(7);
//! let key = "toru1.ed25519.v1.abc.def";
//! let changed = mutate(&mut rng, key, &Mutation::TEXT);
//! assert_ne!(changed, key);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The longest the waits here take before they fail the test, saying what they waited for.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits until process `pid` has exited (any process, not only a child), using a pidfd.
///
/// # Panics
/// When it still runs after [`WAIT`], or the pidfd cannot be opened or polled.
pub async fn wait_gone(pid: impl Into<u64>) {
    let pid = pid.into();
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return,
        Err(e) => panic!("pidfd_open({pid}): {e}"),
    };
    // The pidfd is an OwnedFd that AsyncFd owns until it drops it: nothing else can close it,
    // which is what the deprecation (and its `unsafe` replacement) is about.
    #[allow(deprecated)]
    let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
        .expect("pidfd is pollable");
    let _ready = tokio::time::timeout(WAIT, fd.readable())
        .await
        .unwrap_or_else(|_| panic!("process {pid} still runs"))
        .expect("pidfd readable");
}

/// What a notifying test plugin was told (`cancel <id>`, `ws_close <id> <code>`), one line per
/// connection to a Unix socket (`n.sock` in the folder given).
pub struct Notices {
    /// The socket the test plugin connects to (its `--notify=` argument).
    pub path: PathBuf,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Notices {
    /// Listens on `dir/n.sock`. Call it inside a tokio runtime.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub fn new(dir: &Path) -> Notices {
        use tokio::io::AsyncBufReadExt;
        let path = dir.join("n.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the notice socket");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = tx.send(line);
                    }
                });
            }
        });
        Notices { path, lines }
    }

    /// Waits for a line that starts with `prefix` and returns it.
    ///
    /// # Panics
    /// When none comes within [`WAIT`].
    pub async fn wait_prefix(&mut self, prefix: &str) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.starts_with(prefix) {
                    return line;
                }
            }
            panic!("the notice socket closed before {prefix:?}");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("the plugin was never told {prefix:?}..."))
    }
}

/// Whether a process with this pid exists and is not a zombie (Linux: reads `/proc`).
pub fn alive(pid: impl Into<u64>) -> bool {
    let pid = pid.into();
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the field after the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// xorshift64*: a small deterministic generator, so that a failing seed fails again.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed` (zero is replaced: xorshift never leaves zero).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (which must not be zero).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// How [`mutate`] changes a key.
#[derive(Debug, Clone, Copy)]
pub struct Mutation {
    /// The bytes inserted or written over others.
    pub alphabet: &'static [u8],
    /// Whether bytes outside ASCII may appear (a flipped high bit, a random byte); the result is
    /// then made UTF-8 lossily.
    pub binary: bool,
}

impl Mutation {
    /// Text edits: key characters and JSON and whitespace punctuation; stays ASCII.
    pub const TEXT: Mutation = Mutation {
        alphabet: b"ABCXYZabcxyz0189-_.=+/ \n\t\"",
        binary: false,
    };
    /// Any byte: adds JSON structure characters, high-bit flips and random bytes.
    pub const BINARY: Mutation = Mutation {
        alphabet: b"ABCXYZabcxyz0189-_.=+/ \n\t\"{}:,\\",
        binary: true,
    };
}

/// `key` with one to four random edits: a byte replaced, removed or inserted, the rest cut off,
/// a bit flipped, or (with [`Mutation::binary`]) a random byte inserted.
pub fn mutate(rng: &mut Rng, key: &str, how: &Mutation) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let (kinds, bits) = if how.binary { (6, 8) } else { (5, 7) };
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(kinds) {
            0 if at < bytes.len() => bytes[at] = how.alphabet[rng.below(how.alphabet.len())],
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, how.alphabet[rng.below(how.alphabet.len())]),
            3 => bytes.truncate(at),
            4 if at < bytes.len() => bytes[at] ^= 1 << rng.below(bits),
            _ if how.binary => bytes.insert(at, rng.next_u64() as u8),
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The binary `bin` of workspace package `package`, next to the running test's own binary
/// (`target/<profile>/deps/<test>` → `target/<profile>/<bin>`).
///
/// `cargo test --workspace` builds it before the tests run. When it is missing (`cargo test -p
/// toru-server` alone on a fresh checkout), it is built here with `$CARGO build -p <package>
/// --bin <bin>`, in the same target folder and profile. A binary that exists is used as it is:
/// after changing another package, run `cargo test --workspace` (or build it) to refresh it.
///
/// # Panics
/// When the build fails or leaves no binary.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    let _one_build_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        build(dir, package, bin);
    }
    assert!(
        path.exists(),
        "{} is missing after `cargo build -p {package} --bin {bin}`",
        path.display()
    );
    path
}

/// Builds `package`'s `bin` into `profile_dir` (`target/<profile>`).
fn build(profile_dir: &Path, package: &str, bin: &str) {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let target_dir = profile_dir.parent().expect("a target folder");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building {package} ({profile}) into {} for this test",
        target_dir.display()
    );
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .args(["--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed: {status}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u64::MAX));
    }

    #[test]
    fn the_generator_is_deterministic_and_below_stays_below() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(7) < 7);
            b.below(7);
        }
        assert_ne!(Rng::new(0).next_u64(), 0);
    }

    #[test]
    fn text_mutations_stay_ascii_and_binary_ones_need_not() {
        let mut rng = Rng::new(1);
        let key = "toru1.hmac.v1.eyJwbHVnaW4iOiJ3In0.c2ln";
        let mut changed = 0;
        let mut non_ascii = false;
        for _ in 0..2000 {
            let text = mutate(&mut rng, key, &Mutation::TEXT);
            assert!(text.is_ascii(), "{text:?}");
            changed += usize::from(text != key);
            non_ascii |= !mutate(&mut rng, key, &Mutation::BINARY).is_ascii();
        }
        assert!(changed > 1900, "{changed} of 2000 changed");
        assert!(non_ascii);
    }
}
