//! Shared by the xDS tests: a bootstrap that sets every field.
#![allow(dead_code)]

use metamesh_core::config::Bootstrap;

/// Sets every field of every listener, route, cluster, endpoint and hook at least once,
/// and leaves the optional ones unset somewhere else.
pub const RICH: &str = r#"
node: { id: consumer-1, cluster: demo, locality: { region: bj, zone: "800002", subzone: s1 } }
admin: { address: 127.0.0.1:15000 }
listeners:
  - name: dubbo-out
    address: 127.0.0.1:20880
    protocol: dubbo
    route_config: dubbo-routes
    hooks: [tag-batchjob, audit]
    local_rate_limit:
      max_tokens: 100
      tokens_per_fill: 50
      fill_interval: 1s
      match: { attributes: { tier: { exact: gold } } }
    local_rate_limit_conditions:
      - { max_tokens: 3, fill_interval: 1s, match: { attributes: { method: { exact: sayHello } } } }
      - { max_tokens: 7, tokens_per_fill: 2, fill_interval: 2s, match: { attributes: { batchjob: { present: true } } } }
    max_frame_size: 1048576
  - name: thrift-out
    address: "[::1]:9090"
    protocol: thrift
    route_config: thrift-routes
    local_rate_limit: { max_tokens: 10, fill_interval: 250ms }
    protocol_options: { transport: framed, protocol: binary }
  - name: dubbo-in
    address: 0.0.0.0:20880
    protocol: dubbo
    route_config: dubbo-routes
    bind_to_port: false
    traffic_direction: inbound
capture: {}
routes:
  - name: dubbo-routes
    routes:
      - name: batchjob
        match:
          attributes:
            interface: { exact: org.apache.dubbo.samples.DemoService }
            method: { prefix: say }
            version: { regex: "1\\.[0-9]+" }
            batchjob: { present: true }
            canary: { present: false }
        route: [{ cluster: demo-batchjob, weight: 3 }, { cluster: demo-user, weight: 1 }]
        request_mutation: [{ key: x-tier, value: batch }, { key: x-empty, value: "" }]
        response_mutation: [{ key: x-served-by, value: metamesh }]
        mirror: { cluster: demo-shadow, percentage: 12.5, max_in_flight: 64 }
        timeout: 2s 500ms
        retry:
          attempts: 2
          per_try_timeout: 500ms
          retry_on: [connect_failure, reset, timeout, error_status]
          idempotent: true
          base_interval: 10ms
          max_interval: 200ms
        hash_policy: [user-id, tenant]
        local_rate_limit: { max_tokens: 5, tokens_per_fill: 1, fill_interval: 100ms, match: { attributes: {} } }
        hooks: [audit]
      - name: explicit-no-retries
        route: [{ cluster: demo-user }]
        mirror: { cluster: demo-shadow }
        retry: { attempts: 1, retry_on: [] }
      - name: backoff-base-only
        route: [{ cluster: demo-ring }]
        retry: { attempts: 3, base_interval: 50ms }
      - name: default
        route: [{ cluster: demo-user }]
        retry: { attempts: 1 }
  - name: thrift-routes
    routes:
      - name: all
        route: [{ cluster: thrift-maglev }]
        hash_policy: [method]
clusters:
  - name: demo-batchjob
    protocol: dubbo
    lb_policy: least_request
    locality_lb:
      enabled: true
      locality_weights:
        - { locality: { region: bj, zone: "800002" }, weight: 80 }
        - { locality: { region: bj, zone: "800005", subzone: s2 }, weight: 20 }
    connect_timeout: 250ms
    connections_per_endpoint: 4
    max_frame_size: 4194304
    outlier_detection:
      consecutive_errors: 7
      consecutive_local_origin_failures: 3
      interval: 5s
      base_ejection_time: 15s
      max_ejection_time: 2m
      max_ejection_percent: 50
    health_check: { type: heartbeat, interval: 2s, timeout: 300ms, unhealthy_threshold: 4, healthy_threshold: 2 }
    circuit_breakers: { max_connections: 10, max_pending_requests: 20, max_requests: 100, max_retries: 5 }
    overprovisioning_factor: 200
    healthy_panic_threshold: 0
    endpoints:
      - address: 10.0.0.1:20880
        locality: { region: bj, zone: "800002" }
        weight: 3
        priority: 0
        labels: { service_group: batchjob, version: v1 }
      - address: 10.0.0.2:20880
        locality: { region: bj, zone: "800002" }
        priority: 0
      - address: 10.0.0.3:20880
        locality: { region: bj, zone: "800005", subzone: s2 }
        weight: 1
        priority: 0
      - address: 10.0.1.1:20880
        locality: { region: sh, zone: "900001" }
        priority: 1
        labels: { service_group: batchjob }
  - name: demo-user
    locality_lb: { enabled: true }
    outlier_detection: { consecutive_errors: 5 }
    health_check: { type: tcp }
    circuit_breakers: { max_requests: 4294967295 }
    endpoints:
      - address: 10.0.2.1:20880
        locality: { region: bj, zone: "800002", subzone: s1 }
      - address: "[fd00::1]:20880"
  - name: demo-shadow
    lb_policy: random
    locality_lb: { enabled: false }
    healthy_panic_threshold: 30
    endpoints: [{ address: 10.0.3.1:20880 }]
  - name: demo-ring
    lb_policy: ring_hash
    ring_hash: { minimum_ring_size: 2048, maximum_ring_size: 65536 }
    outlier_detection: {}
    circuit_breakers: {}
    endpoints: [{ address: 10.0.4.1:20880 }, { address: 10.0.4.2:20880, weight: 7 }]
  - name: thrift-maglev
    protocol: thrift
    protocol_options: { transport: framed, protocol: compact }
    lb_policy: maglev
    maglev: { table_size: 65537 }
    endpoints: [{ address: 10.0.5.1:9090 }]
  - name: ring-defaults
    lb_policy: ring_hash
    ring_hash: {}
  - name: empty
hooks:
  - name: tag-batchjob
    script: |
      function on_request(req) if req:get("batchjob") == "true" then req:set("x-tier", "batch") end end
    memory_limit: 1048576
    instruction_limit: 50000
  - name: audit
    script: "function on_response(resp, req) resp:set('x-audited', '1') end"
"#;

/// [`RICH`], parsed and validated with the built-in protocols.
pub fn rich() -> Bootstrap {
    let b = Bootstrap::from_yaml(RICH).expect("rich bootstrap parses");
    b.validate(&metamesh_protocols::builtin())
        .expect("rich bootstrap is valid");
    b
}
