use rand::rngs::StdRng;
use rand::SeedableRng;
use xxhash_rust::xxh64::xxh64;

use super::*;

const POLICIES: [LbPolicy; 5] = [
    LbPolicy::RoundRobin,
    LbPolicy::LeastRequest,
    LbPolicy::Random,
    LbPolicy::RingHash,
    LbPolicy::Maglev,
];

/// Asserts that `counts` are spread like `weights`, each share within `tolerance`.
pub(crate) fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
    let total: usize = counts.iter().sum();
    let wsum: u32 = weights.iter().sum();
    for (c, w) in counts.iter().zip(weights) {
        let got = *c as f64 / total as f64;
        let want = f64::from(*w) / f64::from(wsum);
        assert!(
            (got - want).abs() <= tolerance,
            "share {got:.4} vs {want:.4} ({counts:?} for {weights:?})"
        );
    }
}

fn loc(region: &str, zone: &str) -> Locality {
    Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    }
}

fn host(i: usize, priority: u32, locality: Locality, healthy: bool) -> HostInfo {
    HostInfo {
        key: format!("10.1.{}.{}:9000", i / 256, i % 256),
        weight: 1,
        priority,
        locality,
        healthy,
    }
}

fn hosts(n: usize, priority: u32, healthy: usize) -> Vec<HostInfo> {
    (0..n)
        .map(|i| host(i, priority, loc("bj", "a"), i < healthy))
        .collect()
}

fn settings(policy: LbPolicy) -> LbSettings {
    LbSettings {
        policy,
        ..LbSettings::default()
    }
}

fn renumber(mut hosts: Vec<HostInfo>) -> Vec<HostInfo> {
    for (i, h) in hosts.iter_mut().enumerate() {
        h.key = format!("10.2.{}.{}:9000", i / 256, i % 256);
    }
    hosts
}

/// Picks per host over `picks` random requests (a fresh random hash each time for the
/// hashing policies), nobody busy.
fn counts(lb: &ClusterLb, n: usize, picks: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = vec![0; n];
    for _ in 0..picks {
        c[lb.pick_with(&mut rng, None, None, |_| 0).unwrap()] += 1;
    }
    c
}

fn share(c: &[usize], range: std::ops::Range<usize>) -> f64 {
    c[range].iter().sum::<usize>() as f64 / c.iter().sum::<usize>() as f64
}

#[test]
fn empty_cluster() {
    for policy in POLICIES {
        let lb = ClusterLb::build(&[], &settings(policy));
        assert!(lb.is_empty());
        assert_eq!(lb.len(), 0);
        assert!(lb.priority_loads().is_empty());
        assert!(lb.panic_levels().is_empty());
        assert!(lb.host_levels().is_empty());
        assert_eq!(lb.pick(Some(1), Some(0), |_| 0), None);
    }
}

#[test]
fn defaults_are_envoys() {
    let s = LbSettings::default();
    assert_eq!(s.policy, LbPolicy::RoundRobin);
    assert_eq!(s.locality, LocalityMode::Off);
    assert_eq!(s.overprovisioning_factor, 140);
    assert_eq!(s.panic_threshold, 50);
    assert_eq!(s.ring_min_size, 1024);
    assert_eq!(s.ring_max_size, 8 * 1024 * 1024);
    assert_eq!(s.maglev_table_size, 65_537);
}

#[test]
fn send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ClusterLb>();
}

#[test]
fn spill_over_to_the_next_priority() {
    for policy in POLICIES {
        // P0: 10 hosts, 5 healthy → 70%; P1: 10 healthy → 30%.
        let mut hs = hosts(10, 0, 5);
        hs.extend(hosts(10, 1, 10));
        let hs = renumber(hs);
        let lb = ClusterLb::build(&hs, &settings(policy));
        assert_eq!(lb.priority_loads(), [70, 30], "{policy:?}");
        assert_eq!(lb.panic_levels(), [false, false]);
        assert_eq!(lb.host_levels()[..10], [0; 10]);
        assert_eq!(lb.host_levels()[10..], [1; 10]);
        let c = counts(&lb, 20, 100_000, 7);
        assert!(
            c[5..10].iter().all(|&n| n == 0),
            "{policy:?}: unhealthy picked"
        );
        let p1 = share(&c, 10..20);
        assert!((p1 - 0.30).abs() < 0.01, "{policy:?}: {p1}");
    }
}

