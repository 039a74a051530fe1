//! No plugin process, nor anything a plugin started, outlives a host killed with SIGKILL.

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use crate::util::*;

#[tokio::test]
async fn a_host_killed_with_sigkill_leaves_no_plugin_or_grandchild() {
    let env = Env::new();
    env.install_test_plugin("spawn-child", "parent");
    env.install_python_example();
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_toru-test-host"))
        .arg(env.dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the test host did not get its plugins running")
        .unwrap()
        .expect("the test host exited early");
    let mut pids: Vec<u32> = line
        .strip_prefix("ready ")
        .unwrap()
        .split(' ')
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    pids.push(grandchild_pid(&env, "parent"));
    for pid in &pids {
        assert!(alive(*pid));
    }
    host.start_kill().unwrap();
    host.wait().await.unwrap();
    for pid in pids {
        wait_gone(pid).await;
    }
}
