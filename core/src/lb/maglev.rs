//! Maglev consistent hashing (as Envoy builds it).
//!
//! Each host walks its own permutation of the table slots, `offset + k × skip (mod M)`,
//! with `offset` and `skip` from two different hashes of its key (`M` prime makes every
//! walk visit every slot). Hosts take turns claiming their next free slot until the
//! table is full; a host of weight `w` takes a turn in `w / max weight` of the rounds.
//! A request goes to the host of slot `⌊hash × M / 2^64⌋`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use xxhash_rust::xxh64::xxh64;

use super::{DEFAULT_MAGLEV_TABLE_SIZE, MAX_MAGLEV_TABLE_SIZE};

const EMPTY: u32 = u32::MAX;

pub(super) struct Maglev {
    /// Position of the host owning each slot.
    table: Vec<u32>,
    /// Distinct hosts owning a slot.
    hosts: usize,
}

/// `requested` when it is a prime no larger than [`MAX_MAGLEV_TABLE_SIZE`], otherwise
/// [`DEFAULT_MAGLEV_TABLE_SIZE`].
pub(super) fn table_size(requested: usize) -> usize {
    if requested <= MAX_MAGLEV_TABLE_SIZE && crate::config::is_prime(requested as u64) {
        requested
    } else {
        DEFAULT_MAGLEV_TABLE_SIZE
    }
}

struct Builder {
    pos: u32,
    /// The next slot of this host's permutation.
    next: usize,
    skip: usize,
    weight: u128,
    target: u128,
}

impl Maglev {
    /// `keys` and `weights` (each at least 1) per position, non-empty; `size` a prime
    /// (see [`table_size`]).
    pub(super) fn new(keys: &[&str], weights: &[u32], size: usize) -> Maglev {
        let size = table_size(size);
        let mut builders = builders(keys, weights, size);
        let max_weight = builders.iter().map(|b| b.weight).max().unwrap_or(1);
        let total_weight: u128 = builders.iter().map(|b| b.weight).sum();

        // Envoy fills the table in rounds, each host (in turn) claiming a slot in the
        // rounds where `round × weight` has caught up with its target. Scanning every
        // host each round costs about `size × max weight / mean weight`; with very
        // uneven weights the same sequence of claims comes cheaper from a queue ordered
        // by (next eligible round, turn).
        let mut table = vec![EMPTY; size];
        if max_weight * builders.len() as u128 <= 4 * total_weight {
            fill_by_rounds(&mut table, &mut builders, max_weight);
        } else {
            fill_by_queue(&mut table, &mut builders, max_weight);
        }

        let mut owns = vec![false; keys.len()];
        for &p in &table {
            if let Some(o) = owns.get_mut(p as usize) {
                *o = true;
            }
        }
        Maglev {
            table,
            hosts: owns.iter().filter(|&&o| o).count(),
        }
    }

    /// The position owning `hash`; when that is `avoid`, the owner of the next slot
    /// owned by another host.
    pub(super) fn pick(&self, hash: u64, avoid: Option<usize>) -> usize {
        let len = self.table.len();
        if len == 0 {
            return 0;
        }
        let i = ((u128::from(hash) * len as u128) >> 64) as usize;
        let owner = self.table[i] as usize;
        if avoid != Some(owner) || self.hosts < 2 {
            return owner;
        }
        (1..len)
            .map(|k| self.table[(i + k) % len] as usize)
            .find(|&o| o != owner)
            .unwrap_or(owner)
    }

    /// Slots owned by each position.
    #[cfg(test)]
    fn slots(&self, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &p in &self.table {
            c[p as usize] += 1;
        }
        c
    }
}

