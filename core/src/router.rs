//! Route matching on request metadata: routes are tried in order, the first whose
//! attribute conditions all hold wins. Attribute names compare case-insensitively,
//! values case-sensitively; regexes match the whole value.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use rand::Rng;
use regex::Regex;
use tokio::sync::Semaphore;

use crate::config::{self, RetryOn};
use crate::lua::HookProgram;
use crate::message::Metadata;
use crate::ratelimit::TokenBucket;
use crate::stats::Counter;
use crate::stats::{ByClass, MirrorStats, Stats};

/// One attribute condition.
#[derive(Debug)]
pub enum Matcher {
    /// Value equals.
    Exact(String),
    /// Value starts with.
    Prefix(String),
    /// Whole value matches.
    Regex(Regex),
    /// Attribute present (true) or absent (false).
    Present(bool),
}

impl Matcher {
    /// True when `value` (the attribute's UTF-8 bytes, if present) matches.
    fn matches(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (Matcher::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Exact(s), Some(v)) => v == s.as_bytes(),
            (Matcher::Prefix(s), Some(v)) => v.starts_with(s.as_bytes()),
            (Matcher::Regex(r), Some(v)) => std::str::from_utf8(v).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// A set of attribute conditions, all of which must hold (an empty set always holds).
#[derive(Debug, Default)]
pub struct Conditions(Vec<(String, Matcher)>);

impl Conditions {
    /// Compiles `m`; `path` prefixes error paths (`....match`).
    pub fn compile(m: &config::RouteMatch, path: &str) -> Result<Self, config::ConfigError> {
        let mut conditions = Vec::with_capacity(m.attributes.len());
        for (key, m) in &m.attributes {
            let matcher = if let Some(s) = &m.exact {
                Matcher::Exact(s.clone())
            } else if let Some(s) = &m.prefix {
                Matcher::Prefix(s.clone())
            } else if let Some(s) = &m.regex {
                Matcher::Regex(
                    config::compile_full_regex(s).map_err(|e| config::ConfigError {
                        path: format!("{path}.attributes.{key}.regex"),
                        message: format!("invalid regex: {e}"),
                    })?,
                )
            } else {
                Matcher::Present(m.present.unwrap_or(true))
            };
            conditions.push((key.clone(), matcher));
        }
        Ok(Self(conditions))
    }

    /// True when every condition holds for `metadata`.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.0
            .iter()
            .all(|(key, m)| m.matches(metadata.get_bytes(key)))
    }

    /// True when there are no conditions.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The failures a retry policy retries, as a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetrySet(u8);

impl RetrySet {
    fn bit(on: RetryOn) -> u8 {
        match on {
            RetryOn::ConnectFailure => 1,
            RetryOn::Reset => 2,
            RetryOn::Timeout => 4,
            RetryOn::ErrorStatus => 8,
        }
    }

    /// A set holding `list`.
    pub fn of(list: &[RetryOn]) -> Self {
        Self(list.iter().fold(0, |acc, on| acc | Self::bit(*on)))
    }

    /// True when `on` is in the set.
    pub fn contains(self, on: RetryOn) -> bool {
        self.0 & Self::bit(on) != 0
    }
}

/// A compiled retry policy.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// Deadline of each attempt (the route's when absent).
    pub per_try_timeout: Option<Duration>,
    /// What is retried.
    pub retry_on: RetrySet,
    /// First backoff.
    pub base_interval: Duration,
    /// Longest backoff.
    pub max_interval: Duration,
}

/// Default first retry backoff (Envoy's).
pub const DEFAULT_RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

impl RetryPolicy {
    fn compile(r: &config::Retry) -> Self {
        let base = r.base_interval.map_or(DEFAULT_RETRY_BASE_INTERVAL, |d| d.0);
        Self {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.map(|d| d.0),
            retry_on: RetrySet::of(&r.conditions()),
            base_interval: base,
            max_interval: r.max_interval.map_or(base * 10, |d| d.0),
        }
    }

