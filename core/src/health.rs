//! Endpoint health and cluster resource limits.
//!
//! - Outlier detection (passive): every upstream outcome is reported; consecutive error
//!   responses, or consecutive connect failures, resets and timeouts, eject an endpoint
//!   for the base ejection time multiplied by the number of times it was ejected (the
//!   count decays by one per healthy interval), never more than the cluster's maximum
//!   ejection percentage at once (one endpoint can always be ejected), as Envoy does.
//! - Active health checks: a task per endpoint probes it on a connection of its own, by
//!   TCP connect or with the protocol's heartbeat, and flips it unhealthy or healthy after
//!   the configured number of failures or passes in a row.
//! - Circuit breakers: per-cluster counts of connections, requests waiting for a
//!   connection, requests and retries in flight, each with a limit.
//!
//! Every health change bumps the cluster's health version; the cluster rebuilds its
//! load balancer on the next pick that sees a new version, so the request path reads one
//! atomic to know that nothing changed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::codec::{Codec, CodecOptions, EncodedFrame, Protocol, Side};
use crate::config;
use crate::message::MessageKind;
use crate::stats::ClusterStats;
use crate::upstream::EndpointPool;

/// A cluster resource with a circuit-breaker limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Upstream connections open.
    Connections,
    /// Requests waiting for a connection.
    Pending,
    /// Requests in flight.
    Requests,
    /// Retries in flight.
    Retries,
}

impl Resource {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Pending => "pending",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
        }
    }

    fn index(self) -> usize {
        match self {
            Resource::Connections => 0,
            Resource::Pending => 1,
            Resource::Requests => 2,
            Resource::Retries => 3,
        }
    }
}

/// State of one cluster that outlives configuration snapshots: health version and
/// circuit-breaker counters.
pub struct ClusterShared {
    version: AtomicU64,
    limits: [AtomicUsize; 4],
    counts: [AtomicUsize; 4],
    stats: ClusterStats,
}

impl ClusterShared {
    /// Fresh state with no limits.
    pub fn new(stats: ClusterStats) -> Self {
        Self {
            version: AtomicU64::new(0),
            limits: std::array::from_fn(|_| AtomicUsize::new(usize::MAX)),
            counts: std::array::from_fn(|_| AtomicUsize::new(0)),
            stats,
        }
    }

    /// The metric handles.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Sets the limits from the cluster's configuration (unset: unlimited).
    pub fn set_limits(&self, cb: Option<&config::CircuitBreakers>) {
        let get = |v: Option<u32>| v.map_or(usize::MAX, |v| v as usize);
        let cb = cb.cloned().unwrap_or_default();
        let values = [
            get(cb.max_connections),
            get(cb.max_pending_requests),
            get(cb.max_requests),
            get(cb.max_retries),
        ];
        for (slot, v) in self.limits.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// The health version: changes whenever an endpoint's health does.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Records that an endpoint's health changed.
    pub fn health_changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one unit of `r`, or counts an overflow and returns `None` at the limit.
    pub fn acquire(&self, r: Resource) -> Option<ResourceGuard<'_>> {
        self.try_take(r).then(|| ResourceGuard { shared: self, r })
    }

    /// As [`ClusterShared::acquire`], holding the state by `Arc` (for connections).
    pub fn acquire_owned(self: &Arc<Self>, r: Resource) -> Option<OwnedResourceGuard> {
        self.try_take(r).then(|| OwnedResourceGuard {
            shared: self.clone(),
            r,
        })
    }

    fn try_take(&self, r: Resource) -> bool {
        let i = r.index();
        let limit = self.limits[i].load(Ordering::Relaxed);
        let prev = self.counts[i].fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.counts[i].fetch_sub(1, Ordering::AcqRel);
            self.stats.overflow(r.as_str());
            return false;
        }
        true
    }

    /// Units of `r` in use.
    pub fn in_use(&self, r: Resource) -> usize {
        self.counts[r.index()].load(Ordering::Relaxed)
    }
}

/// One unit of a cluster resource, given back when dropped.
pub struct ResourceGuard<'a> {
    shared: &'a ClusterShared,
    r: Resource,
}

