//! Load balancing: which endpoint of a cluster takes a request.
//!
//! The model follows Envoy's:
//!
//! * Endpoints are grouped into **priority levels**. Each level's health is
//!   `min(100, overprovisioning_factor × healthy / total)` percent; traffic fills the levels
//!   in order, each taking as much as its health allows, so a level spills to the next one
//!   only when it is short of healthy endpoints. When the levels together are short of 100,
//!   their shares are scaled up so they still sum to 100.
//! * A level whose healthy share falls below the **panic threshold** (while the levels
//!   together cannot carry all the traffic) is in **panic**: it balances across all of its
//!   endpoints, healthy or not, since sending everything to the few healthy ones would
//!   overload them.
//! * [`LocalityMode::Failover`] derives the levels from the proxy's own locality (same
//!   subzone, then zone, then region, then anywhere), inside each configured priority.
//!   [`LocalityMode::Weighted`] splits each level's traffic between localities by weight,
//!   scaled down for localities short of healthy endpoints.
//! * Within the chosen level (and locality) the cluster's [`LbPolicy`] picks the endpoint.
//!
//! A [`ClusterLb`] is built once per change of the endpoint set or of their health, and
//! [`ClusterLb::pick`] is called for every request; it does not allocate.

mod least_request;
mod maglev;
mod priority;
mod random;
mod ring_hash;
mod round_robin;

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

use rand::{Rng, RngCore};
use xxhash_rust::xxh64::Xxh64;

use crate::config::{LbPolicy, Locality};

use least_request::LeastRequest;
use maglev::Maglev;
use random::Sampler;
use ring_hash::Ring;
use round_robin::RoundRobin;

/// Default overprovisioning factor, in percent (Envoy's).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;
/// Default panic threshold, in percent (Envoy's).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
/// Default smallest ring of the ring hash policy (Envoy's).
pub const DEFAULT_RING_MIN_SIZE: usize = 1024;
/// Default largest ring of the ring hash policy (Envoy's).
pub const DEFAULT_RING_MAX_SIZE: usize = 8 * 1024 * 1024;
/// Largest ring built whatever the settings ask for (Envoy's upper bound).
pub const MAX_RING_SIZE: usize = 8 * 1024 * 1024;
/// Default Maglev table size (Envoy's); a prime.
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65_537;
/// Largest Maglev table accepted (Envoy's upper bound); a prime.
pub const MAX_MAGLEV_TABLE_SIZE: usize = 5_000_011;

/// One endpoint as the balancer sees it. Its index in the slice given to
/// [`ClusterLb::build`] is its identity: picks return that index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// Stable identity for consistent hashing: the endpoint address `ip:port`.
    pub key: String,
    /// Relative weight; 0 counts as 1.
    pub weight: u32,
    /// Configured priority, 0 the highest.
    pub priority: u32,
    /// Where the endpoint runs.
    pub locality: Locality,
    /// Whether it may take traffic (health checks and outlier detection agree).
    pub healthy: bool,
}

/// How localities shape the balancing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LocalityMode {
    /// Priorities as configured; no locality weighting.
    #[default]
    Off,
    /// Istio's "failover": a proxy knowing its own locality prefers endpoints in its own
    /// region, zone and subzone, then its region and zone, then its region, then anywhere.
    /// An endpoint's effective level is (configured priority, rank) ordered
    /// lexicographically, rank 0 to 3 as just listed; the distinct levels present are then
    /// numbered 0, 1, 2, … A node with an empty region has no preference (rank 0 for all).
    Failover {
        /// The proxy's own locality.
        node: Locality,
    },
    /// Istio's "distribute": within each priority level traffic is split between
    /// localities by these weights (Envoy's locality-weighted balancing). A locality not
    /// listed has weight 0: it gets no traffic while a listed locality of its level can
    /// take some. When every locality of a level has effective weight 0, the level
    /// balances across all its healthy endpoints. The first entry for a locality counts.
    Weighted {
        /// Locality weights.
        weights: Vec<(Locality, u32)>,
    },
}