    /// The wait before retry number `n` (1-based): exponential from the base interval,
    /// capped, with full jitter (as Envoy's).
    pub fn backoff(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(16);
        let ceiling = self
            .base_interval
            .saturating_mul(1 << shift)
            .min(self.max_interval);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }
}

/// A compiled mirror policy.
#[derive(Debug)]
pub struct MirrorPolicy {
    /// The shadow cluster's index in the snapshot.
    pub cluster: usize,
    /// Requests copied per million.
    pub per_million: u32,
    /// Bounds the copies in flight.
    pub in_flight: Arc<Semaphore>,
    /// Counters.
    pub stats: MirrorStats,
}

impl MirrorPolicy {
    /// Draws whether this request is copied.
    pub fn sample(&self) -> bool {
        match self.per_million {
            0 => false,
            1_000_000.. => true,
            p => rand::thread_rng().gen_range(0..1_000_000) < p,
        }
    }
}

/// An attribute to set, with its name and value shared rather than copied per request.
#[derive(Clone, Debug)]
pub struct Mutation {
    /// Attribute name.
    pub key: ByteString,
    /// Attribute value.
    pub value: ByteString,
}

impl Mutation {
    /// Applies every mutation to `metadata`.
    pub fn apply_all(mutations: &[Mutation], metadata: &mut Metadata) {
        for m in mutations {
            metadata.set(&*m.key, &*m.value);
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name.
    pub name: Arc<str>,
    conditions: Conditions,
    /// Destination cluster indices into the snapshot with their cumulative weights.
    destinations: Vec<(usize, u64)>,
    total_weight: u64,
    /// Set on the request.
    pub request_mutation: Vec<Mutation>,
    /// Set on the response.
    pub response_mutation: Vec<Mutation>,
    /// Deadline for the whole request.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Traffic mirroring.
    pub mirror: Option<MirrorPolicy>,
    /// Attributes hashed for consistent hashing.
    pub hash_policy: Vec<String>,
    /// A token bucket for the route's requests.
    pub rate_limit: Option<TokenBucket>,
    /// Hooks run on the route's requests, after the listener's.
    pub hooks: Vec<Arc<HookProgram>>,
    /// Requests this route matched.
    pub requests: Counter,
    /// Answers to the route's requests, by class.
    pub responses: ByClass,
}

impl Route {
    /// True when every condition holds for `metadata`.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.conditions.matches(metadata)
    }

    /// The request's hash for consistent hashing: the values of the `hash_policy`
    /// attributes it carries; `None` when the route has no hash policy or the request
    /// carries none of them.
    pub fn hash(&self, metadata: &Metadata) -> Option<u64> {
        if self.hash_policy.is_empty() {
            return None;
        }
        if !self.hash_policy.iter().any(|k| metadata.contains(k)) {
            return None;
        }
        Some(crate::lb::hash_values(
            self.hash_policy
                .iter()
                .map(|k| metadata.get(k).unwrap_or("")),
        ))
    }

    /// Picks a destination cluster index, by weight when there are several; `None` for
    /// the hook route, which has no destinations of its own.
    pub fn pick_cluster(&self) -> Option<usize> {
        match self.destinations.as_slice() {
            [] => None,
            [(only, _)] => Some(*only),
            [(first, _), ..] => {
                let point = rand::thread_rng().gen_range(0..self.total_weight.max(1));
                Some(
                    self.destinations
                        .iter()
                        .find(|(_, upto)| point < *upto)
                        .map_or(*first, |(c, _)| *c),
                )
            }
        }
    }

    /// Destination cluster indices in order (for introspection).
    pub fn cluster_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.destinations.iter().map(|(c, _)| *c)
    }
}

/// A compiled route configuration.
#[derive(Debug)]
pub struct RouteTable {
    /// Name of the route configuration.
    pub name: String,
    routes: Vec<Route>,
    hook_route: Route,
    index: Option<RouteIndex>,
}

/// Tables shorter than this are scanned; longer ones use a [`RouteIndex`].
const INDEX_FROM: usize = 8;

/// An attribute's exact values, as bytes, and the routes that want each, in table order.
type RoutesByValue = HashMap<Box<[u8]>, Vec<u32>>;

/// Finds the first matching route of a long table without trying every route: a route
/// with an exact condition can only match a request whose attribute has that value, so
/// it is listed under its first exact condition's attribute and value; the routes
/// without one are tried always. The first route (in table order) among the candidates
/// that matches is the answer, as a scan would give.
#[derive(Debug, Default)]
struct RouteIndex {
    /// Attribute name (lower case) → value → routes, in table order.
    by_exact: Vec<(String, RoutesByValue)>,
    /// Routes with no exact condition, in table order.
    always: Vec<u32>,
}

impl RouteIndex {
    fn build(routes: &[Route]) -> RouteIndex {
        let mut ix = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            let exact = r.conditions.0.iter().find_map(|(k, m)| match m {
                Matcher::Exact(v) => Some((k.to_ascii_lowercase(), v)),
                _ => None,
            });
            match exact {
                None => ix.always.push(i),
                Some((key, value)) => {
                    let slot = match ix.by_exact.iter().position(|(k, _)| *k == key) {
                        Some(s) => s,
                        None => {
                            ix.by_exact.push((key, HashMap::new()));
                            ix.by_exact.len() - 1
                        }
                    };
                    ix.by_exact[slot]
                        .1
                        .entry(value.as_bytes().into())
                        .or_default()
                        .push(i);
                }
            }
        }
        ix
    }

