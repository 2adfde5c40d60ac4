//! Weighted round robin.
//!
//! Equal weights take turns through a lock-free counter. Unequal weights follow an
//! earliest deadline first order (as Envoy's scheduler): the k-th turn of a host of weight
//! `w` (weights divided by their greatest common divisor) is due at
//! `(k - 1 + phase) / w`, and the host with the earliest deadline goes next. Over every
//! cycle of `Σw` picks each host gets exactly `w` turns, evenly spread; the phase (a
//! low-discrepancy fraction of the host's position) staggers hosts of equal weight so
//! that the light ones do not bunch up between two runs of the heavy ones.
//!
//! When a cycle is short enough it is computed once and walked with a lock-free counter;
//! longer cycles run the scheduler itself, under a lock.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, MutexGuard};

/// Longest cycle computed ahead (4 bytes per turn).
const MAX_SCHEDULE: u64 = 1 << 16;

/// Picks tried when the pick is the host to avoid, before taking its neighbour.
const AVOID_TRIES: usize = 8;

pub(super) enum RoundRobin {
    /// All weights equal: positions in turn.
    Equal { next: AtomicUsize, n: usize },
    /// One full cycle of the scheduler, walked in turn.
    Schedule {
        next: AtomicUsize,
        order: Box<[u32]>,
        n: usize,
    },
    /// Cycles too long to compute ahead.
    Edf { n: usize, edf: Mutex<Edf> },
}

