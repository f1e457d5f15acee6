//! Runs the simulator on its own, as `sluice simulate` would: `cargo run -p sluice-simulate --example
//! simulate -- --fast`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "The sluice feed simulator")]
struct Cli {
    #[command(flatten)]
    args: sluice_simulate::SimulateArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_simulate::run(Cli::parse().args).await
}