    fn first(&self, routes: &[Route], metadata: &Metadata) -> Option<usize> {
        let mut best: Option<u32> = None;
        let try_list = |list: &[u32], best: &mut Option<u32>| {
            for &i in list {
                if best.is_some_and(|b| i >= b) {
                    return;
                }
                if routes.get(i as usize).is_some_and(|r| r.matches(metadata)) {
                    *best = Some(i);
                    return;
                }
            }
        };
        try_list(&self.always, &mut best);
        for (key, values) in &self.by_exact {
            if let Some(list) = metadata.get_bytes(key).and_then(|v| values.get(v)) {
                try_list(list, &mut best);
            }
        }
        best.map(|i| i as usize)
    }
}

/// Name of the route a hook's `route_to` uses when no route matched.
pub const HOOK_ROUTE: &str = "hook_route_to";

impl RouteTable {
    /// Compiles `rc`; `cluster_index` resolves cluster names (validated beforehand).
    pub(crate) fn compile(
        rc: &config::RouteConfig,
        cluster_index: impl Fn(&str) -> Option<usize>,
        hook: impl Fn(&str) -> Option<Arc<HookProgram>>,
        stats: &Stats,
    ) -> Result<Self, config::ConfigError> {
        let mut routes = Vec::with_capacity(rc.routes.len());
        for r in &rc.routes {
            let path = format!("routes[{}].routes[{}]", rc.name, r.name);
            let conditions = Conditions::compile(&r.match_, &format!("{path}.match"))?;
            let mut destinations = Vec::with_capacity(r.route.len());
            let mut total = 0u64;
            for (i, d) in r.route.iter().enumerate() {
                let idx = cluster_index(&d.cluster).ok_or_else(|| config::ConfigError {
                    path: format!("{path}.route[{i}].cluster"),
                    message: format!("no cluster named {:?}", d.cluster),
                })?;
                let w = u64::from(d.weight.unwrap_or(1));
                if w == 0 {
                    continue;
                }
                total += w;
                destinations.push((idx, total));
            }
            if destinations.is_empty() {
                return Err(config::ConfigError {
                    path: format!("{path}.route"),
                    message: "no destination with a weight above 0".into(),
                });
            }
            let mutations = |kvs: &[config::KeyValue]| {
                kvs.iter()
                    .map(|kv| Mutation {
                        key: ByteString::from(kv.key.as_str()),
                        value: ByteString::from(kv.value.as_str()),
                    })
                    .collect()
            };
            routes.push(Route {
                name: Arc::from(r.name.as_str()),
                conditions,
                destinations,
                total_weight: total,
                request_mutation: mutations(&r.request_mutation),
                response_mutation: mutations(&r.response_mutation),
                timeout: r.timeout.map(|t| t.0),
                retry: r.retry.as_ref().map(RetryPolicy::compile),
                mirror: match &r.mirror {
                    Some(m) => Some(MirrorPolicy {
                        cluster: cluster_index(&m.cluster).ok_or_else(|| config::ConfigError {
                            path: format!("{path}.mirror.cluster"),
                            message: format!("no cluster named {:?}", m.cluster),
                        })?,
                        per_million: (m.percentage.unwrap_or(100.0).clamp(0.0, 100.0) * 10_000.0)
                            .round() as u32,
                        in_flight: Arc::new(Semaphore::new(
                            m.max_in_flight
                                .unwrap_or(config::DEFAULT_MIRROR_IN_FLIGHT)
                                .max(1) as usize,
                        )),
                        stats: stats.mirror(&rc.name, &r.name),
                    }),
                    None => None,
                },
                hash_policy: r.hash_policy.clone(),
                rate_limit: match &r.local_rate_limit {
                    Some(tb) => Some(TokenBucket::new(tb, &format!("{path}.local_rate_limit"))?),
                    None => None,
                },
                hooks: r
                    .hooks
                    .iter()
                    .enumerate()
                    .map(|(k, n)| {
                        hook(n).ok_or_else(|| config::ConfigError {
                            path: format!("{path}.hooks[{k}]"),
                            message: format!("no hook named {n:?}"),
                        })
                    })
                    .collect::<Result<_, _>>()?,
                requests: stats.route(&rc.name, &r.name),
                responses: stats.route_responses(&rc.name, &r.name),
            });
        }
        Ok(Self {
            name: rc.name.clone(),
            hook_route: Route {
                name: Arc::from(HOOK_ROUTE),
                conditions: Conditions::default(),
                destinations: Vec::new(),
                total_weight: 0,
                request_mutation: Vec::new(),
                response_mutation: Vec::new(),
                timeout: None,
                retry: None,
                mirror: None,
                hash_policy: Vec::new(),
                rate_limit: None,
                hooks: Vec::new(),
                requests: stats.route(&rc.name, HOOK_ROUTE),
                responses: stats.route_responses(&rc.name, HOOK_ROUTE),
            },
            index: (routes.len() >= INDEX_FROM).then(|| RouteIndex::build(&routes)),
            routes,
        })
    }

