//! Localities as Istio writes them (`region/zone/subzone`, trailing `*` wildcards) and the
//! per-proxy locality decisions Istio's control plane makes: `distribute` weights and
//! `failover` priorities.

use std::collections::BTreeMap;

use metamesh_core::config::Locality;

use crate::resources::destination_rule::{Distribute, Failover};

/// Parses an endpoint locality, `region[/zone[/subzone]]`.
pub(crate) fn parse(text: &str) -> Result<Locality, String> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.len() > 3 {
        return Err(format!(
            "{text:?} has more than three parts (expected region/zone/subzone)"
        ));
    }
    let get = |i: usize| {
        parts
            .get(i)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let loc = Locality {
        region: get(0),
        zone: get(1),
        subzone: get(2),
    };
    if loc.region.is_empty() && !(loc.zone.is_empty() && loc.subzone.is_empty()) {
        return Err(format!("{text:?} has a zone but no region"));
    }
    if loc.zone.is_empty() && !loc.subzone.is_empty() {
        return Err(format!("{text:?} has a subzone but no zone"));
    }
    if [&loc.region, &loc.zone, &loc.subzone]
        .iter()
        .any(|p| p.contains('*'))
    {
        return Err(format!(
            "{text:?}: an endpoint locality cannot be a wildcard"
        ));
    }
    Ok(loc)
}

/// Checks a locality pattern of `distribute`: up to three non-empty parts, and `*` only as
/// the whole last part.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    let parts: Vec<&str> = pattern.split('/').collect();
    if pattern.is_empty() {
        return Err("a locality must not be empty".into());
    }
    if parts.len() > 3 {
        return Err(format!(
            "locality {pattern:?} has more than three parts (region/zone/subzone)"
        ));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "locality {pattern:?} must not contain an empty region, zone or subzone"
        ));
    }
    let stars = pattern.matches('*').count();
    if stars > 1 || (stars == 1 && parts.last() != Some(&"*")) {
        return Err(format!(
            "locality {pattern:?}: a wildcard `*` may only be the whole last part"
        ));
    }
    Ok(())
}

/// The literal parts of a pattern (without a trailing `*`).
fn literal_parts(pattern: &str) -> Vec<&str> {
    pattern.split('/').filter(|p| *p != "*").collect()
}

/// True when some locality matches both patterns (Istio refuses such `to` keys or
/// `from` values side by side).
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (literal_parts(a), literal_parts(b));
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Istio's locality match: a missing zone or subzone in the pattern matches any, and `*`
/// matches anything.
pub(crate) fn matches(loc: &Locality, pattern: &str) -> bool {
    let mut parts = pattern.split('/');
    let region = parts.next().unwrap_or("");
    let zone = parts.next().unwrap_or("");
    let subzone = parts.next().unwrap_or("");
    (region == "*" || loc.region == region)
        && (zone == "*" || zone.is_empty() || loc.zone == zone)
        && (subzone == "*" || subzone.is_empty() || loc.subzone == subzone)
}

type Key = (String, String, String);

fn key(l: &Locality) -> Key {
    (l.region.clone(), l.zone.clone(), l.subzone.clone())
}

/// What `distribute` decides for one proxy.
#[derive(Debug, PartialEq)]
pub(crate) struct Distribution {
    /// Weight of each endpoint locality that gets traffic, by locality.
    pub weights: Vec<(Locality, u32)>,
    /// Per endpoint: whether it stays in the cluster (localities no `to` entry covers are
    /// dropped, as Istio drops them).
    pub keep: Vec<bool>,
}

/// Istio's `distribute` for a proxy at `node`: the first rule whose `from` matches the
/// node applies. Each `to` pattern's weight is divided between the endpoint localities it
/// covers in proportion to their endpoint weights, rounded up. `None` when no rule
/// applies (then no locality weighting happens, as in Istio).
///
/// `endpoints` are each endpoint's locality and weight.
pub(crate) fn distribute(
    node: &Locality,
    rules: &[Distribute],
    endpoints: &[(Locality, u32)],
) -> Option<Distribution> {
    let rule = rules.iter().find(|r| matches(node, &r.from))?;
    // Endpoint weight sum per locality.
    let mut sums: BTreeMap<Key, (Locality, u64)> = BTreeMap::new();
    for (loc, w) in endpoints {
        let e = sums.entry(key(loc)).or_insert_with(|| (loc.clone(), 0));
        e.1 = e.1.saturating_add(u64::from((*w).max(1)));
    }
    let mut assigned: BTreeMap<Key, u32> = BTreeMap::new();
    let mut covered: BTreeMap<Key, bool> = BTreeMap::new();
    for (pattern, &weight) in &rule.to {
        let members: Vec<(&Key, u64)> = sums
            .iter()
            .filter(|(k, (loc, _))| !covered.contains_key(*k) && matches(loc, pattern))
            .map(|(k, (_, sum))| (k, *sum))
            .collect();
        let total: u64 = members.iter().fold(0u64, |a, (_, s)| a.saturating_add(*s));
        for (k, sum) in members {
            covered.insert(k.clone(), true);
            let share = sum.saturating_mul(u64::from(weight)).div_ceil(total.max(1));
            if share > 0 {
                assigned.insert(k.clone(), u32::try_from(share).unwrap_or(u32::MAX));
            }
        }
    }
    let weights = assigned
        .into_iter()
        .filter_map(|(k, w)| sums.get(&k).map(|(loc, _)| (loc.clone(), w)))
        .collect();
    let keep = endpoints
        .iter()
        .map(|(loc, _)| covered.contains_key(&key(loc)))
        .collect();
    Some(Distribution { weights, keep })
}