impl RoundRobin {
    /// `weights` non-empty, each at least 1; `start` offsets the rotation.
    pub(super) fn new(weights: &[u32], start: usize) -> RoundRobin {
        let n = weights.len().max(1);
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return RoundRobin::Equal {
                next: AtomicUsize::new(start % n),
                n,
            };
        }
        let g = weights.iter().fold(0, |g, &w| gcd(g, w.max(1)));
        let reduced: Vec<u32> = weights.iter().map(|&w| w.max(1) / g.max(1)).collect();
        let cycle: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
        if cycle <= MAX_SCHEDULE {
            let order = schedule(&reduced);
            return RoundRobin::Schedule {
                next: AtomicUsize::new(start % order.len().max(1)),
                order,
                n,
            };
        }
        RoundRobin::Edf {
            n,
            edf: Mutex::new(Edf::new(&reduced)),
        }
    }

    /// The next position, not `avoid` when another exists.
    pub(super) fn pick(&self, avoid: Option<usize>) -> usize {
        match self {
            RoundRobin::Equal { next, n } => {
                let i = next.fetch_add(1, AtomicOrdering::Relaxed) % n;
                match avoid {
                    Some(a) if a == i && *n > 1 => (i + 1) % n,
                    _ => i,
                }
            }
            RoundRobin::Schedule { next, order, n } => {
                let len = order.len();
                if len == 0 {
                    return 0;
                }
                let i = next.fetch_add(1, AtomicOrdering::Relaxed) % len;
                let pos = order[i] as usize;
                match avoid {
                    Some(a) if a == pos && *n > 1 => (1..=AVOID_TRIES)
                        .map(|k| order[(i + k) % len] as usize)
                        .find(|&p| p != a)
                        .unwrap_or((pos + 1) % n),
                    _ => pos,
                }
            }
            RoundRobin::Edf { n, edf } => {
                let mut edf = lock(edf);
                let pos = edf.next();
                match avoid {
                    Some(a) if a == pos && *n > 1 => (0..AVOID_TRIES)
                        .map(|_| edf.next())
                        .find(|&p| p != a)
                        .unwrap_or((pos + 1) % n),
                    _ => pos,
                }
            }
        }
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One cycle of the scheduler: all turns of all hosts, by deadline.
fn schedule(weights: &[u32]) -> Box<[u32]> {
    let mut turns: Vec<(u64, u32)> = Vec::new();
    for (pos, &w) in weights.iter().enumerate() {
        let ph = phase(pos);
        for turn in 0..w {
            // Deadlines are positive, so their bit patterns sort like their values.
            turns.push((deadline(turn, ph, w).to_bits(), pos as u32));
        }
    }
    turns.sort_unstable();
    turns.into_iter().map(|(_, pos)| pos).collect()
}

/// When a host's turn (0-based, within a cycle) is due, as a fraction of the cycle.
fn deadline(turn: u32, phase: f64, weight: u32) -> f64 {
    (f64::from(turn) + phase) / f64::from(weight.max(1))
}

/// A fraction in [0, 1) spreading consecutive positions evenly (golden ratio sequence);
/// position 0 has phase 0.
fn phase(pos: usize) -> f64 {
    ((pos as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64
}

fn lock(m: &Mutex<Edf>) -> MutexGuard<'_, Edf> {
    // The scheduler stays consistent whatever a panicking holder was doing.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Earliest deadline first scheduler over positions. Deadlines are kept as a whole cycle
/// count plus a fraction recomputed from integers at each turn, so rounding never
/// accumulates and every cycle holds exactly `w` turns of each host.
pub(super) struct Edf {
    heap: BinaryHeap<Reverse<Entry>>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    cycle: u64,
    frac: f64,
    turn: u32,
    weight: u32,
    pos: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cycle
            .cmp(&other.cycle)
            .then_with(|| self.frac.total_cmp(&other.frac))
            .then_with(|| self.pos.cmp(&other.pos))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl Edf {
    pub(super) fn new(weights: &[u32]) -> Edf {
        let heap = weights
            .iter()
            .enumerate()
            .map(|(pos, &w)| {
                Reverse(Entry {
                    cycle: 0,
                    frac: deadline(0, phase(pos), w),
                    turn: 0,
                    weight: w.max(1),
                    pos: pos as u32,
                })
            })
            .collect();
        Edf { heap }
    }

    /// Takes the host with the earliest deadline and schedules its next turn.
    pub(super) fn next(&mut self) -> usize {
        let Some(mut top) = self.heap.peek_mut() else {
            return 0;
        };
        let e = &mut top.0;
        let pos = e.pos as usize;
        e.turn += 1;
        if e.turn >= e.weight {
            e.turn = 0;
            e.cycle += 1;
        }
        e.frac = deadline(e.turn, phase(pos), e.weight);
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rr: &RoundRobin, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[rr.pick(None)] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_take_turns() {
        let rr = RoundRobin::new(&[3, 3, 3, 3], 2);
        assert!(matches!(rr, RoundRobin::Equal { .. }));
        let seq: Vec<usize> = (0..8).map(|_| rr.pick(None)).collect();
        assert_eq!(seq, [2, 3, 0, 1, 2, 3, 0, 1]);
        assert_eq!(counts(&rr, 4, 400), [100; 4]);
    }

    #[test]
    fn unequal_weights_exact_over_every_cycle() {
        for weights in [
            &[1u32, 2, 7][..],
            &[5, 1, 1],
            &[3, 2],
            &[1, 1, 1, 100],
            &[7, 5, 3, 2],
        ] {
            let rr = RoundRobin::new(weights, 0);
            let total: u32 = weights.iter().sum();
            for _cycle in 0..20 {
                let c = counts(&rr, weights.len(), total as usize);
                let want: Vec<usize> = weights.iter().map(|&w| w as usize).collect();
                assert_eq!(c, want, "{weights:?}");
            }
        }
    }

    #[test]
    fn any_window_of_a_cycle_is_exact() {
        // The sequence is periodic, so any Σw consecutive picks hold each host w times.
        let weights = [1u32, 2, 7];
        let rr = RoundRobin::new(&weights, 0);
        let seq: Vec<usize> = (0..500).map(|_| rr.pick(None)).collect();
        for window in seq.windows(10) {
            let mut c = [0; 3];
            for &p in window {
                c[p] += 1;
            }
            assert_eq!(c, [1, 2, 7]);
        }
    }

    fn longest_run(seq: &[usize], host: usize) -> usize {
        let (mut best, mut run) = (0, 0);
        for &p in seq {
            run = if p == host { run + 1 } else { 0 };
            best = best.max(run);
        }
        best
    }

    #[test]
    fn smooth_interleaving() {
        // 5:1:1 — a perfect interleaving has runs of the heavy host of at most 3
        // (two light turns per 7 picks); a naive scheduler gives runs of 5 or more.
        let rr = RoundRobin::new(&[5, 1, 1], 0);
        let seq: Vec<usize> = (0..7 * 50).map(|_| rr.pick(None)).collect();
        assert!(longest_run(&seq, 0) <= 3, "{:?}", &seq[..14]);
        // The light hosts never follow each other.
        assert!(seq.windows(2).all(|w| !(w[0] != 0 && w[1] != 0)));

        // 1:2:7 — the heavy host (70%) never runs longer than 4 (3 light turns
        // per 10 picks, so runs of 2–3 are ideal; 4 leaves slack).
        let rr = RoundRobin::new(&[1, 2, 7], 0);
        let seq: Vec<usize> = (0..10 * 50).map(|_| rr.pick(None)).collect();
        assert!(longest_run(&seq, 2) <= 4);
        assert!(longest_run(&seq, 1) <= 1);

        // Many equal light hosts and one heavy: the heavy one's turns are spread out.
        let mut weights = vec![1u32; 10];
        weights[0] = 10;
        let rr = RoundRobin::new(&weights, 0);
        let seq: Vec<usize> = (0..20 * 50).map(|_| rr.pick(None)).collect();
        assert!(longest_run(&seq, 0) <= 2);
    }

    #[test]
    fn schedule_and_scheduler_agree() {
        for weights in [
            &[1u32, 2, 7][..],
            &[5, 1, 1],
            &[3, 2],
            &[7, 5, 3, 2, 1, 1, 1],
        ] {
            let order = schedule(weights);
            let mut edf = Edf::new(weights);
            for _ in 0..3 {
                for &p in order.iter() {
                    assert_eq!(edf.next(), p as usize, "{weights:?}");
                }
            }
        }
    }

    #[test]
    fn long_cycles_run_the_scheduler() {
        let weights = [70_000u32, 3, 1];
        let rr = RoundRobin::new(&weights, 0);
        assert!(matches!(rr, RoundRobin::Edf { .. }));
        let c = counts(&rr, 3, 70_004 * 2);
        assert_eq!(c, [140_000, 6, 2]);
        for _ in 0..100 {
            assert_ne!(rr.pick(Some(0)), 0);
        }
        // Common factors are divided out: a short cycle again.
        let rr = RoundRobin::new(&[700_000, 300_000], 0);
        assert!(matches!(rr, RoundRobin::Schedule { .. }));
        assert_eq!(counts(&rr, 2, 10), [7, 3]);
    }

    #[test]
    fn avoid_is_skipped() {
        for weights in [&[1u32, 1, 1][..], &[1, 2, 7], &[100, 1], &[100_000, 1]] {
            let rr = RoundRobin::new(weights, 0);
            for a in 0..weights.len() {
                for _ in 0..200 {
                    assert_ne!(rr.pick(Some(a)), a, "{weights:?}");
                }
            }
        }
        // A lone host is returned even when avoided.
        assert_eq!(RoundRobin::new(&[4], 0).pick(Some(0)), 0);
        let rr = RoundRobin::new(&[4, 4], 7);
        assert_eq!(rr.pick(Some(0)), 1);
        assert_eq!(rr.pick(Some(0)), 1);
    }
}