impl Drop for ResourceGuard<'_> {
    fn drop(&mut self) {
        self.shared.counts[self.r.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

/// One unit of a cluster resource held by `Arc`, given back when dropped.
pub struct OwnedResourceGuard {
    shared: Arc<ClusterShared>,
    r: Resource,
}

impl Drop for OwnedResourceGuard {
    fn drop(&mut self) {
        self.shared.counts[self.r.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

/// What became of one upstream attempt, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not an error.
    Success,
    /// A response with a protocol error status.
    ErrorStatus,
    /// Connect failure, reset or timeout: the proxy saw no response.
    LocalFailure,
}

/// Compiled outlier detection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierSettings {
    /// Errors in a row that eject.
    pub consecutive_errors: u32,
    /// Local-origin failures in a row that eject, counted apart when set.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Decay period of the ejection count.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
}

impl OutlierSettings {
    /// Compiles the configuration with Envoy's defaults.
    pub fn new(o: &config::OutlierDetection) -> Self {
        let base = o
            .base_ejection_time
            .map_or(Duration::from_secs(30), |d| d.0);
        Self {
            consecutive_errors: o.consecutive_errors.unwrap_or(5).max(1),
            consecutive_local_origin_failures: o.consecutive_local_origin_failures,
            interval: o.interval.map_or(Duration::from_secs(10), |d| d.0),
            base_ejection_time: base,
            max_ejection_time: o
                .max_ejection_time
                .map_or(Duration::from_secs(300), |d| d.0)
                .max(base),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
        }
    }

    /// How many of `hosts` endpoints may be ejected at once (at least one).
    pub fn max_ejected(&self, hosts: usize) -> usize {
        (hosts * self.max_ejection_percent as usize / 100).max(1)
    }
}

/// Health of one endpoint.
#[derive(Default)]
pub struct HostHealth {
    ejected: AtomicBool,
    hc_failed: AtomicBool,
    consecutive_errors: AtomicU32,
    consecutive_local: AtomicU32,
    ejections: Mutex<EjectionHistory>,
}

#[derive(Default)]
struct EjectionHistory {
    count: u32,
    last_unejected: Option<Instant>,
}

/// The health an endpoint is in, for the admin page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Takes traffic.
    Healthy,
    /// Ejected by outlier detection.
    Ejected,
    /// Failing its active health check.
    FailedHealthCheck,
}

impl HealthState {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Ejected => "ejected",
            HealthState::FailedHealthCheck => "failed_health_check",
        }
    }
}

impl HostHealth {
    /// True when the endpoint takes traffic.
    pub fn healthy(&self) -> bool {
        !self.ejected.load(Ordering::Acquire) && !self.hc_failed.load(Ordering::Acquire)
    }

    /// True while outlier detection has it ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Its state, for the admin page.
    pub fn state(&self) -> HealthState {
        if self.hc_failed.load(Ordering::Acquire) {
            HealthState::FailedHealthCheck
        } else if self.ejected.load(Ordering::Acquire) {
            HealthState::Ejected
        } else {
            HealthState::Healthy
        }
    }

    /// Counts an outcome; true when it crossed an ejection threshold.
    pub fn record(&self, outcome: Outcome, s: &OutlierSettings) -> bool {
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        match outcome {
            Outcome::Success => {
                // Loads first: the common case writes nothing, so endpoints shared by
                // many cores do not bounce a cache line per request.
                if self.consecutive_errors.load(Ordering::Relaxed) != 0 {
                    self.consecutive_errors.store(0, Ordering::Relaxed);
                }
                if self.consecutive_local.load(Ordering::Relaxed) != 0 {
                    self.consecutive_local.store(0, Ordering::Relaxed);
                }
                false
            }
            Outcome::ErrorStatus => bump(&self.consecutive_errors) >= s.consecutive_errors,
            Outcome::LocalFailure => match s.consecutive_local_origin_failures {
                Some(limit) => bump(&self.consecutive_local) >= limit,
                None => bump(&self.consecutive_errors) >= s.consecutive_errors,
            },
        }
    }

    /// Marks the endpoint ejected; returns how long for, or `None` when it already was.
    pub fn eject(&self, s: &OutlierSettings, now: Instant) -> Option<Duration> {
        if self.ejected.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.consecutive_errors.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
        let mut h = self.ejections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = h.last_unejected {
            // One step back for every whole interval spent healthy since.
            let healthy_for = now.saturating_duration_since(at);
            let steps = healthy_for.as_nanos() / s.interval.as_nanos().max(1);
            h.count = h
                .count
                .saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
        }
        h.count = h.count.saturating_add(1);
        Some(
            s.base_ejection_time
                .saturating_mul(h.count)
                .min(s.max_ejection_time),
        )
    }

    /// Ends an ejection.
    pub fn uneject(&self, now: Instant) {
        if self.ejected.swap(false, Ordering::AcqRel) {
            let mut h = self.ejections.lock().unwrap_or_else(|p| p.into_inner());
            h.last_unejected = Some(now);
        }
    }