/// Istio's rank of an endpoint for a proxy: 0 same subzone, 1 same zone, 2 same region,
/// 3 elsewhere.
fn rank(node: &Locality, ep: &Locality) -> u32 {
    if node.region != ep.region {
        3
    } else if node.zone != ep.zone {
        2
    } else if node.subzone != ep.subzone {
        1
    } else {
        0
    }
}

/// Istio's `failover` priorities for a proxy at `node`: the rank above, except that when
/// a rule's `from` is the node's region, endpoints elsewhere than its `to` region come
/// after those in it. The distinct values are then renumbered 0, 1, 2, …
pub(crate) fn failover_priorities(
    node: &Locality,
    failover: &[Failover],
    endpoints: &[Locality],
) -> Vec<u32> {
    let raw: Vec<u32> = endpoints
        .iter()
        .map(|ep| {
            let r = rank(node, ep);
            if r == 3 {
                if let Some(f) = failover.iter().find(|f| f.from == node.region) {
                    if ep.region != f.to {
                        return 4;
                    }
                }
            }
            r
        })
        .collect();
    let mut distinct = raw.clone();
    distinct.sort_unstable();
    distinct.dedup();
    raw.iter()
        .map(|p| distinct.iter().position(|d| d == p).unwrap_or(0) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        parse(s).expect("locality")
    }

    #[test]
    fn parses_endpoint_localities() {
        assert_eq!(
            loc("bj/800002"),
            Locality {
                region: "bj".into(),
                zone: "800002".into(),
                subzone: String::new()
            }
        );
        assert_eq!(loc(""), Locality::default());
        assert!(parse("a/b/c/d").is_err());
        assert!(parse("/z").is_err());
        assert!(parse("a//s").is_err());
        assert!(parse("a/*").is_err());
    }

    #[test]
    fn patterns_follow_istio() {
        assert!(matches(&loc("bj/800002/x"), "bj/800002"));
        assert!(matches(&loc("bj/800002/x"), "bj/*"));
        assert!(matches(&loc("bj/800002/x"), "*"));
        assert!(matches(&loc("bj/800002"), "bj"));
        assert!(!matches(&loc("bj/800005"), "bj/800002/*"));
        assert!(!matches(&loc("sh/1"), "bj/*"));
        assert!(check_pattern("bj/800002/*").is_ok());
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("bj*").is_err());
        assert!(check_pattern("*/x").is_err());
        assert!(check_pattern("bj//x").is_err());
        assert!(check_pattern("").is_err());
        assert!(overlaps("bj/*", "bj/800002"));
        assert!(overlaps("*", "sh"));
        assert!(!overlaps("bj/800002", "bj/800005/*"));
    }

    fn rule(from: &str, to: &[(&str, u32)]) -> Distribute {
        Distribute {
            from: from.into(),
            to: to.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
        }
    }

    #[test]
    fn distribute_exact_and_wildcard() {
        let eps = vec![
            (loc("bj/800002"), 1),
            (loc("bj/800005"), 1),
            (loc("sh/1"), 1),
        ];
        let d = distribute(
            &loc("bj/800002"),
            &[rule("bj/800002/*", &[("bj/800002", 90), ("bj/800005", 10)])],
            &eps,
        )
        .expect("applies");
        assert_eq!(
            d.weights,
            vec![(loc("bj/800002"), 90), (loc("bj/800005"), 10)]
        );
        assert_eq!(d.keep, vec![true, true, false]);

        // A wildcard's weight is divided by endpoint weight and rounded up: 3 and 1 of 4
        // endpoints' weight share 80 as 60 and 20.
        let eps = vec![
            (loc("bj/a"), 2),
            (loc("bj/a"), 1),
            (loc("bj/b"), 1),
            (loc("sh/c"), 1),
        ];
        let d = distribute(
            &loc("sh/c"),
            &[rule("sh/*", &[("bj/*", 80), ("sh", 20)])],
            &eps,
        )
        .expect("applies");
        assert_eq!(
            d.weights,
            vec![(loc("bj/a"), 60), (loc("bj/b"), 20), (loc("sh/c"), 20)]
        );
        // Thirds round up.
        let eps = vec![(loc("x/a"), 1), (loc("x/b"), 1), (loc("x/c"), 1)];
        let d = distribute(&loc("x/a"), &[rule("*", &[("x", 100)])], &eps).expect("applies");
        assert!(d.weights.iter().all(|(_, w)| *w == 34), "{:?}", d.weights);

        assert!(distribute(&loc("gz/1"), &[rule("bj/*", &[("bj", 100)])], &eps).is_none());
    }

    #[test]
    fn failover_follows_istio() {
        let node = loc("bj/800002/a");
        let eps = vec![
            loc("bj/800002/a"),
            loc("bj/800002/b"),
            loc("bj/800005"),
            loc("sh/1"),
            loc("gz/1"),
        ];
        assert_eq!(failover_priorities(&node, &[], &eps), vec![0, 1, 2, 3, 3]);
        let f = [Failover {
            from: "bj".into(),
            to: "sh".into(),
        }];
        assert_eq!(failover_priorities(&node, &f, &eps), vec![0, 1, 2, 3, 4]);
        // Gaps are closed: no same-zone endpoint.
        let eps = vec![loc("bj/800005"), loc("sh/1"), loc("gz/1")];
        assert_eq!(failover_priorities(&node, &f, &eps), vec![0, 1, 2]);
        // A rule for another region changes nothing.
        let g = [Failover {
            from: "sh".into(),
            to: "gz".into(),
        }];
        assert_eq!(failover_priorities(&node, &g, &eps), vec![0, 1, 1]);
    }
}
