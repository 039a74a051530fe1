//! Every plugin process is started from one thread that lives as long as this process.
//!
//! A plugin asks the kernel for SIGKILL when its parent dies (see `child.rs`), and Linux ties
//! that parent-death signal to the *thread* that forked it, not to the process. Tokio ends
//! threads while the process runs on: an idle blocking-pool thread after `thread_keep_alive`
//! (10 s by default), and a worker thread that ran `block_in_place` becomes one of those. A plugin
//! forked from such a thread was killed seconds after it started, for no reason it could see. The
//! host does not own the application's runtime, so it does not configure its way around that:
//! it forks from a thread of its own that never ends. The caller waits for the fork and exec as
//! it would have waited doing them itself.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, SyncSender, channel, sync_channel};

use tokio::process::{Child, Command};

/// A command to start, the runtime that will watch the child, and where to answer.
struct Job {
    command: Command,
    runtime: tokio::runtime::Handle,
    answer: SyncSender<io::Result<Child>>,
}

/// The spawner thread's queue; the thread starts with the first job.
fn queue() -> io::Result<&'static Sender<Job>> {
    static QUEUE: OnceLock<Sender<Job>> = OnceLock::new();
    if let Some(queue) = QUEUE.get() {
        return Ok(queue);
    }
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("toru-spawner".into())
        .spawn(move || {
            for mut job in rx {
                // The child is registered with the caller's runtime, which reaps it.
                let _runtime = job.runtime.enter();
                let _ = job.answer.send(job.command.spawn());
            }
        })?;
    // Two first callers at once start two threads; the one whose queue is not kept sees its
    // sender dropped and ends at once.
    Ok(QUEUE.get_or_init(|| tx))
}

/// Starts `command` from the spawner thread, in the current Tokio runtime (like
/// [`Command::spawn`], which it calls there). Blocks for as long as the fork and exec take.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let (answer, reply) = sync_channel(1);
    let gone = || io::Error::other("the thread that starts plugin processes has ended");
    queue()?
        .send(Job {
            command,
            runtime,
            answer,
        })
        .map_err(|_| gone())?;
    reply.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::process::child::{ChildSetup, configure};

    /// A child set up to die with its parent, started by a thread that then ends, still
    /// answers: the thread that forked it is the spawner, not the one that asked.
    #[tokio::test(flavor = "current_thread")]
    async fn a_child_outlives_the_thread_that_asked_for_it() {
        let runtime = tokio::runtime::Handle::current();
        let (mut child, asker) = std::thread::spawn(move || {
            let _runtime = runtime.enter();
            let mut command = Command::new("/bin/sh");
            command
                .args(["-c", "read line; echo \"$line\""])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            configure(&mut command, ChildSetup::default());
            (spawn(command).unwrap(), rustix::thread::gettid())
        })
        .join()
        .unwrap();
        // The kernel sends the parent-death signal before it removes the thread's entry.
        let task = format!("/proc/self/task/{}", asker.as_raw_nonzero());
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::path::Path::new(&task).exists() {
            assert!(Instant::now() < deadline, "the asking thread never ended");
            tokio::task::yield_now().await;
        }
        // A SIGKILL sent by now would end the child before it could answer.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"alive\n").await.unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
            .await
            .expect("the child answers")
            .unwrap();
        assert_eq!(
            line, "alive\n",
            "the child died with the thread that asked for it"
        );
        child.wait().await.unwrap();
    }
}