    /// Sets the active health check verdict; true when it changed.
    pub fn set_hc_failed(&self, failed: bool) -> bool {
        self.hc_failed.swap(failed, Ordering::AcqRel) != failed
    }

    /// Times this endpoint has been ejected (after decay), for tests.
    pub fn ejection_count(&self) -> u32 {
        self.ejections.lock().map_or(0, |h| h.count)
    }
}

/// Compiled active health check settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// Probe kind.
    pub kind: config::HealthCheckKind,
    /// Time between probes.
    pub interval: Duration,
    /// Deadline of a probe.
    pub timeout: Duration,
    /// Failures in a row that mark unhealthy.
    pub unhealthy_threshold: u32,
    /// Passes in a row that mark healthy.
    pub healthy_threshold: u32,
}

impl HealthCheckSettings {
    /// Compiles the configuration with Envoy-like defaults.
    pub fn new(h: &config::HealthCheck) -> Self {
        Self {
            kind: h.kind,
            interval: h.interval.map_or(Duration::from_secs(5), |d| d.0),
            timeout: h.timeout.map_or(Duration::from_secs(1), |d| d.0),
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3).max(1),
            healthy_threshold: h.healthy_threshold.unwrap_or(1).max(1),
        }
    }
}

/// A kept connection for heartbeat probes.
struct ProbeConnection {
    stream: TcpStream,
    codec: Box<dyn Codec>,
    buf: BytesMut,
    next_id: u64,
}

/// Probes the endpoint of `pool` until the pool is dropped.
pub(crate) async fn run_health_check(
    pool: Weak<EndpointPool>,
    settings: HealthCheckSettings,
    shared: Arc<ClusterShared>,
) {
    let mut conn: Option<ProbeConnection> = None;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let Some(p) = pool.upgrade() else { return };
        let ok = match settings.kind {
            config::HealthCheckKind::Tcp => tcp_probe(p.address(), settings.timeout).await,
            config::HealthCheckKind::Heartbeat => {
                let ok = tokio::time::timeout(settings.timeout, heartbeat_probe(&p, &mut conn))
                    .await
                    .unwrap_or(false);
                if !ok {
                    conn = None;
                }
                ok
            }
        };
        let stats = shared.stats();
        if ok {
            stats.hc_success.inc();
            passes = passes.saturating_add(1);
            failures = 0;
            if passes >= settings.healthy_threshold && p.health().set_hc_failed(false) {
                tracing::info!(cluster = stats.name(), endpoint = %p.address(), "health check passing: endpoint healthy");
                shared.health_changed();
            }
        } else {
            stats.hc_failure.inc();
            failures = failures.saturating_add(1);
            passes = 0;
            if failures >= settings.unhealthy_threshold && p.health().set_hc_failed(true) {
                tracing::warn!(cluster = stats.name(), endpoint = %p.address(), "health check failing: endpoint unhealthy");
                shared.health_changed();
            }
        }
        drop(p);
        tokio::time::sleep(settings.interval).await;
    }
}

