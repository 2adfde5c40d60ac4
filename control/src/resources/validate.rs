//! Checks of a whole set of resources: values, references between resources and
//! duplicates. Every problem is reported, with its file, resource and field path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use metamesh_core::config::{
    Hook, RetryOn, MAX_MAGLEV_TABLE, MAX_RETRY_ATTEMPTS, MAX_RING_SIZE, MIN_HOOK_MEMORY,
};

use super::destination_rule::{DestinationRule, LoadBalancerSettings, SimpleLb, TrafficPolicy};
use super::index::{applies_to_sidecars, classify_port, host_attribute, host_key, Index, PortKind};
use super::lua_hook::LuaHook;
use super::meta_router::{MetaRoute, MetaRouteMatch, MetaRouter, TokenBucket};
use super::object::Object;
use super::service_entry::ServiceEntry;
use super::MeshResources;
use crate::error::{Location, ResourceError};
use crate::{duration, locality};

/// Resolutions a ServiceEntry may declare.
const RESOLUTIONS: &[&str] = &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"];
/// Locations a ServiceEntry may declare.
const LOCATIONS: &[&str] = &["MESH_EXTERNAL", "MESH_INTERNAL"];

/// Maps one `retryOn` item (Istio's and metamesh's spellings) to the proxy's condition.
pub(crate) fn retry_on(item: &str) -> Option<RetryOn> {
    match item.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "connect-failure" | "refused-stream" => Some(RetryOn::ConnectFailure),
        "reset" => Some(RetryOn::Reset),
        "timeout" => Some(RetryOn::Timeout),
        "error-status" | "5xx" | "gateway-error" => Some(RetryOn::ErrorStatus),
        _ => None,
    }
}

/// Compiles a match regex the way the proxy does: anchored at both ends, size-limited.
pub(crate) fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// The name a route gets: its own, or `route-N`.
pub(crate) fn route_name(route: &MetaRoute, index: usize) -> String {
    if route.name.is_empty() {
        format!("route-{index}")
    } else {
        route.name.clone()
    }
}

pub(super) fn check(mesh: &MeshResources) -> Vec<ResourceError> {
    let mut c = Checker {
        index: Index::new(mesh),
        mesh,
        errors: Vec::new(),
    };
    c.identities();
    for se in mesh.service_entries() {
        c.service_entry(se);
    }
    c.shared_ports();
    for dr in mesh.destination_rules() {
        c.destination_rule(dr);
    }
    for mr in mesh.meta_routers() {
        c.meta_router(mr);
    }
    for h in mesh.lua_hooks() {
        c.lua_hook(h);
    }
    let mut seen = HashSet::new();
    c.errors.retain(|e| seen.insert(e.clone()));
    c.errors
}

struct Checker<'a> {
    index: Index<'a>,
    mesh: &'a MeshResources,
    errors: Vec<ResourceError>,
}