/// Settings of a cluster's balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbSettings {
    /// How an endpoint is picked within a level (and locality).
    pub policy: LbPolicy,
    /// How localities shape the levels and the split within them.
    pub locality: LocalityMode,
    /// Capacity headroom, in percent: a level at `100 / factor` healthy still takes all
    /// its traffic (default 140).
    pub overprovisioning_factor: u32,
    /// Healthy percentage below which a level balances across all its endpoints, healthy
    /// or not (default 50; 0 disables panic).
    pub panic_threshold: u32,
    /// Fewest ring entries for ring hash (default 1024).
    pub ring_min_size: usize,
    /// Most ring entries for ring hash (default 8M, also the cap).
    pub ring_max_size: usize,
    /// Maglev table size; a prime up to [`MAX_MAGLEV_TABLE_SIZE`], otherwise
    /// [`DEFAULT_MAGLEV_TABLE_SIZE`] is used (default 65537).
    pub maglev_table_size: usize,
}

impl Default for LbSettings {
    fn default() -> Self {
        Self {
            policy: LbPolicy::RoundRobin,
            locality: LocalityMode::Off,
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            ring_min_size: DEFAULT_RING_MIN_SIZE,
            ring_max_size: DEFAULT_RING_MAX_SIZE,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

/// The balancer of one cluster: built once per change of its endpoints or their health,
/// then picked from for every request, from any thread.
pub struct ClusterLb {
    policy: LbPolicy,
    host_count: usize,
    host_levels: Vec<u32>,
    loads: Vec<u32>,
    panic: Vec<bool>,
    /// For each percent 0..100 of the traffic, the level that carries it; empty when
    /// there are no hosts.
    by_percent: Vec<u32>,
    /// The level carrying all the traffic, when one does.
    only_level: Option<usize>,
    /// Per level; only levels that carry traffic are built.
    levels: Vec<Option<Level>>,
}

/// One effective priority level: its endpoints, split by locality when weighted.
struct Level {
    buckets: Vec<Bucket>,
    /// Cumulative locality weights, one per bucket, when there are several buckets.
    cumulative: Vec<f64>,
}

/// The endpoints a level (or one of its localities) balances between.
struct Bucket {
    /// Host indices, ascending; the pickers work on positions in this list.
    hosts: Vec<usize>,
    picker: Picker,
}

enum Picker {
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    Random(Sampler),
    RingHash(Ring),
    Maglev(Maglev),
}

/// Per-level host counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LevelCount {
    healthy: u64,
    total: u64,
}

const LEVEL_SALT: u64 = 0x6c65_7665_6c5f_7069;
const LOCALITY_SALT: u64 = 0x6c6f_6361_6c69_7479;

impl ClusterLb {
    /// Builds the balancer for `hosts` (never fails: weights of 0 count as 1, and
    /// out-of-range ring or table sizes are clamped or replaced by the defaults).
    pub fn build(hosts: &[HostInfo], settings: &LbSettings) -> ClusterLb {
        // Hosts are addressed with 32-bit positions inside the tables.
        let hosts = &hosts[..hosts.len().min(u32::MAX as usize)];
        let (host_levels, level_count) = priority::effective_levels(hosts, &settings.locality);

        let mut counts = vec![LevelCount::default(); level_count];
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); level_count];
        for (i, (h, &l)) in hosts.iter().zip(&host_levels).enumerate() {
            let l = l as usize;
            counts[l].total += 1;
            if h.healthy {
                counts[l].healthy += 1;
            }
            members[l].push(i);
        }
        let (loads, panic) = priority::priority_state(
            &counts,
            settings.overprovisioning_factor,
            settings.panic_threshold,
        );

        let mut by_percent = Vec::with_capacity(100);
        for (l, &load) in loads.iter().enumerate() {
            by_percent.extend(std::iter::repeat_n(l as u32, load as usize));
        }

        let only_level = loads.iter().position(|&l| l == 100);

        // Ring sizes follow the weight of every host, healthy or not, so a health change
        // never rescales the ring: only the keys of the host that left move.
        let ring_total: u64 = hosts.iter().map(|h| u64::from(h.weight.max(1))).sum();
        let mut seed = rand::thread_rng().gen::<usize>();
        let levels = members
            .iter()
            .enumerate()
            .map(|(l, m)| {
                (loads[l] > 0).then(|| {
                    seed = seed.wrapping_add(0x9e37_79b9);
                    Level::build(hosts, m, panic[l], settings, (seed, ring_total))
                })
            })
            .collect();

        ClusterLb {
            policy: settings.policy,
            host_count: hosts.len(),
            host_levels,
            loads,
            panic,
            by_percent,
            only_level,
            levels,
        }
    }