#[test]
fn configured_priorities_are_compacted() {
    let mut hs = hosts(4, 2, 0);
    hs.extend(hosts(4, 7, 4));
    let lb = ClusterLb::build(&renumber(hs), &LbSettings::default());
    assert_eq!(lb.priority_loads(), [0, 100]);
    assert_eq!(lb.host_levels(), [0, 0, 0, 0, 1, 1, 1, 1]);
}

#[test]
fn panic_balances_across_all_hosts() {
    // A lone level 30% healthy: total availability 42 < 100 and 30% < 50% → panic.
    let lb = ClusterLb::build(&hosts(10, 0, 3), &settings(LbPolicy::Random));
    assert_eq!(lb.priority_loads(), [100]);
    assert_eq!(lb.panic_levels(), [true]);
    let c = counts(&lb, 10, 100_000, 8);
    assert_shares(&c, &[1; 10], 0.01);

    // Two levels 20% healthy each: 28 + 28 → 50/50, both in panic.
    for policy in POLICIES {
        let mut hs = hosts(10, 0, 2);
        hs.extend(hosts(10, 1, 2));
        let lb = ClusterLb::build(&renumber(hs), &settings(policy));
        assert_eq!(lb.priority_loads(), [50, 50]);
        assert_eq!(lb.panic_levels(), [true, true]);
        let c = counts(&lb, 20, 40_000, 9);
        assert!(c.iter().all(|&n| n > 0), "{policy:?}: {c:?}");
        assert!((share(&c, 0..10) - 0.5).abs() < 0.02, "{policy:?}");
    }

    // Short of 100 but above the threshold: no panic, only healthy hosts.
    let lb = ClusterLb::build(&hosts(10, 0, 6), &LbSettings::default());
    assert_eq!(lb.panic_levels(), [false]);
    let c = counts(&lb, 10, 1000, 10);
    assert!(c[6..].iter().all(|&n| n == 0));
}

#[test]
fn all_unhealthy() {
    for policy in POLICIES {
        let mut hs = hosts(3, 0, 0);
        hs.extend(hosts(3, 1, 0));
        let hs = renumber(hs);
        let lb = ClusterLb::build(&hs, &settings(policy));
        assert_eq!(lb.priority_loads(), [100, 0]);
        assert_eq!(lb.panic_levels(), [true, true]);
        let c = counts(&lb, 6, 3000, 11);
        assert!(c[..3].iter().all(|&n| n > 0), "{policy:?}: {c:?}");
        assert!(c[3..].iter().all(|&n| n == 0), "{policy:?}: {c:?}");

        // Panic disabled: nothing to pick.
        let s = LbSettings {
            panic_threshold: 0,
            ..settings(policy)
        };
        let lb = ClusterLb::build(&hs, &s);
        assert_eq!(lb.priority_loads(), [100, 0]);
        assert_eq!(lb.panic_levels(), [false, false]);
        assert_eq!(lb.pick(Some(3), None, |_| 0), None);
    }
}

fn failover(node: Locality) -> LbSettings {
    LbSettings {
        locality: LocalityMode::Failover { node },
        ..LbSettings::default()
    }
}

#[test]
fn failover_prefers_own_zone_then_region() {
    let node = loc("bj", "800002");
    let mut hs = vec![
        host(0, 0, loc("bj", "800002"), true),
        host(1, 0, loc("bj", "800002"), true),
        host(2, 0, loc("bj", "800005"), true),
        host(3, 0, loc("sh", "x"), true),
    ];
    let lb = ClusterLb::build(&hs, &failover(node.clone()));
    assert_eq!(lb.host_levels(), [0, 0, 1, 2]);
    assert_eq!(lb.priority_loads(), [100, 0, 0]);
    let c = counts(&lb, 4, 10_000, 12);
    assert_eq!(&c[2..], [0, 0]);
    assert_shares(&c[..2], &[1, 1], 0.01);

    // The node's zone down: everything to the same region.
    hs[0].healthy = false;
    hs[1].healthy = false;
    let lb = ClusterLb::build(&hs, &failover(node.clone()));
    assert_eq!(lb.priority_loads(), [0, 100, 0]);
    assert_eq!(counts(&lb, 4, 1000, 13), [0, 0, 1000, 0]);

    // Same region down too: the rest of the world.
    hs[2].healthy = false;
    let lb = ClusterLb::build(&hs, &failover(node));
    assert_eq!(lb.priority_loads(), [0, 0, 100]);
    assert_eq!(counts(&lb, 4, 1000, 14), [0, 0, 0, 1000]);
}