/// One builder per host, in an order that does not depend on the order of the hosts
/// (by offset hash, then key).
fn builders(keys: &[&str], weights: &[u32], size: usize) -> Vec<Builder> {
    let m = size.max(2) as u64;
    let mut builders: Vec<(u64, Builder)> = keys
        .iter()
        .enumerate()
        .map(|(pos, key)| {
            let h0 = xxh64(key.as_bytes(), 0);
            let b = Builder {
                pos: pos as u32,
                next: (h0 % m) as usize,
                skip: (xxh64(key.as_bytes(), 1) % (m - 1) + 1) as usize,
                weight: u128::from(weights.get(pos).copied().unwrap_or(1).max(1)),
                target: 0,
            };
            (h0, b)
        })
        .collect();
    builders.sort_unstable_by(|(ha, a), (hb, b)| {
        ha.cmp(hb)
            .then_with(|| keys[a.pos as usize].cmp(keys[b.pos as usize]))
            .then(a.pos.cmp(&b.pos))
    });
    builders.into_iter().map(|(_, b)| b).collect()
}

/// Claims `b`'s next free slot.
fn claim(table: &mut [u32], b: &mut Builder) {
    let size = table.len();
    while table[b.next] != EMPTY {
        b.next += b.skip;
        if b.next >= size {
            b.next -= size;
        }
    }
    table[b.next] = b.pos;
}

fn fill_by_rounds(table: &mut [u32], builders: &mut [Builder], max_weight: u128) {
    let size = table.len();
    let mut filled = 0;
    let mut round: u128 = 1;
    while filled < size && !builders.is_empty() {
        for b in builders.iter_mut() {
            if round * b.weight < b.target {
                continue;
            }
            b.target += max_weight;
            claim(table, b);
            filled += 1;
            if filled == size {
                return;
            }
        }
        round += 1;
    }
}

