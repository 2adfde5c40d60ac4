# Shell functions bench/side-by-side.sh and bench/profile.sh share. Source it; the
# functions write into $OUT.

# A free loopback port (the kernel picks one; it is released before use).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Writes a `metamesh proxy` configuration into $OUT and prints its path.
metamesh_config() { # protocol listen-port e1 e2 [routes] [lua] [noid] -> file
    local proto=$1 port=$2 e1=$3 e2=$4 routes=${5:-0} hook=${6:-} noid=${7:-} f
    f="$OUT/metamesh-$proto-$routes${hook:+-lua}${noid:+-noid}.yaml"
    {
        # noid: no x-request-id and traceparent handling (their default is on, which
        # makes the proxy re-encode every request's metadata to add the id).
        [ -n "$noid" ] && echo "tracing: { request_id: false, traceparent: false }"
        echo "listeners:"
        echo "  - { name: bench, address: 127.0.0.1:$port, protocol: $proto, route_config: bench${hook:+, hooks: [tag-batchjob]} }"
        echo "routes:"
        echo "  - name: bench"
        echo "    routes:"
        # Route-scale runs: routes that never match come first, so every request passes
        # them all (exact matches on the interface, as a mesh with many services has).
        local i
        for ((i = 1; i < routes; i++)); do
            echo "      - { name: svc-$i, match: { attributes: { interface: { exact: org.example.Service$i } } }, route: [{ cluster: user }] }"
        done
        case "$proto" in
            dubbo) cat <<EOF
      - name: batchjob
        match:
          attributes:
            interface: { exact: org.apache.dubbo.samples.DemoService }
            batchjob: { exact: "true" }
        route: [{ cluster: batch }]
        request_mutation: [{ key: x-tier, value: batch }]
        response_mutation: [{ key: x-served-by, value: metamesh }]
        timeout: 2s
EOF
            ;;
            http) cat <<EOF
      - name: batchjob
        match: { attributes: { x-batchjob: { exact: "true" } } }
        route: [{ cluster: batch }]
EOF
            ;;
            thrift) cat <<EOF
      - name: echo
        match: { attributes: { method: { exact: echo } } }
        route: [{ cluster: batch }]
EOF
            ;;
        esac
        echo "      - { name: default, route: [{ cluster: user }] }"
        echo "clusters:"
        echo "  - { name: batch, endpoints: [{ address: 127.0.0.1:$e2 }] }"
        echo "  - { name: user, endpoints: [{ address: 127.0.0.1:$e1 }] }"
        if [ -n "$hook" ]; then cat <<'EOF'
hooks:
  - name: tag-batchjob
    script: |
      function on_request(req) if req:get("batchjob") == "true" then req:set("x-tier", "batch") end end
EOF
        fi
    } >"$f"
    echo "$f"
}


# For the measuring tools: OUT (unless the caller gave one) becomes a new directory
# /tmp/metamesh-$1.XXXXXX; the release binaries are built; MM (unless given) and BENCH
# name them. Needs REPO.
tool_setup() {
    OUT="${OUT:-$(mktemp -d "/tmp/metamesh-$1.XXXXXX")}"
    mkdir -p "$OUT"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
    (cd "$REPO" && cargo build --release --quiet -p metamesh -p metamesh-bench --bins)
    MM="${MM:-$CARGO_TARGET_DIR/release/metamesh}"
    BENCH="$CARGO_TARGET_DIR/release/metamesh-bench"
}

# tool_setup for the perf-based tools (profile.sh, allocs.sh); fails when perf is missing.
perf_tool_setup() {
    tool_setup "$1"
    command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
}

# Waits until the proxy whose output goes to log $1 (process $2) says it is ready: up to
# 60 s, as a machine busy with other work can take seconds to start it. Fails when the
# process exits or the time runs out.
wait_ready() {
    local i
    for i in $(seq 1 600); do
        grep -q '"event":"ready"' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { echo "the proxy exited (see $1)" >&2; return 1; }
        sleep 0.1
    done
    echo "the proxy was not ready after 60 s (see $1)" >&2
    return 1
}

# ---- the third-party proxies the comparisons run (side-by-side.sh, kernel-share.sh)

NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
nginx_has_stream() {
    nginx -V 2>&1 | grep -q -- '--with-stream ' || [ -f "$NGINX_STREAM_MODULE" ]
}

# Installs haproxy, nginx-light and libnginx-mod-stream when missing (Debian packages,
# their system services are never started) and sets HAPROXY and NGINX. Needs REPO.
peers_setup() {
    local missing=()
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    [ -x /usr/sbin/nginx ] && nginx_has_stream || missing+=(libnginx-mod-stream)
    "$REPO/scripts/apt-install.sh" "${missing[@]}"
    HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
    nginx_has_stream || { echo "nginx has no stream module" >&2; exit 1; }
}

# Waits up to 10 s until something listens on 127.0.0.1:$1; fails otherwise.
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# The starters below write their configuration into $OUT, add the process to the
# caller's PIDS array (for its cleanup) and set PROXY_PID.
start_haproxy() { # mode port e1 e2 -> PROXY_PID
    local mode=$1 port=$2 e1=$3 e2=$4 f="$OUT/haproxy-$1.cfg"
    if [ "$mode" = tcp ]; then cat >"$f" <<EOF
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:$port
    default_backend echo
backend echo
    balance roundrobin
    server e1 127.0.0.1:$e1
    server e2 127.0.0.1:$e2
EOF
    else cat >"$f" <<EOF
global
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:$port
    use_backend batch if { req.hdr(x-batchjob) -m str true }
    default_backend user
backend batch
    http-reuse always
    server e2 127.0.0.1:$e2
backend user
    http-reuse always
    server e1 127.0.0.1:$e1
EOF
    fi
    "$HAPROXY" -db -f "$f" >"$f.log" 2>&1 &
    PROXY_PID=$!; PIDS+=("$PROXY_PID")
    wait_port "$port"
}

start_nginx() { # mode port e1 e2 -> PROXY_PID (the master; workers are its children)
    local mode=$1 port=$2 e1=$3 e2=$4 d="$OUT/nginx-$1"
    mkdir -p "$d/tmp"
    {
        [ -f "$NGINX_STREAM_MODULE" ] && [ "$mode" = stream ] && echo "load_module $NGINX_STREAM_MODULE;"
        cat <<EOF
worker_processes auto;
worker_rlimit_nofile 16384;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8000; }
EOF
        if [ "$mode" = stream ]; then cat <<EOF
stream {
    upstream echo { server 127.0.0.1:$e1; server 127.0.0.1:$e2; }
    server { listen 127.0.0.1:$port; proxy_pass echo; }
}
EOF
        else cat <<EOF
http {
    access_log off;
    client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
    uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
    keepalive_requests 1000000;
    upstream batch { server 127.0.0.1:$e2; keepalive 64; keepalive_requests 1000000; }
    upstream user { server 127.0.0.1:$e1; keepalive 64; keepalive_requests 1000000; }
    map \$http_x_batchjob \$pool { "true" batch; default user; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://\$pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
        fi
    } >"$d/nginx.conf"
    "$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf" >"$d/out.log" 2>&1 &
    PROXY_PID=$!; PIDS+=("$PROXY_PID")
    wait_port "$port"
}