#[test]
fn failover_keeps_configured_priorities_first() {
    let node = loc("bj", "800002");
    let hs = vec![
        host(0, 1, loc("bj", "800002"), true),
        host(1, 0, loc("sh", "x"), true),
        host(2, 0, loc("bj", "800005"), true),
        host(3, 0, loc("bj", "800002"), true),
    ];
    let lb = ClusterLb::build(&hs, &failover(node));
    // (0,0) host 3; (0,2) host 2; (0,3) host 1; (1,0) host 0.
    assert_eq!(lb.host_levels(), [3, 2, 1, 0]);
    assert_eq!(counts(&lb, 4, 1000, 15), [0, 0, 0, 1000]);

    // A node without a region prefers nothing: plain priorities.
    let lb = ClusterLb::build(&hs, &failover(Locality::default()));
    assert_eq!(lb.host_levels(), [1, 0, 0, 0]);
}

#[test]
fn failover_partial_health_spills_in_order() {
    let node = loc("bj", "z1");
    let mut hs = Vec::new();
    for i in 0..10 {
        // Own zone: 5 of 10 healthy → 70%.
        hs.push(host(i, 0, loc("bj", "z1"), i < 5));
    }
    for i in 10..20 {
        hs.push(host(i, 0, loc("bj", "z2"), true));
    }
    let lb = ClusterLb::build(&hs, &failover(node));
    assert_eq!(lb.priority_loads(), [70, 30]);
    let c = counts(&lb, 20, 100_000, 16);
    assert!((share(&c, 10..20) - 0.3).abs() < 0.01);
}

fn weighted(weights: &[(Locality, u32)], policy: LbPolicy) -> LbSettings {
    LbSettings {
        policy,
        locality: LocalityMode::Weighted {
            weights: weights.to_vec(),
        },
        ..LbSettings::default()
    }
}

#[test]
fn weighted_localities_split_traffic() {
    let (a, b, c) = (loc("bj", "a"), loc("bj", "b"), loc("sh", "c"));
    let mut hs = Vec::new();
    for i in 0..3 {
        hs.push(host(i, 0, a.clone(), true));
    }
    for i in 3..5 {
        hs.push(host(i, 0, b.clone(), true));
    }
    for i in 5..7 {
        hs.push(host(i, 0, c.clone(), true));
    }
    for policy in POLICIES {
        let s = weighted(&[(a.clone(), 90), (b.clone(), 10)], policy);
        let lb = ClusterLb::build(&hs, &s);
        assert_eq!(lb.priority_loads(), [100]);
        let counts = counts(&lb, 7, 100_000, 17);
        let share_a = share(&counts, 0..3);
        assert!((share_a - 0.9).abs() < 0.01, "{policy:?}: {share_a}");
        // Unlisted: nothing.
        assert_eq!(&counts[5..], [0, 0], "{policy:?}");
    }
}

#[test]
fn weighted_locality_scaled_by_its_health() {
    let (a, b) = (loc("bj", "a"), loc("bj", "b"));
    let mut hs = Vec::new();
    for i in 0..4 {
        hs.push(host(i, 0, a.clone(), true));
    }
    for i in 4..8 {
        // Half of b unhealthy: weight 50 × min(1, 1.4 × 0.5) = 35.
        hs.push(host(i, 0, b.clone(), i < 6));
    }
    let lb = ClusterLb::build(&hs, &weighted(&[(a, 50), (b, 50)], LbPolicy::Random));
    assert_eq!(lb.panic_levels(), [false]);
    let c = counts(&lb, 8, 100_000, 18);
    assert_eq!(&c[6..], [0, 0]);
    let share_a = share(&c, 0..4);
    assert!((share_a - 50.0 / 85.0).abs() < 0.01, "{share_a}");
}

