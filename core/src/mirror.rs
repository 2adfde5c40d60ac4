//! Traffic mirroring: a sampled share of a route's requests is copied, after the request
//! mutation, to a shadow cluster. The copy runs in a task of its own and its response is
//! dropped; copies in flight are bounded per route, and a copy that finds the bound
//! reached is dropped rather than queued, so a slow or dead shadow never delays or fails
//! the original request.

use std::sync::Arc;

use crate::health::Outcome;
use crate::listener::DEFAULT_ROUTE_TIMEOUT;
use crate::message::{Message, MessageKind, StreamState};
use crate::router::{MirrorPolicy, Route};
use crate::snapshot::Snapshot;

/// Sends a copy of `req` to the route's mirror cluster when the sample says so.
pub(crate) fn send(
    snapshot: &Arc<Snapshot>,
    policy: &MirrorPolicy,
    route: &Route,
    req: &Message,
    hash: Option<u64>,
) {
    if !policy.sample() {
        return;
    }
    // A body that streams through is not kept, so it cannot be sent twice.
    if req.stream != StreamState::End {
        policy.stats.dropped.inc();
        return;
    }
    let Ok(permit) = policy.in_flight.clone().try_acquire_owned() else {
        policy.stats.dropped.inc();
        return;
    };
    policy.stats.sent.inc();
    let copy = req.clone();
    let snapshot = snapshot.clone();
    let cluster_index = policy.cluster;
    let stats = policy.stats.clone();
    let deadline = route.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    tokio::spawn(async move {
        let _permit = permit;
        let ok = async {
            let cluster = snapshot.cluster(cluster_index)?;
            let protocol = cluster.protocol.as_ref()?;
            let (index, endpoint) = cluster.pick(hash, None)?;
            let expect_response = copy.kind != MessageKind::OnewayRequest;
            let outcome = if protocol.multiplexing() {
                let now = tokio::time::Instant::now();
                let call = endpoint
                    .pool
                    .call(&copy, expect_response, (now + deadline, now));
                match call.await {
                    Ok(Some(resp)) if resp.kind == MessageKind::Error => Outcome::ErrorStatus,
                    Ok(_) => Outcome::Success,
                    Err(_) => Outcome::LocalFailure,
                }
            } else {
                let call = crate::exchange::exchange_once(&endpoint.pool, &copy);
                match tokio::time::timeout(deadline, call).await {
                    Ok(Ok(MessageKind::Error)) => Outcome::ErrorStatus,
                    Ok(Ok(_)) => Outcome::Success,
                    _ => Outcome::LocalFailure,
                }
            };
            cluster.report(index, outcome);
            (outcome != Outcome::LocalFailure).then_some(())
        }
        .await;
        if ok.is_none() {
            stats.failed.inc();
        }
    });
}