async fn tcp_probe(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Sends the protocol's heartbeat on a kept connection and waits for its answer.
async fn heartbeat_probe(pool: &EndpointPool, conn: &mut Option<ProbeConnection>) -> bool {
    let protocol: &Arc<dyn Protocol> = pool.protocol();
    let Some(probe) = protocol.heartbeat_request() else {
        return false;
    };
    if conn.is_none() {
        let Ok(stream) = TcpStream::connect(pool.address()).await else {
            return false;
        };
        let _ = stream.set_nodelay(true);
        let options = CodecOptions {
            side: Side::Upstream,
            max_frame_size: pool.settings().max_frame_size,
            protocol_options: pool.settings().protocol_options.clone(),
        };
        *conn = Some(ProbeConnection {
            stream,
            codec: protocol.codec(&options),
            buf: BytesMut::with_capacity(512),
            next_id: 0,
        });
    }
    let Some(c) = conn.as_mut() else { return false };
    c.next_id = (c.next_id % 0x7fff_fffe) + 1;
    let id = c.next_id;
    let mut frame = EncodedFrame::new();
    if c.codec.encode(&probe, id, &mut frame).is_err() {
        return false;
    }
    for chunk in frame.parts() {
        if c.stream.write_all(chunk).await.is_err() {
            return false;
        }
    }
    loop {
        match c.codec.decode(&mut c.buf) {
            Ok(Some(m)) => {
                if matches!(m.kind, MessageKind::Heartbeat | MessageKind::Event)
                    && m.request_id == id
                {
                    return true;
                }
                // An unrelated frame (a heartbeat the server sends itself): answer it
                // if it asks, then keep waiting.
                if let Some(reply) = protocol.heartbeat_reply(&m) {
                    let mut out = EncodedFrame::new();
                    if c.codec.encode(&reply, reply.request_id, &mut out).is_ok() {
                        for chunk in out.parts() {
                            if c.stream.write_all(chunk).await.is_err() {
                                return false;
                            }
                        }
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => return false,
        }
        match c.stream.read_buf(&mut c.buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(errors: u32, local: Option<u32>) -> OutlierSettings {
        OutlierSettings::new(&config::OutlierDetection {
            consecutive_errors: Some(errors),
            consecutive_local_origin_failures: local,
            interval: Some(config::ConfigDuration(Duration::from_secs(10))),
            base_ejection_time: Some(config::ConfigDuration(Duration::from_secs(30))),
            max_ejection_time: Some(config::ConfigDuration(Duration::from_secs(100))),
            max_ejection_percent: Some(50),
        })
    }

    #[test]
    fn consecutive_errors_trip_and_a_success_resets_the_count() {
        let s = settings(3, None);
        let h = HostHealth::default();
        assert!(!h.record(Outcome::ErrorStatus, &s));
        assert!(!h.record(Outcome::LocalFailure, &s));
        assert!(!h.record(Outcome::Success, &s));
        assert!(!h.record(Outcome::ErrorStatus, &s));
        assert!(!h.record(Outcome::ErrorStatus, &s));
        assert!(
            h.record(Outcome::LocalFailure, &s),
            "local failures count as errors"
        );
    }

    #[test]
    fn local_origin_failures_count_apart_when_configured() {
        let s = settings(5, Some(2));
        let h = HostHealth::default();
        for _ in 0..4 {
            assert!(!h.record(Outcome::ErrorStatus, &s));
        }
        assert!(!h.record(Outcome::LocalFailure, &s));
        assert!(h.record(Outcome::LocalFailure, &s));
        assert!(
            h.record(Outcome::ErrorStatus, &s),
            "the fifth error in a row"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_and_decays_while_healthy() {
        let s = settings(1, None);
        let h = HostHealth::default();
        let t0 = Instant::now();
        assert_eq!(h.eject(&s, t0), Some(Duration::from_secs(30)));
        assert_eq!(h.eject(&s, t0), None, "already ejected");
        assert!(!h.healthy());
        h.uneject(t0 + Duration::from_secs(30));
        assert!(h.healthy());
        // Ejected again within one interval: twice the base.
        let t1 = t0 + Duration::from_secs(35);
        assert_eq!(h.eject(&s, t1), Some(Duration::from_secs(60)));
        h.uneject(t1 + Duration::from_secs(60));
        let t2 = t1 + Duration::from_secs(61);
        assert_eq!(h.eject(&s, t2), Some(Duration::from_secs(90)));
        h.uneject(t2);
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(
            h.eject(&s, t3),
            Some(Duration::from_secs(100)),
            "capped at max_ejection_time"
        );
        h.uneject(t3);
        // 25 s healthy: two intervals, the count drops from 4 to 2, then 3 with this one.
        assert_eq!(
            h.eject(&s, t3 + Duration::from_secs(25)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(h.ejection_count(), 3);
    }

    #[test]
    fn max_ejected_allows_at_least_one() {
        let s = settings(1, None);
        assert_eq!(s.max_ejected(1), 1);
        assert_eq!(s.max_ejected(3), 1);
        assert_eq!(s.max_ejected(10), 5);
    }

    #[test]
    fn circuit_breaker_counts_and_refuses_at_the_limit() {
        let stats = Arc::new(crate::stats::Stats::new());
        let shared = ClusterShared::new(stats.cluster("c"));
        shared.set_limits(Some(&config::CircuitBreakers {
            max_requests: Some(2),
            ..Default::default()
        }));
        let a = shared.acquire(Resource::Requests);
        let b = shared.acquire(Resource::Requests);
        assert!(a.is_some() && b.is_some());
        assert!(shared.acquire(Resource::Requests).is_none());
        assert_eq!(shared.in_use(Resource::Requests), 2);
        drop(a);
        assert!(shared.acquire(Resource::Requests).is_some());
        assert!(
            shared.acquire(Resource::Pending).is_some(),
            "unset limits are unlimited"
        );
        let text = stats.encode();
        assert!(
            text.contains(
                "metamesh_upstream_overflow_total{cluster=\"c\",resource=\"requests\"} 1"
            ),
            "{text}"
        );
    }
}