    /// Picks a host index, using a cheap thread-local random generator.
    ///
    /// * `hash`: the request's hash for ring hash and Maglev. It then also chooses the
    ///   level and the locality, so a key sticks to its endpoint; any 64-bit value works
    ///   (it is mixed before use). Without one these policies pick at random, as Envoy
    ///   does. Other policies ignore it.
    /// * `exclude`: a host to avoid when another one can take the request (retries): the
    ///   next host of the ring or table for the hashing policies, another pick otherwise,
    ///   then the other localities of the level and the other levels carrying traffic.
    ///   When it is the only candidate it is returned anyway.
    /// * `active(i)`: the requests in flight to host `i` (least request uses it).
    ///
    /// `None` only when no host can be picked: no hosts at all, or no healthy host while
    /// panic is disabled.
    pub fn pick(
        &self,
        hash: Option<u64>,
        exclude: Option<usize>,
        active: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        FAST_RNG.with(|state| {
            let mut rng = FastRng(state.get());
            let picked = self.pick_with(&mut rng, hash, exclude, active);
            state.set(rng.0);
            picked
        })
    }

    /// [`pick`](Self::pick) drawing from `rng`.
    pub fn pick_with<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        hash: Option<u64>,
        exclude: Option<usize>,
        active: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        if self.by_percent.is_empty() {
            return None;
        }
        let hashed = matches!(self.policy, LbPolicy::RingHash | LbPolicy::Maglev);
        // Mixed, so that any request hash (even small or sequential numbers) spreads
        // evenly over the ring or table.
        let h = if hashed {
            mix(hash.unwrap_or_else(|| rng.gen()))
        } else {
            0
        };
        let level_index = match self.only_level {
            Some(l) => l,
            None => {
                let percent = if hashed {
                    (mix(h ^ LEVEL_SALT) % 100) as usize
                } else {
                    rng.gen_range(0..100)
                };
                self.by_percent[percent % self.by_percent.len()] as usize
            }
        };
        let level = self.levels.get(level_index)?.as_ref()?;
        let locality_draw = hashed.then(|| mix(h ^ LOCALITY_SALT));
        let b = level.choose(rng, locality_draw);
        let bucket = level.buckets.get(b)?;
        let picked = bucket.pick(rng, h, exclude, &active);
        match exclude {
            Some(x) if picked == x => Some(
                self.elsewhere(rng, level_index, b, h, x, &active)
                    .unwrap_or(picked),
            ),
            _ => Some(picked),
        }
    }

    /// After the chosen bucket could only offer the excluded host: the first other host
    /// of the same level (next localities first), then of the other levels carrying
    /// traffic.
    fn elsewhere<R: Rng + ?Sized, F: Fn(usize) -> usize>(
        &self,
        rng: &mut R,
        level_index: usize,
        bucket_index: usize,
        h: u64,
        exclude: usize,
        active: &F,
    ) -> Option<usize> {
        let try_level = |rng: &mut R, level: &Level, skip: Option<usize>| {
            let n = level.buckets.len();
            let start = skip.map_or(0, |s| s + 1);
            (0..n)
                .map(|k| (start + k) % n)
                .filter(|&b| Some(b) != skip)
                .map(|b| level.buckets[b].pick(rng, h, Some(exclude), active))
                .find(|&p| p != exclude)
        };
        if let Some(Some(level)) = self.levels.get(level_index) {
            if let Some(p) = try_level(rng, level, Some(bucket_index)) {
                return Some(p);
            }
        }
        self.levels
            .iter()
            .enumerate()
            .filter(|&(l, _)| l != level_index)
            .filter_map(|(_, level)| level.as_ref())
            .find_map(|level| try_level(rng, level, None))
    }

    /// Percent of the traffic each effective level carries; sums to 100 when there is
    /// any host, empty when there is none.
    pub fn priority_loads(&self) -> &[u32] {
        &self.loads
    }

    /// Per effective level: whether it is in panic (balancing across all its hosts,
    /// healthy or not).
    pub fn panic_levels(&self) -> &[bool] {
        &self.panic
    }

    /// The effective level of each host. Levels are the distinct (priority, locality
    /// rank) pairs present, numbered from 0 in order: with [`LocalityMode::Off`] and
    /// [`LocalityMode::Weighted`] these are the configured priorities present, so a gap in
    /// the configured priorities (which carries no traffic) is not numbered.
    pub fn host_levels(&self) -> &[u32] {
        &self.host_levels
    }

    /// The policy in use.
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.host_count
    }

    /// True when there are no hosts at all.
    pub fn is_empty(&self) -> bool {
        self.host_count == 0
    }
}

