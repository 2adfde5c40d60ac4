//! `metamesh-bench load|echo|idle`: see the crate documentation and docs/performance.md.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use metamesh_bench::proto::Protocol;
use metamesh_bench::{echo, load};

#[derive(Parser)]
#[command(name = "metamesh-bench", about = "Load generator and echo backends")]
struct Cli {
    /// Worker threads of the runtime (the load generator and the echo backend each).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send load and print one JSON report on stdout.
    Load(load::LoadConfig),
    /// Serve echo backends; prints `{"event":"ready","listeners":[...]}` once bound.
    Echo {
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// Addresses to listen on (port 0 picks one); repeatable.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Open idle connections and report how much the resident memory of a process grew.
    Idle {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// How long to hold them before measuring.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        hold: Duration,
        #[arg(long, value_delimiter = ',', required = true)]
        measure_pid: Vec<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Load(cfg) => {
                let report = load::run(cfg).await?;
                println!("{}", serde_json::to_string(&report)?);
            }
            Cmd::Echo { protocol, listen } => {
                let bound = echo::bind(&listen).await?;
                let addrs: Vec<String> = bound.iter().map(|(_, a)| a.to_string()).collect();
                println!(
                    "{}",
                    serde_json::json!({"event": "ready", "protocol": protocol, "listeners": addrs})
                );
                let mut tasks = Vec::new();
                for (l, _) in bound {
                    tasks.push(tokio::spawn(echo::serve(l, protocol)));
                }
                for t in tasks {
                    t.await?;
                }
            }
            Cmd::Idle {
                target,
                connections,
                hold,
                measure_pid,
            } => {
                let r = load::idle(target, connections, hold, &measure_pid).await?;
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Ok(())
    })
}
