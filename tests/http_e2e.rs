//! End-to-end HTTP/1.1 tests: curl as the client, the `metamesh proxy` binary, and Debian's
//! nginx as the servers (two groups), all on loopback. Covers routing by header and by
//! path, header mutation both ways, local replies, keep-alive reuse on both sides, and
//! 50 MiB chunked uploads and downloads streamed with flat proxy memory.
//!
//! nginx and curl are installed by `scripts/setup-test-deps.sh`.

mod common;

use std::path::Path;

use common::nginx::{curl, curl_i, header, Nginx};
use common::{peak_rss_kib, Proxy};

fn server_block(group: &str, port: u16, root: &Path) -> String {
    let root = root.display();
    format!(
        r#"
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 10000;
        client_max_body_size 0;
        add_header x-group {group} always;
        location / {{
            return 200 "group={group} method=$request_method uri=$request_uri tier=$http_x_tier conn=$connection\n";
        }}
        location /files/ {{
            root {root}/{group};
            dav_methods PUT;
            create_full_put_path on;
        }}
        location /chunked/ {{
            root {root}/{group};
            sub_filter_types *;
            sub_filter_once on;
            sub_filter '@@never-present@@' 'x';
        }}
    }}"#
    )
}

/// Two nginx servers (groups `a` and `b`, on `ports[0]` and `ports[1]`) in one nginx
/// process, each with its own root under `dir()/<group>`.
fn start_nginx() -> Nginx {
    Nginx::start(
        "nginx",
        &["a/files", "b/files", "a/chunked", "b/chunked"],
        2,
        |ports, dir| {
            format!(
                "    default_type application/octet-stream;\n{}\n{}",
                server_block("a", ports[0], dir),
                server_block("b", ports[1], dir)
            )
        },
    )
}

fn proxy_for(nginx: &Nginx) -> Proxy {
    let [a, b] = [nginx.ports[0], nginx.ports[1]];
    let yaml = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: web, address: 127.0.0.1:0, protocol: http, route_config: web }}