#[test]
fn weighted_without_any_weight_uses_all_healthy_hosts() {
    let mut hs = hosts(4, 0, 3);
    hs[3].healthy = true;
    hs[0].healthy = false;
    let lb = ClusterLb::build(
        &hs,
        &weighted(&[(loc("xx", "yy"), 5)], LbPolicy::RoundRobin),
    );
    let c = counts(&lb, 4, 3000, 19);
    assert_eq!(c, [0, 1000, 1000, 1000]);

    // Every weight 0 listed: the same.
    let lb = ClusterLb::build(&hs, &weighted(&[(loc("bj", "a"), 0)], LbPolicy::Random));
    let c = counts(&lb, 4, 3000, 20);
    assert!(c[0] == 0 && c[1..].iter().all(|&n| n > 800), "{c:?}");
}

#[test]
fn weighted_levels_in_panic_ignore_localities() {
    let (a, b) = (loc("bj", "a"), loc("bj", "b"));
    let mut hs = Vec::new();
    for i in 0..5 {
        hs.push(host(i, 0, a.clone(), i == 0));
    }
    for i in 5..10 {
        hs.push(host(i, 0, b.clone(), false));
    }
    let lb = ClusterLb::build(&hs, &weighted(&[(a, 100)], LbPolicy::Random));
    assert_eq!(lb.panic_levels(), [true]);
    let c = counts(&lb, 10, 10_000, 21);
    assert!(c.iter().all(|&n| n > 0), "{c:?}");
}

#[test]
fn hashed_policies_stick_to_a_key() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let mut hs = hosts(10, 0, 5);
        hs.extend(hosts(10, 1, 10));
        let hs = renumber(hs);
        let lb = ClusterLb::build(&hs, &settings(policy));
        let again = ClusterLb::build(&hs, &settings(policy));
        let mut rng = StdRng::seed_from_u64(22);
        let mut p1 = 0;
        for i in 0..10_000 {
            let h = hash_values([format!("user-{i}").as_str()]);
            let first = lb.pick_with(&mut rng, Some(h), None, |_| 0).unwrap();
            for _ in 0..3 {
                assert_eq!(lb.pick(Some(h), None, |_| 0), Some(first));
            }
            assert_eq!(again.pick(Some(h), None, |_| 0), Some(first));
            assert!(hs[first].healthy);
            p1 += usize::from(first >= 10);
        }
        // The level is chosen by the hash too: about 30% of keys on P1.
        assert!((2700..3300).contains(&p1), "{policy:?}: {p1}");
    }
}

#[test]
fn hashed_policies_with_weighted_localities() {
    let (a, b) = (loc("bj", "a"), loc("bj", "b"));
    let mut hs = Vec::new();
    for i in 0..5 {
        hs.push(host(i, 0, a.clone(), true));
    }
    for i in 5..10 {
        hs.push(host(i, 0, b.clone(), true));
    }
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let lb = ClusterLb::build(&hs, &weighted(&[(a.clone(), 9), (b.clone(), 1)], policy));
        let mut in_a = 0;
        for i in 0..10_000 {
            let h = hash_values([format!("k{i}").as_str()]);
            let p = lb.pick(Some(h), None, |_| 0).unwrap();
            assert_eq!(lb.pick(Some(h), None, |_| 0), Some(p));
            in_a += usize::from(p < 5);
        }
        assert!((8700..9300).contains(&in_a), "{policy:?}: {in_a}");
    }
}

#[test]
fn hashed_policies_without_hash_pick_randomly() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let lb = ClusterLb::build(&hosts(5, 0, 5), &settings(policy));
        let c = counts(&lb, 5, 50_000, 23);
        // Ring shares are not exact; all hosts get a fair part.
        assert!(c.iter().all(|&n| n > 5000), "{policy:?}: {c:?}");
    }
}

