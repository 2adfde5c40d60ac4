//! `kv-peer`: the kv server and client of `kv_protocol::peer` on the command line, for
//! trying `kv-proxy` by hand.
//!
//! ```text
//! kv-peer serve --name batch-1 --address 127.0.0.1:7701
//! kv-peer call --address 127.0.0.1:7700 -H method=get -H batchjob=true --body hello
//! kv-peer ping --address 127.0.0.1:7700
//! ```
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use kv_protocol::peer::{Client, Frame, Server};

#[derive(Parser)]
#[command(name = "kv-peer", version, about = "A kv server or client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer requests with their headers plus `served-by: NAME`, until interrupted.
    Serve {
        /// The name put in `served-by`.
        #[arg(long)]
        name: String,
        /// `ip:port` to listen on.
        #[arg(long)]
        address: String,
    },
    /// Send one request and print the answer.
    Call {
        /// `ip:port` of a kv server or proxy listener.
        #[arg(long)]
        address: String,
        /// A header as `key=value`; repeat for more.
        #[arg(short = 'H', long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The request body.
        #[arg(long, default_value = "")]
        body: String,
    },
    /// Send a ping and print the answer.
    Ping {
        /// `ip:port` of a kv server or proxy listener.
        #[arg(long)]
        address: String,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Prints a frame as `KIND id=N`, its headers one per line, then its body.
fn print(f: &Frame) {
    println!("{:?} id={}", f.kind, f.id);
    for (k, v) in &f.headers {
        println!("{k}: {v}");
    }
    if !f.body.is_empty() {
        println!();
        println!("{}", String::from_utf8_lossy(&f.body));
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { name, address } => {
            let server = Server::bind(name, &address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            println!("{{\"event\":\"ready\",\"address\":\"{}\"}}", server.addr());
            tokio::signal::ctrl_c()
                .await
                .context("cannot wait for Ctrl-C")?;
        }
        Command::Call {
            address,
            headers,
            body,
        } => {
            let mut client = Client::connect(&address)
                .await
                .with_context(|| format!("cannot connect to {address}"))?;
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            print(&client.call(&headers, body.as_bytes()).await?);
        }
        Command::Ping { address } => {
            let mut client = Client::connect(&address)
                .await
                .with_context(|| format!("cannot connect to {address}"))?;
            print(&client.ping().await?);
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}
