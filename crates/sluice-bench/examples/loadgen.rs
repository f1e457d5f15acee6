//! Stand-alone `sluice bench`: parses [`sluice_bench::BenchArgs`] and runs the load generator.
//!
//! `cargo run --release -p sluice-bench --example loadgen -- --endpoint http://127.0.0.1:4567 --create`

use clap::Parser;

#[derive(Parser)]
#[command(about = "Kinesis load generator (sluice bench)")]
struct Cli {
    #[command(flatten)]
    args: sluice_bench::BenchArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = sluice_bench::run_and_print(cli.args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