impl fmt::Debug for ClusterLb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLb")
            .field("policy", &self.policy)
            .field("hosts", &self.host_count)
            .field("priority_loads", &self.loads)
            .field("panic_levels", &self.panic)
            .finish_non_exhaustive()
    }
}

impl Level {
    /// `all`: every host of the level, ascending.
    fn build(
        hosts: &[HostInfo],
        all: &[usize],
        panic: bool,
        settings: &LbSettings,
        (seed, ring_total): (usize, u64),
    ) -> Level {
        if panic {
            return Level::single(hosts, all.to_vec(), settings, (seed, ring_total));
        }
        let healthy: Vec<usize> = all.iter().copied().filter(|&i| hosts[i].healthy).collect();
        let LocalityMode::Weighted { weights } = &settings.locality else {
            return Level::single(hosts, healthy, settings, (seed, ring_total));
        };

        let mut configured: HashMap<&Locality, u32> = HashMap::with_capacity(weights.len());
        for (locality, w) in weights {
            configured.entry(locality).or_insert(*w);
        }
        // Localities in order of first appearance: (locality, total, healthy hosts).
        let mut index: HashMap<&Locality, usize> = HashMap::new();
        let mut groups: Vec<(&Locality, u64, Vec<usize>)> = Vec::new();
        for &i in all {
            let h = &hosts[i];
            let g = *index.entry(&h.locality).or_insert_with(|| {
                groups.push((&h.locality, 0, Vec::new()));
                groups.len() - 1
            });
            groups[g].1 += 1;
            if h.healthy {
                groups[g].2.push(i);
            }
        }

        let factor = f64::from(settings.overprovisioning_factor) / 100.0;
        let mut buckets = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for (locality, count, members) in groups {
            let weight = configured.get(locality).copied().unwrap_or(0);
            let effective = locality_weight(weight, members.len() as u64, count, factor);
            if effective > 0.0 && !members.is_empty() {
                total += effective;
                cumulative.push(total);
                let seeds = (seed ^ buckets.len(), ring_total);
                buckets.push(Bucket::new(hosts, members, settings, seeds));
            }
        }
        if buckets.is_empty() {
            return Level::single(hosts, healthy, settings, (seed, ring_total));
        }
        Level {
            buckets,
            cumulative,
        }
    }

    fn single(
        hosts: &[HostInfo],
        members: Vec<usize>,
        settings: &LbSettings,
        seeds: (usize, u64),
    ) -> Level {
        let buckets = if members.is_empty() {
            Vec::new()
        } else {
            vec![Bucket::new(hosts, members, settings, seeds)]
        };
        Level {
            buckets,
            cumulative: Vec::new(),
        }
    }

