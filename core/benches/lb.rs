//! Load balancer benchmarks: `pick` per policy with 10 and 10,000 healthy endpoints, a
//! locality failover cluster with three levels, and `build` of the hashing policies.

use std::cell::Cell;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use metamesh_core::config::{LbPolicy, Locality};
use metamesh_core::lb::{hash_values, ClusterLb, HostInfo, LbSettings, LocalityMode};

const SIZES: [usize; 2] = [10, 10_000];

fn locality(zone: &str) -> Locality {
    Locality {
        region: "bj".into(),
        zone: zone.into(),
        subzone: String::new(),
    }
}

fn hosts(n: usize, weighted: bool) -> Vec<HostInfo> {
    (0..n)
        .map(|i| HostInfo {
            key: format!("10.{}.{}.{}:20880", i / 65_536, (i / 256) % 256, i % 256),
            weight: if weighted { 1 + (i % 5) as u32 } else { 1 },
            priority: 0,
            locality: locality("z1"),
            healthy: true,
        })
        .collect()
}

fn settings(policy: LbPolicy) -> LbSettings {
    LbSettings {
        policy,
        ..LbSettings::default()
    }
}

fn request_hashes() -> Vec<u64> {
    (0..1024)
        .map(|i| hash_values([format!("user-{i}").as_str()]))
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let cases = [
        ("round_robin", LbPolicy::RoundRobin, false),
        ("round_robin_weighted", LbPolicy::RoundRobin, true),
        ("least_request", LbPolicy::LeastRequest, false),
        ("random", LbPolicy::Random, false),
        ("ring_hash", LbPolicy::RingHash, false),
        ("maglev", LbPolicy::Maglev, false),
    ];
    let hashes = request_hashes();
    let mut group = c.benchmark_group("pick");
    for (name, policy, weighted) in cases {
        let hashed = matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev);
        for n in SIZES {
            let lb = ClusterLb::build(&hosts(n, weighted), &settings(policy));
            let active: Vec<usize> = (0..n).map(|i| i % 4).collect();
            let next = Cell::new(0usize);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let i = next.get();
                    next.set(i.wrapping_add(1));
                    let hash = hashed.then(|| hashes[i % hashes.len()]);
                    black_box(lb.pick(black_box(hash), None, |h| active[h]))
                })
            });
        }
    }

    // Locality failover: own zone half healthy (70% of the traffic), the rest of the
    // region, then another region: three levels.
    for n in SIZES {
        let third = n.div_ceil(3);
        let hs: Vec<HostInfo> = hosts(n, false)
            .into_iter()
            .enumerate()
            .map(|(i, mut h)| {
                h.locality = match i / third {
                    0 => locality("z1"),
                    1 => locality("z2"),
                    _ => Locality {
                        region: "sh".into(),
                        ..locality("z3")
                    },
                };
                h.healthy = !(i < third && i % 2 == 1);
                h
            })
            .collect();
        let s = LbSettings {
            locality: LocalityMode::Failover {
                node: locality("z1"),
            },
            ..LbSettings::default()
        };
        let lb = ClusterLb::build(&hs, &s);
        group.bench_with_input(BenchmarkId::new("failover_3_levels", n), &n, |b, _| {
            b.iter(|| black_box(lb.pick(None, None, |_| 0)))
        });
    }
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    for (name, policy, weighted) in [
        ("maglev", LbPolicy::Maglev, false),
        ("ring_hash", LbPolicy::RingHash, false),
        ("round_robin", LbPolicy::RoundRobin, false),
        ("round_robin_weighted", LbPolicy::RoundRobin, true),
    ] {
        let hs = hosts(10_000, weighted);
        let s = settings(policy);
        group.bench_with_input(BenchmarkId::new(name, 10_000), &hs, |b, hs| {
            b.iter(|| black_box(ClusterLb::build(hs, &s)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pick, bench_build);
criterion_main!(benches);