    /// The route of requests that no route matched but a hook sent to a cluster with
    /// `route_to`: default settings, no mutation.
    pub fn hook_route(&self) -> &Route {
        &self.hook_route
    }

    /// The first route matching `metadata`.
    pub fn route(&self, metadata: &Metadata) -> Option<&Route> {
        match &self.index {
            Some(ix) => ix
                .first(&self.routes, metadata)
                .and_then(|i| self.routes.get(i)),
            None => self.routes.iter().find(|r| r.matches(metadata)),
        }
    }

    /// All routes in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let rc: config::RouteConfig = serde_yaml_ng::from_str(yaml).expect("yaml");
        let names = ["a", "b", "c"];
        RouteTable::compile(
            &rc,
            |n| names.iter().position(|x| *x == n),
            |_| None,
            &Stats::new(),
        )
        .expect("compile")
    }

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        let mut m = Metadata::new();
        for (k, v) in pairs {
            m.push_decoded(k, v);
        }
        m
    }

    const ROUTES: &str = r#"
name: t
routes:
  - name: exact-and
    match: { attributes: { Interface: { exact: svc.Demo }, batchjob: { exact: "true" } } }
    route: [{ cluster: a }]
  - name: prefix
    match: { attributes: { method: { prefix: get } } }
    route: [{ cluster: b }]
  - name: regex
    match: { attributes: { version: { regex: "1\\.[0-9]+" } } }
    route: [{ cluster: b }]
  - name: present
    match: { attributes: { canary: { present: true } } }
    route: [{ cluster: c }]
  - name: absent
    match: { attributes: { user: { present: false } } }
    route: [{ cluster: c }]
  - name: default
    route: [{ cluster: a }]
