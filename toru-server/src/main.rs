//! `toru-server`: the HTTP shell around `toru-host`. The server arrives with its own issue.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("toru-server is not built yet; see the README for what works today")
}