    /// Chooses a bucket in proportion to the locality weights: from `draw` when given,
    /// otherwise at random.
    fn choose<R: Rng + ?Sized>(&self, rng: &mut R, draw: Option<u64>) -> usize {
        let n = self.buckets.len();
        if n <= 1 {
            return 0;
        }
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = match draw {
            Some(d) => unit(d),
            None => rng.gen::<f64>(),
        };
        let x = u * total;
        self.cumulative.partition_point(|&c| c <= x).min(n - 1)
    }
}

/// Envoy's effective locality weight: `weight × min(1, factor × healthy / total)`.
fn locality_weight(weight: u32, healthy: u64, total: u64, factor: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let ratio = (factor * healthy as f64 / total as f64).min(1.0);
    f64::from(weight) * ratio
}

impl Bucket {
    /// `seed` starts round robin; `ring_total` is the weight of the cluster's hosts that
    /// sizes a ring.
    fn new(
        hosts: &[HostInfo],
        members: Vec<usize>,
        settings: &LbSettings,
        (seed, ring_total): (usize, u64),
    ) -> Bucket {
        let weights: Vec<u32> = members.iter().map(|&i| hosts[i].weight.max(1)).collect();
        let keys = || -> Vec<&str> { members.iter().map(|&i| hosts[i].key.as_str()).collect() };
        let picker = match settings.policy {
            LbPolicy::RoundRobin => Picker::RoundRobin(RoundRobin::new(&weights, seed)),
            LbPolicy::LeastRequest => Picker::LeastRequest(LeastRequest::new(&weights)),
            LbPolicy::Random => Picker::Random(Sampler::new(&weights)),
            LbPolicy::RingHash => Picker::RingHash(Ring::new(
                &keys(),
                &weights,
                settings.ring_min_size,
                settings.ring_max_size,
                ring_total,
            )),
            LbPolicy::Maglev => Picker::Maglev(Maglev::new(
                &keys(),
                &weights,
                maglev::table_size(settings.maglev_table_size),
            )),
        };
        Bucket {
            hosts: members,
            picker,
        }
    }

    /// Picks a host index; `h` is the request hash for the hashing policies.
    fn pick<R: Rng + ?Sized, F: Fn(usize) -> usize>(
        &self,
        rng: &mut R,
        h: u64,
        exclude: Option<usize>,
        active: &F,
    ) -> usize {
        let avoid = exclude.and_then(|x| self.hosts.binary_search(&x).ok());
        let pos = match &self.picker {
            Picker::RoundRobin(rr) => rr.pick(avoid),
            Picker::LeastRequest(lr) => lr.pick(rng, avoid, |p| active(self.hosts[p])),
            Picker::Random(s) => match avoid {
                Some(a) if self.hosts.len() > 1 => s.sample_excluding(rng, a),
                _ => s.sample(rng),
            },
            Picker::RingHash(ring) => ring.pick(h, avoid),
            Picker::Maglev(m) => m.pick(h, avoid),
        };
        self.hosts[pos]
    }
}

/// Stable 64-bit hash of request attribute values for consistent hashing: xxHash64 with
/// seed 0 over the values, each followed by the byte `0xFF` (which never occurs in UTF-8),
/// so `["ab", "c"]` and `["a", "bc"]` differ.
pub fn hash_values<'a>(values: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hasher = Xxh64::new(0);
    for v in values {
        hasher.update(v.as_bytes());
        hasher.update(&[0xff]);
    }
    hasher.digest()
}

/// A 64-bit finalizer (SplitMix64's), to derive independent draws from one hash.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps 64 random bits to [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

thread_local! {
    static FAST_RNG: Cell<u64> = Cell::new(rand::thread_rng().gen());
}

/// wyrand: a small, fast generator, good enough for balancing decisions.
struct FastRng(u64);

impl RngCore for FastRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
