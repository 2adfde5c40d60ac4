//! `MetaRouter`: Aeraki's routing resource for meta protocols, with metamesh's additions
//! (`timeout`, `retries`, `hashPolicy`).

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::object::Object;

/// API versions a `MetaRouter` may be written in.
pub const API_VERSIONS: &[&str] = &["metamesh.io/v1alpha1", "metaprotocol.aeraki.io/v1alpha1"];

/// A `MetaRouter` resource.
pub type MetaRouter = Object<MetaRouterSpec>;

/// Routes for the meta-protocol ports of some services.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetaRouterSpec {
    /// The services (ServiceEntry hosts) whose traffic these routes apply to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where the routes apply (Istio's VirtualService `gateways`): empty or containing
    /// `mesh` means the sidecars; a MetaRouter for gateways only does not reach sidecars.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Routes in match order: the first that matches wins.
    #[serde(default)]
    pub routes: Vec<MetaRoute>,
    /// A token bucket for the services' requests.
    #[serde(default)]
    pub local_rate_limit: Option<LocalRateLimit>,
    /// Aeraki's global rate limit service: accepted and ignored (noted).
    #[serde(default)]
    pub global_rate_limit: Option<IgnoredAny>,
    /// Visibility across namespaces: accepted and ignored.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One route.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetaRoute {
    /// Name (default `route-N`, N its position).
    #[serde(default)]
    pub name: String,
    /// Conditions; none matches every request.
    #[serde(default, rename = "match")]
    pub match_: Option<MetaRouteMatch>,
    /// Destinations; several with weights split the traffic.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// A shadow destination for a copy of the traffic.
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Share of the traffic mirrored (default 100).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Attributes set on requests.
    #[serde(default)]
    pub request_mutation: Vec<KeyValue>,
    /// Attributes set on responses.
    #[serde(default)]
    pub response_mutation: Vec<KeyValue>,
    /// Deadline of the whole request, e.g. `2s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Attributes hashed for consistent-hash balancing.
    #[serde(default)]
    pub hash_policy: Vec<String>,
}

/// Conditions on request attributes, all of which must hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetaRouteMatch {
    /// Attribute name to condition; an empty condition (`{}` or nothing) checks that
    /// the attribute is present, as Aeraki does.
    #[serde(default)]
    pub attributes: BTreeMap<String, Option<StringMatch>>,
}

/// A condition on one attribute value: at most one field is set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    /// The value equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The whole value matches this RE2-style expression (`*` alone: present, as Aeraki).
    #[serde(default)]
    pub regex: Option<String>,
}

/// A weighted destination.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where to send.
    #[serde(default)]
    pub destination: Destination,
    /// Share of the traffic (relative).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A service, optionally one of its subsets and one of its ports.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// A ServiceEntry host.
    #[serde(default)]
    pub host: String,
    /// A subset defined by the host's DestinationRule.
    #[serde(default)]
    pub subset: Option<String>,
    /// The port (default: see the documentation of the destination port).
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// A port by number.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    /// Port number.
    #[serde(default)]
    pub number: u32,
}

/// A percentage, 0 to 100.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Percent {
    /// The value.
    #[serde(default)]
    pub value: f64,
}

/// An attribute to set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyValue {
    /// Attribute name.
    #[serde(default)]
    pub key: String,
    /// Attribute value.
    #[serde(default)]
    pub value: String,
}

/// Retry policy.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Extra attempts after the first.
    #[serde(default)]
    pub attempts: u32,
    /// Deadline of each attempt.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Failures retried: a comma-separated string (Istio's form) or a list.
    #[serde(default)]
    pub retry_on: Option<RetryOnSpec>,
    /// The route's requests are safe to repeat.
    #[serde(default)]
    pub idempotent: bool,
}

/// `retryOn` as a comma-separated string or as a list.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RetryOnSpec {
    /// `connect-failure,reset`.
    Text(String),
    /// `[connect-failure, reset]`.
    List(Vec<String>),
}

impl RetryOnSpec {
    /// The individual conditions, trimmed, empty ones dropped.
    pub fn items(&self) -> Vec<String> {
        let raw: Vec<&str> = match self {
            RetryOnSpec::Text(t) => t.split(',').collect(),
            RetryOnSpec::List(l) => l.iter().map(String::as_str).collect(),
        };
        raw.into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Aeraki's local rate limit.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRateLimit {
    /// The bucket for every request (or, with `conditions`, for the others).
    #[serde(default)]
    pub token_bucket: Option<TokenBucket>,
    /// Buckets for requests matching conditions.
    #[serde(default)]
    pub conditions: Vec<RateLimitCondition>,
}

/// A token bucket.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenBucket {
    /// Bucket size, and the tokens it starts with.
    #[serde(default)]
    pub max_tokens: u32,
    /// Tokens added per fill (default 1, as Aeraki and Envoy).
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    /// Time between fills, e.g. `1s`.
    #[serde(default)]
    pub fill_interval: String,
}

/// A bucket for the requests matching a condition.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitCondition {
    /// The condition.
    #[serde(default, rename = "match")]
    pub match_: MetaRouteMatch,
    /// The bucket.
    #[serde(default)]
    pub token_bucket: TokenBucket,
}