impl<'a> Checker<'a> {
    fn err<S>(&mut self, obj: &Object<S>, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ResourceError::new(
            Location::new(&obj.source, obj.id(), path),
            message,
        ));
    }

    /// A duration that must parse and, unless `zero_ok`, be above zero.
    fn duration<S>(
        &mut self,
        obj: &Object<S>,
        path: &str,
        text: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
        match duration::parse(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.err(obj, path, "must be greater than 0");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(obj, path, e);
                None
            }
        }
    }

    fn identities(&mut self) {
        fn check<S>(c: &mut Checker<'_>, list: &[Object<S>]) {
            let mut seen: HashMap<(String, String), usize> = HashMap::new();
            for (i, o) in list.iter().enumerate() {
                if o.metadata.name.is_empty() {
                    c.err(o, "metadata.name", "must not be empty");
                    continue;
                }
                let key = (o.namespace().to_owned(), o.metadata.name.clone());
                if let Some(&first) = seen.get(&key) {
                    let f = &list[first].source;
                    c.err(
                        o,
                        "metadata.name",
                        format!(
                            "{} is defined twice (also in {} document {})",
                            o.id(),
                            if f.file.is_empty() {
                                "<input>"
                            } else {
                                &f.file
                            },
                            f.document
                        ),
                    );
                } else {
                    seen.insert(key, i);
                }
            }
        }
        check(self, self.mesh.meta_routers());
        check(self, self.mesh.destination_rules());
        check(self, self.mesh.service_entries());
        check(self, self.mesh.lua_hooks());
    }

    fn service_entry(&mut self, se: &'a ServiceEntry) {
        let spec = &se.spec;
        if spec.hosts.is_empty() {
            self.err(se, "spec.hosts", "at least one host is required");
        }
        let mut hosts = HashSet::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            let p = format!("spec.hosts[{i}]");
            if h.is_empty() {
                self.err(se, p, "must not be empty");
                continue;
            }
            if h.contains('*') {
                self.err(se, p, format!("wildcard host {h:?} is not supported"));
                continue;
            }
            if h.contains(['/', ' ', '|']) {
                self.err(se, p, format!("{h:?} is not a host name"));
                continue;
            }
            if !hosts.insert(host_key(h)) {
                self.err(se, p, format!("host {h:?} is listed twice"));
                continue;
            }
            if let Some(owner) = self.index.service(h) {
                if !std::ptr::eq(owner.entry, se) {
                    let other = owner.entry.id();
                    self.err(
                        se,
                        p,
                        format!("host {h:?} is also defined by {other}; a host belongs to one ServiceEntry"),
                    );
                }
            }
        }
        if let Some(r) = &spec.resolution {
            if !RESOLUTIONS.contains(&r.as_str()) {
                self.err(
                    se,
                    "spec.resolution",
                    format!(
                        "unknown resolution {r:?} (expected one of {})",
                        RESOLUTIONS.join(", ")
                    ),
                );
            }
        }
        if let Some(l) = &spec.location {
            if !LOCATIONS.contains(&l.as_str()) {
                self.err(
                    se,
                    "spec.location",
                    format!(
                        "unknown location {l:?} (expected one of {})",
                        LOCATIONS.join(", ")
                    ),
                );
            }
        }
        let mut numbers = HashSet::new();
        let mut names = HashSet::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let p = format!("spec.ports[{i}]");
            if !(1..=65535).contains(&port.number) {
                self.err(se, format!("{p}.number"), "must be between 1 and 65535");
            } else if !numbers.insert(port.number) {
                self.err(
                    se,
                    format!("{p}.number"),
                    format!("port {} is listed twice", port.number),
                );
            }
            if let Some(t) = port.target_port {
                if !(1..=65535).contains(&t) {
                    self.err(se, format!("{p}.targetPort"), "must be between 1 and 65535");
                }
            }
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                if !names.insert(name) {
                    self.err(
                        se,
                        format!("{p}.name"),
                        format!("port name {name:?} is used twice"),
                    );
                }
            }
            if let PortKind::Invalid(why) = classify_port(port, self.mesh.protocols()) {
                self.err(se, p, why);
            }
        }
        for (j, ep) in spec.endpoints.iter().enumerate() {
            let p = format!("spec.endpoints[{j}]");
            if ep.address.parse::<IpAddr>().is_err() {
                self.err(
                    se,
                    format!("{p}.address"),
                    format!(
                        "{:?} is not an IP address (host names and unix sockets are not supported)",
                        ep.address
                    ),
                );
            }
            for (name, number) in &ep.ports {
                let pp = format!("{p}.ports.{name}");
                if !spec
                    .ports
                    .iter()
                    .any(|sp| sp.name.as_deref() == Some(name.as_str()))
                {
                    self.err(
                        se,
                        pp.clone(),
                        format!("the service has no port named {name:?}"),
                    );
                }
                if !(1..=65535).contains(number) {
                    self.err(se, pp, "must be between 1 and 65535");
                }
            }
            if let Some(l) = &ep.locality {
                if let Err(e) = locality::parse(l) {
                    self.err(se, format!("{p}.locality"), e);
                }
            }
        }
    }

    /// Services sharing a port share the proxy's listener: they must speak the same
    /// protocol, and the proxy must be able to tell them apart.
    fn shared_ports(&mut self) {
        let mut by_port: BTreeMap<u16, Vec<(&str, String, &'a ServiceEntry, usize)>> =
            BTreeMap::new();
        for svc in self.index.services.values() {
            for p in &svc.ports {
                by_port.entry(p.number).or_default().push((
                    svc.host,
                    p.protocol.clone(),
                    svc.entry,
                    p.index,
                ));
            }
        }
        for (port, users) in by_port {
            let Some((first_host, first_proto, first_se, _)) = users.first().cloned() else {
                continue;
            };
            for (host, proto, se, idx) in users.iter().skip(1) {
                if *proto != first_proto {
                    self.err(
                        se,
                        format!("spec.ports[{idx}]"),
                        format!(
                            "port {port} of {host:?} speaks {proto}, but port {port} of {first_host:?} ({}) speaks {first_proto}: services on one port must speak the same protocol",
                            first_se.id()
                        ),
                    );
                }
            }
            if users.len() > 1 && host_attribute(&first_proto).is_none() {
                for (host, _, se, idx) in &users {
                    self.err(
                        se,
                        format!("spec.ports[{idx}]"),
                        format!(
                            "{host:?} shares port {port} with other services, but {first_proto} requests carry no attribute naming their service: give each service its own port"
                        ),
                    );
                }
            }
            // At most one rate-limited service per shared listener.
            if users.len() > 1 {
                let limited: Vec<&MetaRouter> = users
                    .iter()
                    .filter_map(|(h, _, _, _)| self.index.router(h))
                    .filter(|r| r.spec.local_rate_limit.is_some())
                    .collect();
                let mut ids: Vec<String> = limited.iter().map(|r| r.id()).collect();
                ids.sort();
                ids.dedup();
                if ids.len() > 1 {
                    for r in limited.iter().skip(1) {
                        self.err(
                            r,
                            "spec.localRateLimit",
                            format!(
                                "port {port} is shared by services rate-limited by {}: only one of them can have a localRateLimit",
                                ids.join(" and ")
                            ),
                        );
                    }
                }
            }
        }
    }

    fn destination_rule(&mut self, dr: &'a DestinationRule) {
        let spec = &dr.spec;
        let host = spec.host.as_str();
        if host.is_empty() {
            self.err(dr, "spec.host", "must not be empty");
        } else if host.contains('*')
            && !(host == "*" || (host.starts_with("*.") && !host[1..].contains('*')))
        {
            self.err(
                dr,
                "spec.host",
                format!("{host:?}: a wildcard must be the whole first label (`*.example.com`)"),
            );
        } else {
            let key = host_key(host);
            if let Some(first) = self
                .mesh
                .destination_rules()
                .iter()
                .find(|r| host_key(&r.spec.host) == key)
            {
                if !std::ptr::eq(first, dr) {
                    self.err(
                        dr,
                        "spec.host",
                        format!(
                            "host {host:?} already has a DestinationRule: {}",
                            first.id()
                        ),
                    );
                }
            }
        }
        if let Some(tp) = &spec.traffic_policy {
            self.traffic_policy(dr, "spec.trafficPolicy", tp);
        }
        let mut names = HashSet::new();
        for (i, s) in spec.subsets.iter().enumerate() {
            let p = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                self.err(dr, format!("{p}.name"), "must not be empty");
            } else if s.name.contains(['|', '/']) {
                self.err(
                    dr,
                    format!("{p}.name"),
                    format!("{:?} must not contain '|' or '/'", s.name),
                );
            } else if !names.insert(s.name.as_str()) {
                self.err(
                    dr,
                    format!("{p}.name"),
                    format!("subset {:?} is defined twice", s.name),
                );
            }
            if let Some(tp) = &s.traffic_policy {
                self.traffic_policy(dr, &format!("{p}.trafficPolicy"), tp);
            }
        }
    }

    fn traffic_policy(&mut self, dr: &DestinationRule, p: &str, tp: &TrafficPolicy) {
        self.policy_parts(
            dr,
            p,
            tp.load_balancer.as_ref(),
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
        );
        let mut ports = HashSet::new();
        for (k, pl) in tp.port_level_settings.iter().enumerate() {
            let pp = format!("{p}.portLevelSettings[{k}]");
            match pl.port.as_ref().map(|s| s.number) {
                None => self.err(dr, format!("{pp}.port"), "a port is required"),
                Some(n) if !(1..=65535).contains(&n) => self.err(
                    dr,
                    format!("{pp}.port.number"),
                    "must be between 1 and 65535",
                ),
                Some(n) => {
                    if !ports.insert(n) {
                        self.err(
                            dr,
                            format!("{pp}.port.number"),
                            format!("port {n} is listed twice"),
                        );
                    }
                }
            }
            self.policy_parts(
                dr,
                &pp,
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
            );
        }
    }

    fn policy_parts(
        &mut self,
        dr: &DestinationRule,
        p: &str,
        lb: Option<&LoadBalancerSettings>,
        pool: Option<&super::destination_rule::ConnectionPoolSettings>,
        outlier: Option<&super::destination_rule::OutlierDetection>,
    ) {
        if let Some(lb) = lb {
            self.load_balancer(dr, &format!("{p}.loadBalancer"), lb);
        }
        if let Some(tcp) = pool.and_then(|c| c.tcp.as_ref()) {
            if let Some(t) = &tcp.connect_timeout {
                self.duration(
                    dr,
                    &format!("{p}.connectionPool.tcp.connectTimeout"),
                    t,
                    false,
                );
            }
        }
        if let Some(o) = outlier {
            let op = format!("{p}.outlierDetection");
            if o.consecutive_errors.is_some() && o.consecutive_5xx_errors.is_some() {
                self.err(
                    dr,
                    format!("{op}.consecutiveErrors"),
                    "set consecutive5xxErrors or the deprecated consecutiveErrors, not both",
                );
            }
            for (name, v) in [
                ("interval", &o.interval),
                ("baseEjectionTime", &o.base_ejection_time),
            ] {
                if let Some(t) = v {
                    self.duration(dr, &format!("{op}.{name}"), t, false);
                }
            }
            for (name, v) in [
                ("maxEjectionPercent", o.max_ejection_percent),
                ("minHealthPercent", o.min_health_percent),
            ] {
                if v.is_some_and(|v| v > 100) {
                    self.err(dr, format!("{op}.{name}"), "must be between 0 and 100");
                }
            }
        }
    }

    fn load_balancer(&mut self, dr: &DestinationRule, p: &str, lb: &LoadBalancerSettings) {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            self.err(dr, p, "set simple or consistentHash, not both");
        }
        if lb.simple == Some(SimpleLb::Passthrough) {
            self.err(dr, format!("{p}.simple"), "PASSTHROUGH is not supported (the proxy always balances over the ServiceEntry endpoints)");
        }
        if let Some(ch) = &lb.consistent_hash {
            let cp = format!("{p}.consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.is_some(),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if keys > 1 {
                self.err(dr, cp.clone(), "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName");
            }
            if ch.http_header_name.as_deref() == Some("") {
                self.err(dr, format!("{cp}.httpHeaderName"), "must not be empty");
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                self.err(dr, cp.clone(), "set ringHash or maglev, not both");
            }
            if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
                self.err(
                    dr,
                    format!("{cp}.minimumRingSize"),
                    "deprecated: use ringHash.minimumRingSize alone",
                );
            }
            let ring = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .map(|v| (format!("{cp}.ringHash.minimumRingSize"), v))
                .or_else(|| {
                    ch.minimum_ring_size
                        .map(|v| (format!("{cp}.minimumRingSize"), v))
                });
            if let Some((path, v)) = ring {
                if v > MAX_RING_SIZE {
                    self.err(dr, path, format!("must be at most {MAX_RING_SIZE}"));
                }
            }
            if let Some(size) = ch
                .maglev
                .as_ref()
                .and_then(|m| m.table_size)
                .filter(|s| *s != 0)
            {
                if size > MAX_MAGLEV_TABLE || !metamesh_core::config::is_prime(size) {
                    self.err(
                        dr,
                        format!("{cp}.maglev.tableSize"),
                        format!("must be a prime number up to {MAX_MAGLEV_TABLE}"),
                    );
                }
            }
        }
        if let Some(l) = &lb.locality_lb_setting {
            let lp = format!("{p}.localityLbSetting");
            if !l.distribute.is_empty() && !l.failover.is_empty() {
                self.err(dr, lp.clone(), "set distribute or failover, not both");
            }
            let mut froms: Vec<&str> = Vec::new();
            for (k, d) in l.distribute.iter().enumerate() {
                let dp = format!("{lp}.distribute[{k}]");
                match locality::check_pattern(&d.from) {
                    Err(e) => self.err(dr, format!("{dp}.from"), e),
                    Ok(()) => {
                        if let Some(prev) = froms.iter().find(|f| locality::overlaps(f, &d.from)) {
                            self.err(
                                dr,
                                format!("{dp}.from"),
                                format!(
                                    "locality {:?} overlaps {prev:?} of an earlier rule",
                                    d.from
                                ),
                            );
                        }
                        froms.push(&d.from);
                    }
                }
                if d.to.is_empty() {
                    self.err(dr, format!("{dp}.to"), "at least one locality is required");
                }
                let mut total: u64 = 0;
                let mut keys: Vec<&str> = Vec::new();
                for (pattern, &weight) in &d.to {
                    let tp = format!("{dp}.to.{pattern}");
                    if let Err(e) = locality::check_pattern(pattern) {
                        self.err(dr, tp.clone(), e);
                    } else if let Some(prev) = keys.iter().find(|k| locality::overlaps(k, pattern))
                    {
                        self.err(
                            dr,
                            tp.clone(),
                            format!("locality {pattern:?} overlaps {prev:?}"),
                        );
                    } else {
                        keys.push(pattern);
                    }
                    if !(1..=100).contains(&weight) {
                        self.err(dr, tp, "weight must be between 1 and 100");
                    }
                    total += u64::from(weight);
                }
                if !d.to.is_empty() && total != 100 {
                    self.err(
                        dr,
                        format!("{dp}.to"),
                        format!("weights must sum to 100, not {total}"),
                    );
                }
            }
            for (k, f) in l.failover.iter().enumerate() {
                let fp = format!("{lp}.failover[{k}]");
                for (name, v) in [("from", &f.from), ("to", &f.to)] {
                    if v.is_empty() {
                        self.err(dr, format!("{fp}.{name}"), "must not be empty");
                    } else if v.contains(['/', '*']) {
                        self.err(
                            dr,
                            format!("{fp}.{name}"),
                            format!("{v:?}: failover names a region only, without '/' or '*'"),
                        );
                    }
                }
                if !f.from.is_empty() && f.from == f.to {
                    self.err(dr, fp, "from and to must be different regions");
                }
            }
        }
    }

    fn meta_router(&mut self, mr: &'a MetaRouter) {
        let spec = &mr.spec;
        if spec.hosts.is_empty() {
            self.err(mr, "spec.hosts", "at least one host is required");
        }
        // (listener port, protocol) contexts the routes serve.
        let mut contexts: Vec<(u16, String)> = Vec::new();
        let mut listed = HashSet::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            let p = format!("spec.hosts[{i}]");
            if h.is_empty() {
                self.err(mr, p, "must not be empty");
                continue;
            }
            if !listed.insert(host_key(h)) {
                self.err(mr, p, format!("host {h:?} is listed twice"));
                continue;
            }
            let Some(svc) = self.index.service(h) else {
                self.err(mr, p, format!("no ServiceEntry defines host {h:?}"));
                continue;
            };
            if svc.ports.is_empty() {
                self.err(
                    mr,
                    p,
                    format!("host {h:?} has no meta-protocol port ({})", svc.entry.id()),
                );
                continue;
            }
            for port in &svc.ports {
                contexts.push((port.number, port.protocol.clone()));
            }
            if applies_to_sidecars(mr) {
                if let Some(owner) = self.index.router(h) {
                    if !std::ptr::eq(owner, mr) {
                        self.err(
                            mr,
                            p,
                            format!(
                                "host {h:?} is already routed by {}; a host takes one MetaRouter",
                                owner.id()
                            ),
                        );
                    }
                }
            }
        }
        contexts.sort();
        contexts.dedup();

        let mut names = HashSet::new();
        for (i, route) in spec.routes.iter().enumerate() {
            let p = format!("spec.routes[{i}]");
            let name = route_name(route, i);
            if name.contains(['/', '|']) {
                self.err(
                    mr,
                    format!("{p}.name"),
                    format!("{name:?} must not contain '/' or '|'"),
                );
            } else if !names.insert(name.clone()) {
                self.err(
                    mr,
                    format!("{p}.name"),
                    format!("route {name:?} is defined twice"),
                );
            }
            self.route(mr, &p, route, &contexts);
        }
        if let Some(rl) = &spec.local_rate_limit {
            let p = "spec.localRateLimit";
            if rl.token_bucket.is_none() && rl.conditions.is_empty() {
                self.err(mr, p, "set tokenBucket or conditions");
            }
            if let Some(tb) = &rl.token_bucket {
                self.bucket(mr, &format!("{p}.tokenBucket"), tb);
            }
            for (k, cond) in rl.conditions.iter().enumerate() {
                let cp = format!("{p}.conditions[{k}]");
                self.match_(mr, &format!("{cp}.match"), &cond.match_);
                self.bucket(mr, &format!("{cp}.tokenBucket"), &cond.token_bucket);
            }
        }
    }

    fn route(&mut self, mr: &MetaRouter, p: &str, route: &MetaRoute, contexts: &[(u16, String)]) {
        if let Some(m) = &route.match_ {
            self.match_(mr, &format!("{p}.match"), m);
        }
        if route.route.is_empty() {
            self.err(
                mr,
                format!("{p}.route"),
                "at least one destination is required",
            );
        }
        for (j, d) in route.route.iter().enumerate() {
            let dp = format!("{p}.route[{j}].destination");
            if d.destination.host.is_empty() {
                self.err(mr, format!("{dp}.host"), "must not be empty");
                continue;
            }
            for (port, proto) in contexts {
                if let Err(e) = self.index.resolve(&d.destination, *port, proto) {
                    self.err(mr, dp.clone(), e);
                }
            }
        }
        if route.route.len() > 1
            && route.route.iter().any(|d| d.weight.is_some())
            && route.route.iter().all(|d| d.weight.unwrap_or(0) == 0)
        {
            self.err(mr, format!("{p}.route"), "weights must not all be 0");
        }
        if let Some(m) = &route.mirror {
            let mp = format!("{p}.mirror");
            if m.host.is_empty() {
                self.err(mr, format!("{mp}.host"), "must not be empty");
            } else {
                for (port, proto) in contexts {
                    if let Err(e) = self.index.resolve(m, *port, proto) {
                        self.err(mr, mp.clone(), e);
                    }
                }
            }
        }
        if let Some(pct) = &route.mirror_percentage {
            if route.mirror.is_none() {
                self.err(
                    mr,
                    format!("{p}.mirrorPercentage"),
                    "given without a mirror",
                );
            }
            if !(0.0..=100.0).contains(&pct.value) {
                self.err(
                    mr,
                    format!("{p}.mirrorPercentage.value"),
                    "must be between 0 and 100",
                );
            }
        }
        for (name, list) in [
            ("requestMutation", &route.request_mutation),
            ("responseMutation", &route.response_mutation),
        ] {
            for (k, kv) in list.iter().enumerate() {
                if kv.key.is_empty() {
                    self.err(mr, format!("{p}.{name}[{k}].key"), "must not be empty");
                }
            }
        }
        if let Some(t) = &route.timeout {
            self.duration(mr, &format!("{p}.timeout"), t, false);
        }
        if let Some(r) = &route.retries {
            let rp = format!("{p}.retries");
            if r.attempts > MAX_RETRY_ATTEMPTS {
                self.err(
                    mr,
                    format!("{rp}.attempts"),
                    format!("must be at most {MAX_RETRY_ATTEMPTS}"),
                );
            }
            if let Some(t) = &r.per_try_timeout {
                self.duration(mr, &format!("{rp}.perTryTimeout"), t, false);
            }
            for (k, item) in r.retry_on.iter().flat_map(|o| o.items()).enumerate() {
                let ip = format!("{rp}.retryOn[{k}]");
                match retry_on(&item) {
                    None => self.err(
                        mr,
                        ip,
                        format!("unknown retry condition {item:?} (expected connect-failure, reset, timeout or error-status)"),
                    ),
                    Some(on) if on.may_have_been_applied() && !r.idempotent => self.err(
                        mr,
                        ip,
                        format!(
                            "{item} may follow a request the upstream already applied: set `idempotent: true` if the route's requests are safe to repeat"
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        for (k, h) in route.hash_policy.iter().enumerate() {
            if h.is_empty() {
                self.err(mr, format!("{p}.hashPolicy[{k}]"), "must not be empty");
            }
        }
    }

    fn match_(&mut self, mr: &MetaRouter, p: &str, m: &MetaRouteMatch) {
        let mut keys = HashSet::new();
        for (key, cond) in &m.attributes {
            let ap = format!("{p}.attributes.{key}");
            if key.is_empty() {
                self.err(mr, ap.clone(), "attribute name must not be empty");
            }
            if !keys.insert(key.to_ascii_lowercase()) {
                self.err(
                    mr,
                    ap.clone(),
                    "attribute given twice (names are case-insensitive)",
                );
            }
            let Some(c) = cond else { continue };
            let set = [c.exact.is_some(), c.prefix.is_some(), c.regex.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if set > 1 {
                self.err(mr, ap.clone(), "set only one of exact, prefix, regex");
            }
            if let Some(re) = c.regex.as_deref().filter(|r| *r != "*") {
                if let Err(e) = compile_regex(re) {
                    // The regex crate's messages span lines; keep one line per problem.
                    let text = e.to_string();
                    let text: Vec<&str> = text.split_whitespace().collect();
                    self.err(
                        mr,
                        format!("{ap}.regex"),
                        format!("invalid regex: {}", text.join(" ")),
                    );
                }
            }
        }
    }

    fn bucket(&mut self, mr: &MetaRouter, p: &str, tb: &TokenBucket) {
        if tb.max_tokens == 0 {
            self.err(mr, format!("{p}.maxTokens"), "must be greater than 0");
        }
        if tb.tokens_per_fill == Some(0) {
            self.err(mr, format!("{p}.tokensPerFill"), "must be greater than 0");
        }
        let fp = format!("{p}.fillInterval");
        if tb.fill_interval.is_empty() {
            self.err(mr, fp, "is required");
        } else if let Some(d) = self.duration(mr, &fp, &tb.fill_interval, false) {
            if d < Duration::from_millis(1) {
                self.err(mr, fp, "must be at least 1ms");
            }
        }
    }

    fn lua_hook(&mut self, h: &LuaHook) {
        let spec = &h.spec;
        if spec.hosts.is_empty() {
            self.err(h, "spec.hosts", "at least one host is required");
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            if host.is_empty() {
                self.err(h, format!("spec.hosts[{i}]"), "must not be empty");
            }
        }
        let memory_limit = match spec.memory_limit.map(usize::try_from) {
            None => None,
            Some(Ok(m)) if m >= MIN_HOOK_MEMORY => Some(m),
            Some(_) => {
                self.err(
                    h,
                    "spec.memoryLimit",
                    format!("must be at least {MIN_HOOK_MEMORY} bytes"),
                );
                return;
            }
        };
        if spec.instruction_limit == Some(0) {
            self.err(h, "spec.instructionLimit", "must be greater than 0");
            return;
        }
        if spec.script.trim().is_empty() {
            self.err(h, "spec.script", "must not be empty");
            return;
        }
        let hook = Hook {
            name: hook_name(h),
            script: spec.script.clone(),
            memory_limit,
            instruction_limit: spec.instruction_limit,
        };
        if let Err(e) = metamesh_core::lua::HookProgram::check(&hook) {
            self.err(h, "spec.script", e);
        }
    }
}

/// The proxy's name for a LuaHook: `namespace.name`.
pub(crate) fn hook_name(h: &LuaHook) -> String {
    format!("{}.{}", h.namespace(), h.metadata.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{parse_file, Resource};

    fn mesh(text: &str) -> MeshResources {
        MeshResources::from_resources(parse_file("t.yaml", text).expect("parses"))
    }

    #[test]
    fn every_kind_in_every_api_version() {
        let kinds: [(&str, &[&str], &str); 4] = [
            (
                "MetaRouter",
                super::super::meta_router::API_VERSIONS,
                "hosts: [a.svc]\n  routes: [{ name: r, route: [{ destination: { host: a.svc } }] }]",
            ),
            (
                "DestinationRule",
                super::super::destination_rule::API_VERSIONS,
                "host: a.svc\n  subsets: [{ name: v1, labels: { v: \"1\" } }]",
            ),
            (
                "ServiceEntry",
                super::super::service_entry::API_VERSIONS,
                "hosts: [a.svc]\n  ports: [{ number: 1, name: tcp-metaprotocol-dubbo }]",
            ),
            (
                "LuaHook",
                super::super::lua_hook::API_VERSIONS,
                "hosts: [a.svc]\n  script: \"function on_request(r) end\"",
            ),
        ];
        for (kind, versions, spec) in kinds {
            for v in versions {
                let text = format!(
                    "apiVersion: {v}\nkind: {kind}\nmetadata: {{ name: x, namespace: n }}\nspec:\n  {spec}\n"
                );
                let got =
                    parse_file("t.yaml", &text).unwrap_or_else(|e| panic!("{kind} {v}: {e:?}"));
                let ok = matches!(
                    (&got[..], kind),
                    ([Resource::MetaRouter(_)], "MetaRouter")
                        | ([Resource::DestinationRule(_)], "DestinationRule")
                        | ([Resource::ServiceEntry(_)], "ServiceEntry")
                        | ([Resource::LuaHook(_)], "LuaHook")
                );
                assert!(ok, "{kind} {v}: {got:?}");
            }
            let text =
                format!("apiVersion: example.com/v9\nkind: {kind}\nmetadata: {{ name: x }}\n");
            let err = parse_file("t.yaml", &text).expect_err(kind);
            assert_eq!(err[0].path(), "apiVersion", "{kind}");
        }
    }

    #[test]
    fn api_server_metadata_and_status_are_accepted() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: se
  namespace: n
  uid: 0d2c
  resourceVersion: "1234"
  generation: 2
  creationTimestamp: "2024-01-01T00:00:00Z"
  labels: { app: a }
  managedFields: [{ manager: kubectl }]
spec:
  hosts: [a.svc]
  ports: [{ number: 20880, name: tcp-metaprotocol-dubbo }]
status: { conditions: [] }
"#;
        assert!(mesh(text).validate().is_ok());
    }

    #[test]
    fn resources_are_ordered_by_namespace_and_name() {
        let a = "apiVersion: metamesh.io/v1alpha1\nkind: LuaHook\nmetadata: { name: b, namespace: x }\nspec: { hosts: [h], script: \"function on_request(r) end\" }\n---\napiVersion: metamesh.io/v1alpha1\nkind: LuaHook\nmetadata: { name: a, namespace: y }\nspec: { hosts: [h], script: \"function on_request(r) end\" }\n---\napiVersion: metamesh.io/v1alpha1\nkind: LuaHook\nmetadata: { name: a }\nspec: { hosts: [h], script: \"function on_request(r) end\" }\n";
        let m = mesh(a);
        let ids: Vec<String> = m.lua_hooks().iter().map(|h| h.id()).collect();
        assert_eq!(ids, vec!["LuaHook/default/a", "LuaHook/x/b", "LuaHook/y/a"]);
    }

    #[test]
    fn retry_conditions_accept_both_spellings() {
        assert_eq!(retry_on("connect-failure"), Some(RetryOn::ConnectFailure));
        assert_eq!(retry_on("connect_failure"), Some(RetryOn::ConnectFailure));
        assert_eq!(retry_on("5xx"), Some(RetryOn::ErrorStatus));
        assert_eq!(retry_on(" Reset "), Some(RetryOn::Reset));
        assert_eq!(retry_on("teapot"), None);
    }

    #[test]
    fn regex_errors_are_one_line() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: se }\nspec:\n  hosts: [a.svc]\n  ports: [{ number: 1, name: tcp-metaprotocol-dubbo }]\n---\napiVersion: metamesh.io/v1alpha1\nkind: MetaRouter\nmetadata: { name: m }\nspec:\n  hosts: [a.svc]\n  routes: [{ match: { attributes: { a: { regex: \"(\" } } }, route: [{ destination: { host: a.svc } }] }]\n";
        let err = mesh(text).validate().expect_err("bad regex");
        assert_eq!(err.len(), 1);
        assert!(!err[0].message.contains('\n'), "{}", err[0]);
        assert_eq!(err[0].path(), "spec.routes[0].match.attributes.a.regex");
    }
}
