//! `relaychat-bench signaling` (placeholder while the TURN side is validated).

use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct SignalingCli {
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
}

#[derive(Serialize)]
pub struct SignalingReport {}

pub async fn run(_c: SignalingCli) -> anyhow::Result<SignalingReport> {
    anyhow::bail!("not yet")
}