fn fill_by_queue(table: &mut [u32], builders: &mut [Builder], max_weight: u128) {
    let size = table.len();
    let mut turns: BinaryHeap<Reverse<(u128, usize)>> =
        (0..builders.len()).map(|i| Reverse((1, i))).collect();
    let mut filled = 0;
    while filled < size {
        let Some(mut turn) = turns.peek_mut() else {
            return;
        };
        let (round, i) = turn.0;
        let b = &mut builders[i];
        b.target += max_weight;
        claim(table, b);
        filled += 1;
        turn.0 = (b.target.div_ceil(b.weight).max(round + 1), i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::hash_values;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.1.{i}:20880")).collect()
    }

    fn maglev(keys: &[String], weights: &[u32]) -> Maglev {
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        Maglev::new(&k, weights, DEFAULT_MAGLEV_TABLE_SIZE)
    }

    fn request_hashes() -> Vec<u64> {
        (0..10_000)
            .map(|i| hash_values([format!("user-{i}").as_str()]))
            .collect()
    }

    fn owners(m: &Maglev, keys: &[String], hashes: &[u64]) -> Vec<String> {
        hashes
            .iter()
            .map(|&h| keys[m.pick(h, None)].clone())
            .collect()
    }

    #[test]
    fn table_sizes() {
        assert_eq!(table_size(65_537), 65_537);
        assert_eq!(table_size(251), 251);
        assert_eq!(table_size(2), 2);
        assert_eq!(table_size(65_536), DEFAULT_MAGLEV_TABLE_SIZE);
        assert_eq!(table_size(0), DEFAULT_MAGLEV_TABLE_SIZE);
        assert_eq!(table_size(1), DEFAULT_MAGLEV_TABLE_SIZE);
        assert_eq!(table_size(MAX_MAGLEV_TABLE_SIZE), MAX_MAGLEV_TABLE_SIZE);
        assert_eq!(table_size(usize::MAX), DEFAULT_MAGLEV_TABLE_SIZE);
        // A tiny table still works.
        let m = Maglev::new(&["a", "b", "c"], &[1, 1, 1], 2);
        assert_eq!(m.table.len(), 2);
        assert!(m.pick(7, None) < 3);
    }

    #[test]
    fn both_fill_orders_agree() {
        let k = keys(50);
        let k: Vec<&str> = k.iter().map(String::as_str).collect();
        for weights in [vec![1u32; 50], (1..=50).collect(), {
            let mut w = vec![1u32; 50];
            w[7] = 1000;
            w
        }] {
            let mut a = builders(&k, &weights, 4099);
            let mut b = builders(&k, &weights, 4099);
            let max = u128::from(*weights.iter().max().unwrap());
            let (mut ta, mut tb) = (vec![EMPTY; 4099], vec![EMPTY; 4099]);
            fill_by_rounds(&mut ta, &mut a, max);
            fill_by_queue(&mut tb, &mut b, max);
            assert!(ta.iter().all(|&p| p != EMPTY));
            assert_eq!(ta, tb);
        }
    }

    #[test]
    fn equal_weights_fill_evenly() {
        let m = maglev(&keys(10), &[1; 10]);
        let slots = m.slots(10);
        assert_eq!(slots.iter().sum::<usize>(), DEFAULT_MAGLEV_TABLE_SIZE);
        // Maglev gives every host the same slot count, give or take one.
        let (lo, hi) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        assert!(hi - lo <= 1, "{slots:?}");
    }

    #[test]
    fn weights_are_respected() {
        let mut w = [1u32; 10];
        w[0] = 2;
        let k = keys(10);
        let m = maglev(&k, &w);
        let slots = m.slots(10);
        let ratio = slots[0] as f64 / (slots[1..].iter().sum::<usize>() as f64 / 9.0);
        assert!((1.95..=2.05).contains(&ratio), "{slots:?}");
        let o = owners(&m, &k, &request_hashes());
        let heavy = o.iter().filter(|x| **x == k[0]).count() as f64;
        let ratio = heavy / ((o.len() as f64 - heavy) / 9.0);
        assert!((1.6..=2.4).contains(&ratio), "{ratio}");
    }

    #[test]
    fn same_hash_same_host() {
        let k = keys(10);
        let hashes = request_hashes();
        let first = owners(&maglev(&k, &[1; 10]), &k, &hashes);
        assert_eq!(first, owners(&maglev(&k, &[1; 10]), &k, &hashes));
        let mut rev = k.clone();
        rev.reverse();
        assert_eq!(first, owners(&maglev(&rev, &[1; 10]), &rev, &hashes));
    }

    #[test]
    fn removing_a_host_moves_few_other_keys() {
        let k = keys(10);
        let hashes = request_hashes();
        let before = owners(&maglev(&k, &[1; 10]), &k, &hashes);
        let removed = k[4].clone();
        let rest: Vec<String> = k.iter().filter(|x| **x != removed).cloned().collect();
        let after = owners(&maglev(&rest, &[1; 9]), &rest, &hashes);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!((500..=1500).contains(&moved), "{moved}");
        let others: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, _)| **b != removed)
            .collect();
        let kept = others.iter().filter(|(b, a)| b == a).count();
        assert!(
            kept * 100 >= others.len() * 95,
            "{kept} of {}",
            others.len()
        );
    }

    #[test]
    fn adding_a_host_moves_about_its_share() {
        let k = keys(11);
        let hashes = request_hashes();
        let before = owners(&maglev(&k[..10], &[1; 10]), &k[..10], &hashes);
        let after = owners(&maglev(&k, &[1; 11]), &k, &hashes);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!((450..=1500).contains(&moved), "{moved}");
        let to_new = after.iter().filter(|a| **a == k[10]).count();
        assert!(to_new * 100 >= moved * 90, "{to_new} of {moved}");
    }

    #[test]
    fn avoid_takes_another_host() {
        let k = keys(5);
        let m = maglev(&k, &[1; 5]);
        for h in request_hashes().into_iter().take(1000) {
            let first = m.pick(h, None);
            let second = m.pick(h, Some(first));
            assert_ne!(first, second);
            assert_eq!(second, m.pick(h, Some(first)));
        }
        let lone = maglev(&k[..1], &[1]);
        assert_eq!(lone.pick(42, Some(0)), 0);
    }
}
