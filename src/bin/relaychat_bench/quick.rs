//! `relaychat-bench quick` (placeholder).

use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct QuickCli {}

#[derive(Serialize)]
pub struct QuickReport {}

pub async fn run(_c: QuickCli, _threads: usize) -> anyhow::Result<QuickReport> {
    anyhow::bail!("not yet")
}
