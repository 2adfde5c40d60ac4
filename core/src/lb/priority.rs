//! Effective priority levels, their traffic shares and panic state (Envoy's rules).

use super::{HostInfo, LevelCount, LocalityMode};
use crate::config::Locality;

/// The effective level of every host and the number of levels.
///
/// A level key is (configured priority, locality rank); the rank is always 0 except in
/// [`LocalityMode::Failover`]. The distinct keys present are numbered 0, 1, 2, … in order.
pub(super) fn effective_levels(hosts: &[HostInfo], mode: &LocalityMode) -> (Vec<u32>, usize) {
    let keys: Vec<(u32, u8)> = hosts
        .iter()
        .map(|h| {
            let rank = match mode {
                LocalityMode::Failover { node } => rank(node, &h.locality),
                _ => 0,
            };
            (h.priority, rank)
        })
        .collect();
    let mut distinct = keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let levels = keys
        .iter()
        .map(|k| distinct.binary_search(k).unwrap_or_else(|i| i) as u32)
        .collect();
    (levels, distinct.len())
}

/// 0: same region, zone and subzone as the node; 1: same region and zone; 2: same
/// region; 3: elsewhere. A node with no region prefers nothing.
pub(super) fn rank(node: &Locality, host: &Locality) -> u8 {
    if node.region.is_empty() {
        0
    } else if host.region != node.region {
        3
    } else if host.zone != node.zone {
        2
    } else if host.subzone != node.subzone {
        1
    } else {
        0
    }
}

/// Traffic percent of each level (summing to 100 when there are levels) and whether each
/// is in panic.
///
/// Health of a level is `min(100, factor × healthy / total)`; the normalized total is
/// `min(100, Σ health)`. Levels take, in order, `min(remaining, health × 100 / normalized
/// total)`; a rounding remainder goes to the first level with any health. When no level
/// has any health, the first level takes everything (in panic, unless panic is disabled).
/// Panic: never while the normalized total is 100; otherwise a level is in panic when its
/// healthy percentage is below `panic_threshold`.
pub(super) fn priority_state(
    levels: &[LevelCount],
    factor: u32,
    panic_threshold: u32,
) -> (Vec<u32>, Vec<bool>) {
    let health: Vec<u64> = levels
        .iter()
        .map(|l| {
            u64::from(factor)
                .saturating_mul(l.healthy)
                .checked_div(l.total)
                .unwrap_or(0)
                .min(100)
        })
        .collect();
    let normalized = health
        .iter()
        .fold(0u64, |a, &h| a.saturating_add(h))
        .min(100);
    let panic = levels
        .iter()
        .map(|l| normalized < 100 && healthy_percent(l) < u64::from(panic_threshold))
        .collect();

    let mut loads = vec![0u32; levels.len()];
    if levels.is_empty() {
        return (loads, panic);
    }
    if normalized == 0 {
        let first = levels.iter().position(|l| l.total > 0).unwrap_or(0);
        loads[first] = 100;
        return (loads, panic);
    }
    let mut remaining = 100u64;
    let mut first_available = None;
    for (i, &h) in health.iter().enumerate() {
        if first_available.is_none() && h > 0 {
            first_available = Some(i);
        }
        let load = remaining.min(h * 100 / normalized);
        loads[i] = load as u32;
        remaining -= load;
    }
    if let Some(i) = first_available {
        loads[i] += remaining as u32;
    }
    (loads, panic)
}

