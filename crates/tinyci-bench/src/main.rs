//! `tinyci-bench`: measures tinyci's figures beside their baselines in the same run and prints
//! both and their ratio. Benchmarks, not tests: nothing here asserts a time; goals are
//! reported as met or missed. BENCHMARKS.md records results and how to reproduce them.
//!
//! Owns only measurement. It drives the real product (sites, sessions, queues, runners) through
//! the same crates `tinyci` uses; no product crate may depend on it.

mod abuse;
mod dispatch;
mod fixture;
mod grants;
mod history;
mod logs;
mod measure;
mod overhead;
mod pg;
mod report;
mod rpc;
mod scale;
mod site_process;
mod tonic_baseline;

use clap::{Parser, Subcommand};

use report::Figure;

/// Measures tinyci against its baselines: tonic gRPC, PostgreSQL SKIP LOCKED, raw rustls.
#[derive(Debug, Parser)]
#[command(name = "tinyci-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Shorter runs (fewer iterations and runners): a smoke check of the harness, not figures
    /// to record.
    #[arg(long, global = true)]
    quick: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every benchmark below, in order.
    All(dispatch::PostgresArgs),
    /// A trivial capability call over mTLS against tonic gRPC unary calls.
    Rpc,
    /// Durable submit → lease → complete cycles against a PostgreSQL SKIP LOCKED queue.
    Dispatch(dispatch::PostgresArgs),
    /// Log streaming runner → site with a live follower, against a raw rustls stream copy.
    Logs,
    /// Submit → finished for a one-command job through a site and a runner, against the
    /// bare executor; and submit → first log byte at a follower.
    Overhead,
    /// Grant redemption latency and the per-call cost of a session-obtained capability.
    Grants,
    /// 1,000 and 5,000 idle runners: site memory per connection, submission-to-lease latency.
    Scale,
    /// A client pipelining calls it never reads the replies of, and 1,000 slow HTTP clients:
    /// what the site holds for them, and whether it still answers others.
    Abuse,
    /// The front page, a run page and `admin runs` (filtered and not) at 1,000, 100,000 and
    /// 1,000,000 stored runs.
    History,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = Options { quick: cli.quick };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut figures: Vec<Figure> = Vec::new();
        match cli.command {
            Command::All(postgres) => {
                figures.extend(rpc::run(&options).await?);
                figures.extend(dispatch::run(&options, &postgres).await?);
                figures.extend(logs::run(&options).await?);
                figures.extend(overhead::run(&options).await?);
                figures.extend(grants::run(&options).await?);
                figures.extend(scale::run(&options).await?);
                figures.extend(abuse::run(&options).await?);
                figures.extend(history::run(&options).await?);
            }
            Command::Rpc => figures.extend(rpc::run(&options).await?),
            Command::Dispatch(postgres) => {
                figures.extend(dispatch::run(&options, &postgres).await?)
            }
            Command::Logs => figures.extend(logs::run(&options).await?),
            Command::Overhead => figures.extend(overhead::run(&options).await?),
            Command::Grants => figures.extend(grants::run(&options).await?),
            Command::Scale => figures.extend(scale::run(&options).await?),
            Command::Abuse => figures.extend(abuse::run(&options).await?),
            Command::History => figures.extend(history::run(&options).await?),
        }
        println!();
        println!("== summary");
        report::print(&figures);
        anyhow::Ok(())
    })
}

/// Settings every benchmark shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) quick: bool,
}
