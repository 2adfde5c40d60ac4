//! Notes: what is accepted but not applied as written.

use serde_yaml_ng::Value;

use super::destination_rule::{DestinationRule, LoadBalancerSettings, TrafficPolicy};
use super::index::{applies_to_sidecars, classify_port, Index, PortKind};
use super::object::Object;
use super::MeshResources;
use crate::error::{Location, Note};

pub(super) fn collect(mesh: &MeshResources) -> Vec<Note> {
    let index = Index::new(mesh);
    let mut notes = Vec::new();
    let mut note = |loc: Location, message: String| {
        notes.push(Note {
            location: loc,
            message,
        })
    };
    fn at<S>(o: &Object<S>, path: impl Into<String>) -> Location {
        Location::new(&o.source, o.id(), path)
    }

    for s in mesh.skipped() {
        let name = match (s.namespace.is_empty(), s.name.is_empty()) {
            (_, true) => format!("document {}", s.source.document),
            (true, false) => format!("{}/default/{}", s.kind, s.name),
            (false, false) => format!("{}/{}/{}", s.kind, s.namespace, s.name),
        };
        note(
            Location {
                file: s.source.file.clone(),
                resource: name,
                path: s.path.clone(),
            },
            format!(
                "kind {} ({}) is not a mesh resource of this control plane; skipped",
                s.kind,
                if s.api_version.is_empty() {
                    "no apiVersion"
                } else {
                    &s.api_version
                }
            ),
        );
    }

    for se in mesh.service_entries() {
        for (i, p) in se.spec.ports.iter().enumerate() {
            if let PortKind::Other(why) = classify_port(p, mesh.protocols()) {
                note(
                    at(se, format!("spec.ports[{i}]")),
                    format!("port {} skipped: {why}", p.number),
                );
            }
        }
        if se.spec.workload_selector.is_some() {
            note(
                at(se, "spec.workloadSelector"),
                "ignored: there is no workload registry, endpoints come from spec.endpoints only"
                    .into(),
            );
        }
    }

    for dr in mesh.destination_rules() {
        let h = &dr.spec.host;
        if !h.is_empty() && !h.contains('*') && index.service(h).is_none() {
            note(
                at(dr, "spec.host"),
                format!("no ServiceEntry defines host {h:?}; the rule is unused"),
            );
        }
        if dr.spec.workload_selector.is_some() {
            note(
                at(dr, "spec.workloadSelector"),
                "ignored: the rule applies to every proxy".into(),
            );
        }
        let top = dr.spec.traffic_policy.as_ref();
        if let Some(tp) = top {
            policy_notes(dr, "spec.trafficPolicy", tp, false, &mut note);
        }
        let inherited = top.is_some_and(|t| t.outlier_detection.is_some());
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                let p = format!("spec.subsets[{i}].trafficPolicy");
                policy_notes(dr, &p, tp, inherited, &mut note);
            }
        }
    }

    for mr in mesh.meta_routers() {
        if !applies_to_sidecars(mr) {
            note(
                at(mr, "spec.gateways"),
                "names gateways only (no `mesh`): the routes do not apply to sidecar proxies"
                    .into(),
            );
        }
        if mr.spec.global_rate_limit.is_some() {
            note(
                at(mr, "spec.globalRateLimit"),
                "ignored: global rate limiting is not supported; requests are not limited by it"
                    .into(),
            );
        }
    }

    for h in mesh.lua_hooks() {
        for (i, host) in h.spec.hosts.iter().enumerate() {
            if !host.is_empty() && index.service(host).is_none_or(|s| s.ports.is_empty()) {
                note(
                    at(h, format!("spec.hosts[{i}]")),
                    format!(
                        "no meta-protocol service has host {host:?}; the hook does not run for it"
                    ),
                );
            }
        }
    }
    notes
}

fn tls_enabled(v: &Value) -> bool {
    v.get("mode").and_then(Value::as_str) != Some("DISABLE")
}

/// Notes about one traffic policy; `inherited_outlier` says whether the policy below it
/// (the rule's, for a subset) sets outlier detection.
fn policy_notes(
    dr: &DestinationRule,
    p: &str,
    tp: &TrafficPolicy,
    inherited_outlier: bool,
    note: &mut impl FnMut(Location, String),
) {
    let at = |path: String| Location::new(&dr.source, dr.id(), path);
    if tp.tls.as_ref().is_some_and(tls_enabled) {
        note(
            at(format!("{p}.tls")),
            "ignored: upstream connections are plaintext".into(),
        );
    }
    if tp.tunnel.is_some() {
        note(at(format!("{p}.tunnel")), "ignored: not supported".into());
    }
    if tp.proxy_protocol.is_some() {
        note(
            at(format!("{p}.proxyProtocol")),
            "ignored: not supported".into(),
        );
    }
    let parts = |lb: Option<&LoadBalancerSettings>,
                 has_outlier: bool,
                 p: String,
                 note: &mut dyn FnMut(Location, String)| {
        let Some(lb) = lb else { return };
        let lp = format!("{p}.loadBalancer");
        if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
            note(
                at(lp.clone()),
                "ignored: endpoint warm-up is not supported".into(),
            );
        }
        if let Some(ch) = &lb.consistent_hash {
            for (name, set) in [
                ("httpCookie", ch.http_cookie.is_some()),
                ("useSourceIp", ch.use_source_ip.is_some()),
                (
                    "httpQueryParameterName",
                    ch.http_query_parameter_name.is_some(),
                ),
            ] {
                if set {
                    note(
                        at(format!("{lp}.consistentHash.{name}")),
                        "ignored: only httpHeaderName (an attribute name) can be hashed; requests are balanced at random on the ring".into(),
                    );
                }
            }
        }
        if let Some(l) = &lb.locality_lb_setting {
            let lp = format!("{lp}.localityLbSetting");
            if !l.failover_priority.is_empty() {
                note(
                    at(format!("{lp}.failoverPriority")),
                    "ignored: label-based failover is not supported".into(),
                );
            }
            if l.enabled != Some(false) && l.distribute.is_empty() && !has_outlier {
                note(
                    at(lp),
                    "locality failover needs outlierDetection in the same policy (as in Istio): without it no locality preference applies".into(),
                );
            }
        }
    };
    let outlier = tp.outlier_detection.is_some() || inherited_outlier;
    parts(tp.load_balancer.as_ref(), outlier, p.to_owned(), note);
    for (k, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{p}.portLevelSettings[{k}]");
        if pl.tls.as_ref().is_some_and(tls_enabled) {
            note(
                at(format!("{pp}.tls")),
                "ignored: upstream connections are plaintext".into(),
            );
        }
        parts(
            pl.load_balancer.as_ref(),
            pl.outlier_detection.is_some(),
            pp,
            note,
        );
    }
}