routes:
  - name: web
    routes:
      - name: by-header
        match: {{ attributes: {{ x-group: {{ exact: b }} }} }}
        route: [{{ cluster: b }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
        response_mutation: [{{ key: x-served-by, value: metamesh }}]
      - name: by-path
        match: {{ attributes: {{ ":path": {{ prefix: /b/ }} }} }}
        route: [{{ cluster: b }}]
      - name: dead
        match: {{ attributes: {{ ":path": {{ prefix: /dead }} }} }}
        route: [{{ cluster: dead }}]
      - name: default
        match: {{ attributes: {{ x-nowhere: {{ present: false }} }} }}
        route: [{{ cluster: a }}]
        response_mutation: [{{ key: x-served-by, value: metamesh }}]
clusters:
  - {{ name: a, endpoints: [{{ address: "127.0.0.1:{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "127.0.0.1:{b}" }}] }}
  - {{ name: dead, connect_timeout: 300ms, endpoints: [{{ address: "127.0.0.1:{closed}" }}] }}
"#,
        closed = common::closed_port()
    );
    Proxy::start(&yaml, &[])
}

#[test]
fn routes_by_header_and_path_and_mutates_headers_both_ways() {
    let nginx = start_nginx();
    let proxy = proxy_for(&nginx);
    let base = format!("http://{}", proxy.listener("web"));

    let (status, h, body) = curl_i(&format!("{base}/hello?x=1"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("group=a method=GET uri=/hello?x=1 tier= "),
        "{body}"
    );
    assert_eq!(header(&h, "x-group"), Some("a"));
    assert_eq!(header(&h, "x-served-by"), Some("metamesh"));

    let (status, h, body) = curl_i(&format!("{base}/hello"), &["-H", "x-group: b"]);
    assert_eq!(status, 200);
    assert!(
        body.starts_with("group=b method=GET uri=/hello tier=batch "),
        "{body}"
    );
    assert_eq!(header(&h, "x-group"), Some("b"));
    assert_eq!(header(&h, "x-served-by"), Some("metamesh"));

    let (status, h, body) = curl_i(&format!("{base}/b/by-path"), &["-X", "DELETE"]);
    assert_eq!(status, 200);
    assert!(
        body.starts_with("group=b method=DELETE uri=/b/by-path tier= "),
        "{body}"
    );
    assert_eq!(
        header(&h, "x-served-by"),
        None,
        "by-path has no response mutation"
    );

    let (status, h, _) = curl_i(&format!("{base}/dead"), &[]);
    assert_eq!(status, 503);
    assert_eq!(
        header(&h, "x-metamesh-local-reply"),
        Some("upstream_connect_failure")
    );

    let (status, h, _) = curl_i(&format!("{base}/x"), &["-H", "x-nowhere: 1"]);
    assert_eq!(status, 404);
    assert_eq!(header(&h, "x-metamesh-local-reply"), Some("no_route"));

    // HEAD gets the head of the answer and no body, through the same route.
    let (status, h, body) = curl_i(&format!("{base}/hello"), &["-I"]);
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-group"), Some("a"));
    assert!(body.is_empty(), "{body:?}");
}

#[test]
fn keep_alive_reuses_the_client_and_the_upstream_connection() {
    let nginx = start_nginx();
    let proxy = proxy_for(&nginx);
    let url = format!("http://{}/reuse", proxy.listener("web"));
    let out = curl(&["-w", "connects=%{num_connects}\n", &url, &url, &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    let connects: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("connects="))
        .collect();
    assert_eq!(
        connects,
        ["connects=1", "connects=0", "connects=0"],
        "{text}"
    );
    let conns: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("conn=").nth(1))
        .collect();
    assert_eq!(conns.len(), 3, "{text}");
    assert!(
        conns.iter().all(|c| *c == conns[0]),
        "nginx saw several connections: {text}"
    );
}

fn same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).expect("read");
    let y = std::fs::read(b).expect("read");
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

#[test]
fn streams_50_mib_chunked_both_ways_with_flat_memory() {
    const SIZE: usize = 50 * 1024 * 1024;
    let nginx = start_nginx();
    let proxy = proxy_for(&nginx);
    let base = format!("http://{}", proxy.listener("web"));

    let src = nginx.dir().join("a/chunked/big.bin");
    let mut data = Vec::with_capacity(SIZE);
    let mut x: u32 = 0x9e37_79b9;
    while data.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&src, &data).expect("write source");
    drop(data);

    curl_i(&format!("{base}/warm-up"), &[]);
    let before = peak_rss_kib(proxy.proc.pid());

    // Upload: curl sends the file chunked (and asks for 100-continue first).
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Transfer-Encoding: chunked",
        "-T",
        src.to_str().expect("utf-8 path"),
        &format!("{base}/files/up.bin"),
    ]);
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(code == "201" || code == "204", "upload answered {code}");
    same_file(&src, &nginx.dir().join("a/files/up.bin"));

    // Download: nginx's substitution filter drops the length, so the body comes chunked.
    let dst = nginx.dir().join("downloaded.bin");
    let headers = nginx.dir().join("headers.txt");
    curl(&[
        "-o",
        dst.to_str().expect("utf-8 path"),
        "-D",
        headers.to_str().expect("utf-8 path"),
        &format!("{base}/chunked/big.bin"),
    ]);
    let head = std::fs::read_to_string(&headers)
        .expect("headers")
        .to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    same_file(&src, &dst);

    let after = peak_rss_kib(proxy.proc.pid());
    let grown_mib = (after.saturating_sub(before)) / 1024;
    eprintln!("proxy peak RSS {before} KiB before, {after} KiB after 2 x 50 MiB");
    assert!(
        grown_mib < 16,
        "proxy peak memory grew by {grown_mib} MiB moving 2 x 50 MiB ({before} KiB -> {after} KiB)"
    );
}
