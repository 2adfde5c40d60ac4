//! Debian's nginx as an HTTP/1.1 upstream and curl as the client, both installed by
//! `scripts/setup-test-deps.sh`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_ports, Spawned, TempDir};

/// How long curl may take by default.
pub const CURL_MAX_TIME: Duration = Duration::from_secs(120);

fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is missing: run scripts/setup-test-deps.sh once to install nginx-light");
}

/// True when the child `pid` has exited (it is a zombie until reaped, or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// One nginx process running in the foreground from a temporary directory; stopped (with
/// its workers) on drop, and the directory removed.
pub struct Nginx {
    _proc: Spawned,
    dir: TempDir,
    /// The loopback ports its servers listen on.
    pub ports: Vec<u16>,
}

impl Nginx {
    /// Starts nginx in a fresh temporary directory named after `stem`, holding `tmp` and
    /// the subdirectories `dirs`, and waits until each of `ports` free loopback ports
    /// accepts connections. `http(ports, dir)` gives the directives of the `http` block
    /// that follow the common ones (no access log, temporary files under `dir/tmp`):
    /// a `server` listening on each port and whatever they need.
    pub fn start(
        stem: &str,
        dirs: &[&str],
        ports: usize,
        http: impl Fn(&[u16], &Path) -> String,
    ) -> Nginx {
        let dir = TempDir::new(stem);
        for sub in dirs.iter().copied().chain(["tmp"]) {
            std::fs::create_dir_all(dir.0.join(sub)).expect("mkdir");
        }
        // A port can be taken between choosing it and nginx binding it: try again then.
        for _ in 0..5 {
            let ports = free_ports(ports);
            let d = dir.0.display();
            let conf = format!(
                r#"
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
user root;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{}
}}
"#,
                http(&ports, &dir.0)
            );
            let conf_path = dir.0.join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut cmd = Command::new(nginx_bin());
            cmd.arg("-e")
                .arg("stderr")
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&conf_path);
            let proc = Spawned::start("nginx", cmd);
            let deadline = Instant::now() + Duration::from_secs(20);
            let up = loop {
                if ports
                    .iter()
                    .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                {
                    break true;
                }
                if exited(proc.pid()) || Instant::now() > deadline {
                    break false;
                }
                thread::sleep(Duration::from_millis(20));
            };
            if up {
                return Nginx {
                    _proc: proc,
                    dir,
                    ports,
                };
            }
            eprintln!("nginx did not come up, retrying: {}", proc.stderr());
        }
        panic!("nginx failed to start five times");
    }

    /// The directory nginx runs from.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Nginx {
    /// Asks nginx to stop first (SIGTERM: the master stops its workers, then exits); the
    /// process guard's SIGKILL alone would leave the workers running, holding the ports.
    fn drop(&mut self) {
        let pid = self._proc.pid();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !exited(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs `curl -sS` with `args`, giving up after [`CURL_MAX_TIME`]; fails unless curl
/// succeeds.
pub fn curl(args: &[&str]) -> Output {
    curl_within(CURL_MAX_TIME, args)
}

/// [`curl`], giving up after `max_time` (whole seconds).
pub fn curl_within(max_time: Duration, args: &[&str]) -> Output {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", &max_time.as_secs().to_string()])
        .args(args)
        .output()
        .expect("curl is missing: run scripts/setup-test-deps.sh");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs curl with `-i` and splits the answer into status, lower-cased headers and body.
pub fn curl_i(url: &str, extra: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let mut args = vec!["-i"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The first value of header `name` (lower case) in `headers` from [`curl_i`].
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