#[test]
fn round_robin_cycles_exactly_through_the_cluster() {
    let mut hs = hosts(4, 0, 4);
    for (h, w) in hs.iter_mut().zip([1, 2, 7, 0]) {
        h.weight = w;
    }
    hs[3].healthy = false;
    let lb = ClusterLb::build(&hs, &LbSettings::default());
    assert_eq!(counts(&lb, 4, 100, 24), [10, 20, 70, 0]);

    let lb = ClusterLb::build(&hosts(3, 0, 3), &LbSettings::default());
    assert_eq!(counts(&lb, 3, 300, 25), [100, 100, 100]);
}

#[test]
fn zero_weights_count_as_one() {
    for policy in POLICIES {
        let mut hs = hosts(4, 0, 4);
        for h in &mut hs {
            h.weight = 0;
        }
        hs[0].weight = 1;
        let lb = ClusterLb::build(&hs, &settings(policy));
        let c = counts(&lb, 4, 40_000, 26);
        let tolerance = if matches!(policy, LbPolicy::RingHash) {
            0.08
        } else {
            0.02
        };
        assert_shares(&c, &[1, 1, 1, 1], tolerance);
    }
}

#[test]
fn least_request_sees_host_indices() {
    // Host 0 unhealthy, so bucket positions and host indices differ.
    let mut hs = hosts(4, 0, 4);
    hs[0].healthy = false;
    let lb = ClusterLb::build(&hs, &settings(LbPolicy::LeastRequest));
    let mut rng = StdRng::seed_from_u64(27);
    let mut idle = 0;
    for _ in 0..30_000 {
        let p = lb
            .pick_with(&mut rng, None, None, |i| if i == 3 { 0 } else { 10 })
            .unwrap();
        assert_ne!(p, 0);
        idle += usize::from(p == 3);
    }
    // Three candidates: host 3 is one of the two drawn 2/3 of the time.
    assert!((19_000..21_000).contains(&idle), "{idle}");
}

#[test]
fn exclude_works_for_every_policy() {
    for policy in POLICIES {
        let lb = ClusterLb::build(&hosts(4, 0, 4), &settings(policy));
        let mut rng = StdRng::seed_from_u64(28);
        for i in 0..2000 {
            let h = hash_values([format!("r{i}").as_str()]);
            let first = lb.pick_with(&mut rng, Some(h), None, |_| 0).unwrap();
            let second = lb.pick_with(&mut rng, Some(h), Some(first), |_| 0).unwrap();
            assert_ne!(first, second, "{policy:?}");
            if matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev) {
                // Deterministic for a key.
                assert_eq!(lb.pick(Some(h), Some(first), |_| 0), Some(second));
            }
        }
        // The only candidate is returned anyway.
        let lone = ClusterLb::build(&hosts(1, 0, 1), &settings(policy));
        assert_eq!(lone.pick(Some(5), Some(0), |_| 0), Some(0));
        // An unhealthy host is not a candidate: the healthy one is returned.
        let lb = ClusterLb::build(&hosts(2, 0, 1), &settings(policy));
        assert_eq!(lb.pick(Some(5), Some(0), |_| 0), Some(0));
    }
}

#[test]
fn exclude_moves_to_another_locality_or_level() {
    let (a, b) = (loc("bj", "a"), loc("bj", "b"));
    let hs = vec![
        host(0, 0, a.clone(), true),
        host(1, 0, b.clone(), true),
        host(2, 0, b.clone(), true),
    ];
    for policy in POLICIES {
        // Locality a (one host) takes 99% of the traffic; excluding its host goes to b.
        let lb = ClusterLb::build(&hs, &weighted(&[(a.clone(), 99), (b.clone(), 1)], policy));
        for i in 0..500u64 {
            let p = lb.pick(Some(i), Some(0), |_| 0).unwrap();
            assert_ne!(p, 0, "{policy:?}");
        }
        // Two levels both carrying traffic, one host each.
        let mut two = hosts(2, 0, 1);
        two.extend(hosts(2, 1, 2));
        let lb = ClusterLb::build(&renumber(two), &settings(policy));
        assert_eq!(lb.priority_loads(), [70, 30]);
        for i in 0..500u64 {
            let p = lb.pick(Some(i), Some(0), |_| 0).unwrap();
            assert!(p >= 2, "{policy:?}: {p}");
        }
        // Level 1 carries no traffic: host 0 is the only candidate.
        let mut two = hosts(1, 0, 1);
        two.extend(hosts(1, 1, 1));
        let lb = ClusterLb::build(&renumber(two), &settings(policy));
        assert_eq!(lb.pick(Some(9), Some(0), |_| 0), Some(0));
    }
}