"#;

    fn name_for(t: &RouteTable, pairs: &[(&str, &str)]) -> String {
        t.route(&md(pairs))
            .map(|r| r.name.to_string())
            .unwrap_or_default()
    }

    proptest::proptest! {
        /// The index gives the route a scan in table order gives, for tables of exact,
        /// prefix and presence conditions over a few attributes (keys in mixed case).
        #[test]
        fn the_index_agrees_with_a_scan(
            routes in proptest::collection::vec(
                proptest::collection::vec((0usize..3, 0usize..4, 0usize..3), 0..3),
                8..40,
            ),
            request in proptest::collection::vec((0usize..3, 0usize..3), 0..4),
        ) {
            let keys = ["tenant", "Method", "batchjob"];
            let values = ["a", "b", "ab"];
            let mut yaml = String::from("name: t\nroutes:\n");
            for (i, conds) in routes.iter().enumerate() {
                let mut attrs = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for (k, kind, v) in conds {
                    if !seen.insert(*k) {
                        continue;
                    }
                    let m = match kind {
                        0 | 1 => format!("{{ exact: {} }}", values[*v]),
                        2 => format!("{{ prefix: {} }}", values[*v]),
                        _ => "{ present: true }".to_owned(),
                    };
                    attrs.push(format!("{}: {m}", keys[*k]));
                }
                yaml.push_str(&format!(
                    "  - {{ name: r{i}, match: {{ attributes: {{ {} }} }}, route: [{{ cluster: a }}] }}\n",
                    attrs.join(", ")
                ));
            }
            let t = table(&yaml);
            proptest::prop_assert!(t.index.is_some());
            let lower = ["tenant", "method", "BATCHJOB"];
            let pairs: Vec<(&str, &str)> = request.iter().map(|(k, v)| (lower[*k], values[*v])).collect();
            let m = md(&pairs);
            let scanned = t.routes.iter().find(|r| r.matches(&m)).map(|r| r.name.to_string());
            proptest::prop_assert_eq!(t.route(&m).map(|r| r.name.to_string()), scanned);
        }
    }

    #[test]
    fn first_match_wins_and_conditions_are_anded() {
        let t = table(ROUTES);
        let both = [
            ("interface", "svc.Demo"),
            ("BATCHJOB", "true"),
            ("user", "u"),
        ];
        assert_eq!(name_for(&t, &both), "exact-and");
        let one = [
            ("interface", "svc.Demo"),
            ("batchjob", "false"),
            ("user", "u"),
        ];
        assert_eq!(name_for(&t, &one), "default");
        // Values are case-sensitive.
        let upper = [
            ("interface", "svc.Demo"),
            ("batchjob", "TRUE"),
            ("user", "u"),
        ];
        assert_eq!(name_for(&t, &upper), "default");
    }

    #[test]
    fn prefix_regex_present_and_absent() {
        let t = table(ROUTES);
        assert_eq!(
            name_for(&t, &[("method", "getUser"), ("user", "u")]),
            "prefix"
        );
        assert_eq!(
            name_for(&t, &[("method", "setUser"), ("user", "u")]),
            "default"
        );
        assert_eq!(name_for(&t, &[("version", "1.12"), ("user", "u")]), "regex");
        // The regex is anchored: a longer value does not match.
        assert_eq!(
            name_for(&t, &[("version", "1.12-rc"), ("user", "u")]),
            "default"
        );
        assert_eq!(name_for(&t, &[("Canary", ""), ("user", "u")]), "present");
        assert_eq!(name_for(&t, &[]), "absent");
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let t = table("name: t\nroutes: [{ name: only, match: { attributes: { a: { exact: x } } }, route: [{ cluster: a }] }]");
        assert!(t.route(&md(&[("a", "y")])).is_none());
    }

    #[test]
    fn weighted_split_follows_weights() {
        let t = table("name: t\nroutes: [{ name: split, route: [{ cluster: a, weight: 90 }, { cluster: b, weight: 10 }, { cluster: c, weight: 0 }] }]");
        let r = &t.routes()[0];
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[r.pick_cluster().expect("a destination")] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = f64::from(counts[0]) / 20_000.0;
        assert!((0.88..0.92).contains(&share), "{counts:?}");
    }

    #[test]
    fn mutations_set_and_replace() {
        let t = table("name: t\nroutes: [{ name: m, route: [{ cluster: a }], request_mutation: [{ key: X-Tier, value: batch }] }]");
        let mut m = md(&[("x-tier", "old")]);
        Mutation::apply_all(&t.routes()[0].request_mutation, &mut m);
        assert_eq!(m.get("x-tier"), Some("batch"));
        assert_eq!(m.len(), 1);
        assert!(m.is_dirty());
    }
}
