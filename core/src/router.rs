//! Route matching on request metadata: routes are tried in order, the first whose
//! attribute conditions all hold wins. Attribute names compare case-insensitively,
//! values case-sensitively; regexes match the whole value.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use rand::Rng;
use regex::Regex;

use crate::config;
use crate::message::Metadata;
use crate::stats::Stats;
use prometheus_client::metrics::counter::Counter;

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
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Matcher::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Exact(s), Some(v)) => v == s,
            (Matcher::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (Matcher::Regex(r), Some(v)) => r.is_match(v),
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
            metadata.set(m.key.clone(), m.value.clone());
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Route name.
    pub name: Arc<str>,
    conditions: Vec<(String, Matcher)>,
    /// Destination cluster indices into the snapshot with their cumulative weights.
    destinations: Vec<(usize, u64)>,
    total_weight: u64,
    /// Set on the request.
    pub request_mutation: Vec<Mutation>,
    /// Set on the response.
    pub response_mutation: Vec<Mutation>,
    /// Deadline for the whole request.
    pub timeout: Option<Duration>,
    /// Requests this route matched.
    pub requests: Counter,
}

impl Route {
    /// True when every condition holds for `metadata`.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.conditions
            .iter()
            .all(|(key, m)| m.matches(metadata.get(key)))
    }

    /// Picks a destination cluster index, by weight when there are several.
    pub fn pick_cluster(&self) -> usize {
        if self.destinations.len() == 1 {
            return self.destinations[0].0;
        }
        let point = rand::thread_rng().gen_range(0..self.total_weight);
        self.destinations
            .iter()
            .find(|(_, upto)| point < *upto)
            .map_or(self.destinations[0].0, |(c, _)| *c)
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
}

impl RouteTable {
    /// Compiles `rc`; `cluster_index` resolves cluster names (validated beforehand).
    pub(crate) fn compile(
        rc: &config::RouteConfig,
        cluster_index: impl Fn(&str) -> Option<usize>,
        stats: &Stats,
    ) -> Result<Self, config::ConfigError> {
        let mut routes = Vec::with_capacity(rc.routes.len());
        for r in &rc.routes {
            let path = format!("routes[{}].routes[{}]", rc.name, r.name);
            let mut conditions = Vec::with_capacity(r.match_.attributes.len());
            for (key, m) in &r.match_.attributes {
                let matcher = if let Some(s) = &m.exact {
                    Matcher::Exact(s.clone())
                } else if let Some(s) = &m.prefix {
                    Matcher::Prefix(s.clone())
                } else if let Some(s) = &m.regex {
                    Matcher::Regex(config::compile_full_regex(s).map_err(|e| {
                        config::ConfigError {
                            path: format!("{path}.match.attributes.{key}.regex"),
                            message: format!("invalid regex: {e}"),
                        }
                    })?)
                } else {
                    Matcher::Present(m.present.unwrap_or(true))
                };
                conditions.push((key.clone(), matcher));
            }
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
                requests: stats.route(&rc.name, &r.name),
            });
        }
        Ok(Self {
            name: rc.name.clone(),
            routes,
        })
    }

    /// The first route matching `metadata`.
    pub fn route(&self, metadata: &Metadata) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(metadata))
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
        RouteTable::compile(&rc, |n| names.iter().position(|x| *x == n), &Stats::new())
            .expect("compile")
    }

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        let mut m = Metadata::new();
        for (k, v) in pairs {
            m.push_decoded(k.to_string(), v.to_string());
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
            counts[r.pick_cluster()] += 1;
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
