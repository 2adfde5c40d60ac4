//! The `kv-proxy` binary: starts from the shipped bootstrap file (with loopback
//! addresses of real kv servers put in), announces itself, serves kv, and stops cleanly;
//! `kv-peer` serves and calls through it as the guide shows.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kv_protocol::peer::{Client, Server, SERVED_BY};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A deadline for things that should take milliseconds; only reached when broken.
const PATIENCE: Duration = Duration::from_secs(30);

/// Writes `text` to a file of its own under the test's scratch directory.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kv-proxy-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

fn kv_proxy(config: &PathBuf) -> Child {
    spawn(
        Command::new(env!("CARGO_BIN_EXE_kv-proxy"))
            .arg("--config")
            .arg(config),
    )
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start a binary of this crate")
}

/// Reads stdout lines until the ready line, and returns it parsed.
async fn ready(lines: &mut Lines<BufReader<ChildStdout>>) -> serde_json::Value {
    let wait = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == "ready" {
                    return v;
                }
            }
        }
        panic!("closed stdout before it was ready");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("no ready line")
}

#[tokio::test]
async fn kv_proxy_serves_the_shipped_config() {
    let batch = [
        Server::bind("batch-1", "127.0.0.1:0").await.expect("bind"),
        Server::bind("batch-2", "127.0.0.1:0").await.expect("bind"),
    ];
    let mut user = spawn(Command::new(env!("CARGO_BIN_EXE_kv-peer")).args([
        "serve",
        "--name",
        "user-1",
        "--address",
        "127.0.0.1:0",
    ]));
    let mut user_lines = BufReader::new(user.stdout.take().expect("stdout")).lines();
    let user_ready = ready(&mut user_lines).await;
    let user_addr = user_ready["address"].as_str().expect("address").to_owned();
    let shipped = include_str!("../kv-proxy.yaml");
    let text = shipped
        .replace("127.0.0.1:7700", "127.0.0.1:0")
        .replace("127.0.0.1:15000", "127.0.0.1:0")
        .replace("127.0.0.1:7701", &batch[0].addr().to_string())
        .replace("127.0.0.1:7702", &batch[1].addr().to_string())
        .replace("127.0.0.1:7711", &user_addr);
    let config = config_file("shipped", &text);
    let mut child = kv_proxy(&config);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // Keep reading stderr so the proxy's log never fills the pipe and stalls it.
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let ready = ready(&mut lines).await;

    let protocols = ready["protocols"].as_array().expect("protocols");
    assert!(protocols.iter().any(|p| p == "kv"), "{ready}");
    assert!(protocols.iter().any(|p| p == "dubbo"), "{ready}");
    let addr = ready["listeners"]["kv-in"].as_str().expect("kv-in address");
    let mut client = Client::connect(addr).await.expect("connect");

    let reply = client
        .call(&[("method", "put"), ("batchjob", "true")], b"k=v")
        .await
        .expect("call");
    assert!(reply
        .header(SERVED_BY)
        .is_some_and(|s| s.starts_with("batch-")));
    assert_eq!(reply.header("x-tier"), Some("batch"));
    assert_eq!(reply.header("x-served-by"), Some("metamesh"));
    let reply = client.call(&[("method", "get")], b"k").await.expect("call");
    assert_eq!(reply.header(SERVED_BY), Some("user-1"));
    let reply = client.call(&[], b"").await.expect("call");
    assert_eq!(reply.header("reason"), Some("no_route"));
    assert_eq!(
        client.ping().await.expect("ping").kind,
        kv_protocol::Kind::Pong
    );
    drop(client);

    // The guide's command line client, through the proxy.
    let call = Command::new(env!("CARGO_BIN_EXE_kv-peer"))
        .args([
            "call",
            "--address",
            addr,
            "-H",
            "method=get",
            "-H",
            "batchjob=true",
        ])
        .args(["--body", "hello"])
        .output()
        .await
        .expect("kv-peer call");
    let out = String::from_utf8_lossy(&call.stdout);
    assert!(call.status.success(), "{out}");
    assert!(out.starts_with("Response id=1\n"), "{out}");
    assert!(out.contains("\nx-tier: batch\n"), "{out}");
    assert!(out.contains("\nx-served-by: metamesh\n"), "{out}");
    assert!(out.ends_with("\n\nhello\n"), "{out}");

    // SIGTERM: the proxy drains and exits successfully.
    let pid = child.id().expect("running");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("kv-proxy exits after SIGTERM")
        .expect("wait");
    let log = log.await.expect("stderr reader");
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("drained"), "{log}");
    let _ = std::fs::remove_file(config);
}

#[tokio::test]
async fn kv_proxy_names_a_bad_protocol_and_what_is_registered() {
    let text = include_str!("../kv-proxy.yaml").replace("protocol: kv ", "protocol: kvv ");
    let config = config_file("bad", &text);
    let mut child = kv_proxy(&config);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("read stderr");
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("kv-proxy exits")
        .expect("wait");
    assert!(!status.success());
    assert!(stderr.contains("listeners[kv-in].protocol"), "{stderr}");
    assert!(stderr.contains("unknown protocol \"kvv\""), "{stderr}");
    assert!(stderr.contains("kv"), "{stderr}");
    let _ = std::fs::remove_file(config);
}