#[test]
fn odd_settings_do_not_panic() {
    let mut hs = hosts(50, 0, 25);
    hs.extend(hosts(50, 3, 50));
    let hs = renumber(hs);
    for policy in POLICIES {
        for s in [
            LbSettings {
                overprovisioning_factor: 0,
                panic_threshold: 0,
                ring_min_size: 0,
                ring_max_size: 0,
                maglev_table_size: 0,
                ..settings(policy)
            },
            LbSettings {
                overprovisioning_factor: u32::MAX,
                panic_threshold: u32::MAX,
                ring_min_size: usize::MAX,
                ring_max_size: 1,
                maglev_table_size: 4,
                ..settings(policy)
            },
            LbSettings {
                maglev_table_size: 7,
                ring_min_size: 16,
                ring_max_size: 16,
                ..settings(policy)
            },
        ] {
            let lb = ClusterLb::build(&hs, &s);
            assert_eq!(lb.priority_loads().iter().sum::<u32>(), 100);
            for i in 0..100u64 {
                let _ = lb.pick(Some(i), Some(i as usize), |_| usize::MAX);
            }
        }
    }
}

#[test]
fn large_clusters() {
    let hs: Vec<HostInfo> = (0..10_000)
        .map(|i| HostInfo {
            weight: 1 + (i % 3) as u32,
            ..host(i, (i % 2) as u32, loc("bj", "a"), i % 7 != 0)
        })
        .collect();
    for policy in POLICIES {
        let lb = ClusterLb::build(&hs, &settings(policy));
        assert_eq!(lb.priority_loads(), [100, 0]);
        for i in 0..1000u64 {
            let p = lb.pick(Some(i), None, |_| 0).unwrap();
            assert!(
                p < 10_000 && p.is_multiple_of(2) && !p.is_multiple_of(7),
                "{policy:?}: {p}"
            );
        }
    }
}

#[test]
fn hash_values_separates_values() {
    assert_ne!(hash_values(["ab", "c"]), hash_values(["a", "bc"]));
    assert_ne!(hash_values(["a"]), hash_values(["a", ""]));
    assert_ne!(hash_values([""]), hash_values(std::iter::empty()));
    assert_eq!(hash_values(["a", "b"]), xxh64(b"a\xffb\xff", 0));
    assert_eq!(hash_values(std::iter::empty()), xxh64(b"", 0));
    let owned = [String::from("x"), String::from("y")];
    assert_eq!(
        hash_values(owned.iter().map(String::as_str)),
        hash_values(["x", "y"])
    );
}

#[test]
fn an_unhealthy_host_moves_only_its_own_keys() {
    // Four hosts are the case where three healthy ones alone would size the ring
    // differently: the ring follows the whole cluster, so nothing else moves.
    for n in [2usize, 4, 8, 10] {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let all = hosts(n, 0, n);
            let mut one_down = all.clone();
            one_down[1].healthy = false;
            let before = ClusterLb::build(&all, &settings(policy));
            let after = ClusterLb::build(&one_down, &settings(policy));
            let (mut moved, mut strays) = (0, 0);
            for i in 0..10_000 {
                let h = hash_values([format!("user-{i}").as_str()]);
                let (a, b) = (
                    before.pick(Some(h), None, |_| 0),
                    after.pick(Some(h), None, |_| 0),
                );
                assert_ne!(b, Some(1), "{policy:?}: a key reached the unhealthy host");
                if a == Some(1) {
                    moved += 1;
                } else if a != b {
                    strays += 1;
                }
            }
            let limit = if policy == LbPolicy::RingHash { 0 } else { 50 };
            assert!(
                strays <= limit,
                "{policy:?} with {n} hosts: {strays} keys of healthy hosts moved"
            );
            let share = moved as f64 / 10_000.0;
            let fair = 1.0 / n as f64;
            assert!(
                share > fair * 0.5 && share < fair * 1.6,
                "{policy:?} with {n} hosts: {share} of keys were on the host that failed"
            );
        }
    }
}
