//! `toru-server demo`: builds the Rust example plugin, installs it and the Python one in
//! `./demo/plugins`, and serves them, enabled, with a fresh admin secret printed.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::cli::ServerArgs;
use crate::serve::{Extras, serve};

const RUST_PACKAGE: &str = "hello-plugin-rust";
const PYTHON_PLUGIN: &str = "examples/hello-plugin-python/hello-plugin-python.binary";
/// The Python SDK, which the Python example imports from its own folder.
const PYTHON_SDK: &str = "examples/hello-plugin-python/toru_plugin.py";

pub(crate) async fn demo(mut args: ServerArgs) -> anyhow::Result<()> {
    let root = workspace_root()?;
    println!("building the example plugins in {} ...", root.display());
    let rust = tokio::task::spawn_blocking({
        let root = root.clone();
        move || build_rust_example(&root)
    })
    .await
    .context("the build task failed")??;

    let demo = PathBuf::from("demo");
    let plugins = demo.join("plugins");
    std::fs::create_dir_all(&plugins)
        .with_context(|| format!("cannot create {}", plugins.display()))?;
    install(&rust, &plugins.join("hello-rust.binary"))?;
    install(
        &root.join(PYTHON_PLUGIN),
        &plugins.join("hello-python.binary"),
    )?;
    install(&root.join(PYTHON_SDK), &plugins.join("toru_plugin.py"))?;
    println!(
        "installed hello-rust and hello-python in {}",
        plugins.display()
    );

    args.plugins_dir = plugins;
    args.data_dir = demo.join("data");
    args.log_dir = Some(demo.join("logs"));
    let extras = Extras {
        enable: vec!["hello-rust".into(), "hello-python".into()],
        fresh_secret: true,
    };
    serve(&args, extras).await
}

/// The source tree: the current folder when it holds the examples, else the tree this binary
/// was built from.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let here = std::env::current_dir().context("cannot read the current folder")?;
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = [here, built_from]
        .into_iter()
        .find(|dir| dir.join(PYTHON_PLUGIN).is_file())
        .context("cannot find the example plugins; run the demo from the Toru source tree")?;
    Ok(root.canonicalize().unwrap_or(root))
}

/// Runs `cargo build -p hello-plugin-rust --release` and returns the executable's path.
fn build_rust_example(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["build", "-p", RUST_PACKAGE, "--release"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    let stdout = child.stdout.take().context("no cargo output")?;
    let mut executable = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == RUST_PACKAGE
            && let Some(exe) = msg["executable"].as_str()
        {
            executable = Some(PathBuf::from(exe));
        }
    }
    let status = child.wait().context("cannot wait for cargo")?;
    if !status.success() {
        bail!("`cargo build -p {RUST_PACKAGE} --release` failed ({status})");
    }
    executable.context("cargo built no hello-plugin-rust executable")
}

/// Copies `from` to `to` as an executable, replacing it in one step.
fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot install {}", to.display()))
}