fn healthy_percent(l: &LevelCount) -> u64 {
    l.healthy
        .saturating_mul(100)
        .checked_div(l.total)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lc(healthy: u64, total: u64) -> LevelCount {
        LevelCount { healthy, total }
    }

    #[test]
    fn loads_and_panic_table() {
        // (levels as (healthy, total), factor, threshold, loads, panic)
        #[allow(clippy::type_complexity)]
        let cases: &[(&[(u64, u64)], u32, u32, &[u32], &[bool])] = &[
            // P0 all healthy: everything stays there.
            (&[(10, 10), (10, 10)], 140, 50, &[100, 0], &[false, false]),
            // P0 half healthy: 1.4 × 50% = 70%, the rest spills to P1.
            (&[(5, 10), (10, 10)], 140, 50, &[70, 30], &[false, false]),
            // P0 at 72% healthy is still worth 100% with a 1.4 factor.
            (&[(72, 100), (10, 10)], 140, 50, &[100, 0], &[false, false]),
            (&[(71, 100), (10, 10)], 140, 50, &[99, 1], &[false, false]),
            // P0 fully down.
            (&[(0, 10), (10, 10)], 140, 50, &[0, 100], &[false, false]),
            // Both short (28 + 28 = 56 < 100): normalized to 50/50, and both below 50%
            // healthy, so both in panic.
            (&[(2, 10), (2, 10)], 140, 50, &[50, 50], &[true, true]),
            // Short but above the threshold: normalized, no panic.
            (&[(6, 10), (0, 10)], 140, 50, &[100, 0], &[false, true]),
            // 14 + 14 + 14 = 42: 33 each, the rounding remainder to the first.
            (
                &[(1, 10), (1, 10), (1, 10)],
                140,
                50,
                &[34, 33, 33],
                &[true, true, true],
            ),
            // 10% healthy P1 does not panic while the total is 100.
            (&[(10, 10), (1, 10)], 140, 50, &[100, 0], &[false, false]),
            // 28 + 56 = 84: 33 / 66, remainder to P0; P0 panics, P1 (40%) panics too.
            (&[(2, 10), (4, 10)], 140, 50, &[34, 66], &[true, true]),
            // Remainder goes to the first level with health, not to an empty-health P0.
            (
                &[(0, 10), (1, 10), (1, 10)],
                140,
                50,
                &[0, 50, 50],
                &[true, true, true],
            ),
            (
                &[(0, 10), (1, 3), (1, 3)],
                140,
                50,
                &[0, 50, 50],
                &[true, true, true],
            ),
            (
                &[(0, 10), (2, 10), (1, 10)],
                140,
                50,
                &[0, 67, 33],
                &[true, true, true],
            ),
            // All unhealthy: level 0 takes everything, in panic.
            (&[(0, 10), (0, 10)], 140, 50, &[100, 0], &[true, true]),
            // Same with panic disabled: no panic (so nothing can be picked).
            (&[(0, 10), (0, 10)], 140, 0, &[100, 0], &[false, false]),
            // Factor 100: health is the plain healthy share.
            (&[(5, 10), (10, 10)], 100, 50, &[50, 50], &[false, false]),
            // A factor of 0 leaves no level any health.
            (&[(10, 10)], 0, 50, &[100], &[false]),
            // Threshold above 100: every level short of the total is in panic.
            (&[(9, 10)], 100, 101, &[100], &[true]),
        ];
        for (i, (levels, factor, threshold, loads, panic)) in cases.iter().enumerate() {
            let counts: Vec<LevelCount> = levels.iter().map(|&(h, t)| lc(h, t)).collect();
            let (got_loads, got_panic) = priority_state(&counts, *factor, *threshold);
            assert_eq!(&got_loads[..], *loads, "case {i}: loads");
            assert_eq!(&got_panic[..], *panic, "case {i}: panic");
            assert_eq!(got_loads.iter().sum::<u32>(), 100, "case {i}: sum");
        }
    }

    #[test]
    fn loads_always_sum_to_100() {
        for a in 0..=7u64 {
            for b in 0..=7 {
                for c in 0..=3 {
                    for factor in [0, 50, 100, 140, 200, u32::MAX] {
                        let counts = [lc(a, 7), lc(b, 7), lc(c, 3)];
                        let (loads, _) = priority_state(&counts, factor, 50);
                        assert_eq!(loads.iter().sum::<u32>(), 100, "{a} {b} {c} {factor}");
                    }
                }
            }
        }
        assert!(priority_state(&[], 140, 50).0.is_empty());
    }

    fn loc(region: &str, zone: &str, subzone: &str) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }

    #[test]
    fn failover_rank() {
        let node = loc("bj", "800002", "a");
        assert_eq!(rank(&node, &loc("bj", "800002", "a")), 0);
        assert_eq!(rank(&node, &loc("bj", "800002", "b")), 1);
        assert_eq!(rank(&node, &loc("bj", "800005", "a")), 2);
        assert_eq!(rank(&node, &loc("sh", "800002", "a")), 3);
        assert_eq!(rank(&loc("", "", ""), &loc("sh", "x", "y")), 0);
    }

    fn host(priority: u32, locality: Locality) -> HostInfo {
        HostInfo {
            key: String::new(),
            weight: 1,
            priority,
            locality,
            healthy: true,
        }
    }

    #[test]
    fn levels_are_compacted() {
        let hosts = [
            host(3, loc("sh", "x", "")),
            host(0, loc("bj", "800005", "")),
            host(3, loc("bj", "800002", "")),
            host(0, loc("bj", "800002", "")),
        ];
        let (levels, n) = effective_levels(&hosts, &LocalityMode::Off);
        assert_eq!((levels, n), (vec![1, 0, 1, 0], 2));
        let node = loc("bj", "800002", "");
        let (levels, n) = effective_levels(&hosts, &LocalityMode::Failover { node });
        // Keys: (3,3) (0,2) (3,0) (0,0) → sorted (0,0) (0,2) (3,0) (3,3).
        assert_eq!((levels, n), (vec![3, 1, 2, 0], 4));
        let (levels, n) = effective_levels(&[], &LocalityMode::Off);
        assert_eq!((levels, n), (vec![], 0));
    }
}
