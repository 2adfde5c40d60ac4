//! Ketama-style consistent hash ring.
//!
//! A host of weight `w` owns `w × 2^s` points (or `max(1, w >> s)` when the weights are
//! larger than the ring may be), the `n`-th at xxHash64 of `"{key}_{n}"`. The power of two
//! is the smallest that makes a ring of the cluster's whole weight (every host, healthy
//! or not) at least the minimum size (within the maximum), so it never changes when a
//! host fails or recovers and rarely when one is added or removed: the other hosts keep
//! exactly their points, and only the keys of the host that left (or that the new host
//! takes) move. A request
//! goes to the first point at or after its hash, wrapping around.

use xxhash_rust::xxh64::xxh64;

use super::MAX_RING_SIZE;

pub(super) struct Ring {
    /// Point hashes, ascending.
    hashes: Vec<u64>,
    /// Position of the host owning each point.
    owners: Vec<u32>,
    /// `index[p]`: the first point whose top `64 - shift` bits are at least `p`, so a
    /// lookup only searches the few points sharing the request's top bits.
    index: Vec<u32>,
    shift: u32,
    /// Distinct hosts on the ring.
    hosts: usize,
}

/// Most top bits indexed (4 bytes per slot).
const MAX_INDEX_BITS: u32 = 20;

impl Ring {
    /// `keys` and `weights` (each at least 1) per position, non-empty. `scale_total` is
    /// the weight the ring size is computed for (at least the sum of `weights`).
    pub(super) fn new(
        keys: &[&str],
        weights: &[u32],
        min_size: usize,
        max_size: usize,
        scale_total: u64,
    ) -> Ring {
        let counts = point_counts(weights, min_size, max_size, scale_total);
        let total: u64 = counts.iter().sum();
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let mut buf = Vec::new();
        for (pos, (key, &count)) in keys.iter().zip(&counts).enumerate() {
            buf.clear();
            buf.extend_from_slice(key.as_bytes());
            buf.push(b'_');
            let prefix = buf.len();
            for n in 0..count {
                buf.truncate(prefix);
                push_decimal(&mut buf, n);
                points.push((xxh64(&buf, 0), pos as u32));
            }
        }
        // Order by hash; the (astronomically rare) equal hashes by key, so the ring does
        // not depend on the order the hosts were given in.
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| keys[a.1 as usize].cmp(keys[b.1 as usize]))
                .then_with(|| a.1.cmp(&b.1))
        });
        let hashes: Vec<u64> = points.iter().map(|p| p.0).collect();
        let owners = points.iter().map(|p| p.1).collect();

        let bits = (usize::BITS - hashes.len().leading_zeros()).clamp(1, MAX_INDEX_BITS);
        let shift = 64 - bits;
        let mut index = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0;
        for prefix in 0..=(1u64 << bits) {
            while i < hashes.len() && (hashes[i] >> shift) < prefix {
                i += 1;
            }
            index.push(i as u32);
        }
        Ring {
            hashes,
            owners,
            index,
            shift,
            hosts: keys.len(),
        }
    }

    /// The position owning `hash`; when that is `avoid`, the owner of the next point
    /// owned by another host.
    pub(super) fn pick(&self, hash: u64, avoid: Option<usize>) -> usize {
        let len = self.hashes.len();
        if len == 0 {
            return 0;
        }
        let prefix = (hash >> self.shift) as usize;
        let (lo, hi) = match (self.index.get(prefix), self.index.get(prefix + 1)) {
            (Some(&lo), Some(&hi)) => (lo as usize, hi as usize),
            _ => (0, len),
        };
        let mut i = lo + self.hashes[lo..hi].partition_point(|&h| h < hash);
        if i == len {
            i = 0;
        }
        let owner = self.owners[i] as usize;
        if avoid != Some(owner) || self.hosts < 2 {
            return owner;
        }
        (1..len)
            .map(|k| self.owners[(i + k) % len] as usize)
            .find(|&o| o != owner)
            .unwrap_or(owner)
    }

    /// Number of points.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// Appends `n` in decimal.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Points per host: `w << s` with the smallest `s` making the ring at least `min_size`,
/// unless that passes `max_size`; when the weights alone pass `max_size`, `w >> s`
/// (at least 1) with the smallest `s` fitting.
fn point_counts(weights: &[u32], min_size: usize, max_size: usize, scale_total: u64) -> Vec<u64> {
    let max = max_size.clamp(1, MAX_RING_SIZE) as u128;
    let min = (min_size as u128).min(max);
    let sum: u128 = weights.iter().map(|&w| u128::from(w.max(1))).sum();
    let total = sum.max(u128::from(scale_total));
    if total <= max {
        let mut s = 0u32;
        while (total << s) < min && s < 64 {
            s += 1;
        }
        while s > 0 && (total << s) > max {
            s -= 1;
        }
        weights.iter().map(|&w| u64::from(w.max(1)) << s).collect()
    } else {
        let mut s = 0u32;
        while (total >> s) > max {
            s += 1;
        }
        weights
            .iter()
            .map(|&w| (u64::from(w.max(1)) >> s).max(1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::hash_values;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn ring(keys: &[String], weights: &[u32]) -> Ring {
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        Ring::new(&k, weights, 1024, 8 << 20, 0)
    }

    fn request_hashes() -> Vec<u64> {
        (0..10_000)
            .map(|i| hash_values([format!("user-{i}").as_str()]))
            .collect()
    }

    /// The host key each request lands on.
    fn owners(r: &Ring, keys: &[String], hashes: &[u64]) -> Vec<String> {
        hashes
            .iter()
            .map(|&h| keys[r.pick(h, None)].clone())
            .collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(point_counts(&[1; 10], 1024, 8 << 20, 0), vec![128; 10]);
        assert_eq!(point_counts(&[1; 9], 1024, 8 << 20, 0), vec![128; 9]);
        assert_eq!(point_counts(&[1; 11], 1024, 8 << 20, 0), vec![128; 11]);
        assert_eq!(point_counts(&[1, 2], 1024, 8 << 20, 0), vec![512, 1024]);
        // The maximum wins over the minimum.
        assert_eq!(point_counts(&[1; 10], 1024, 100, 0), vec![8; 10]);
        // Weights larger than the ring: scaled down, at least one point each.
        assert_eq!(point_counts(&[1, 4000], 0, 1000, 0), vec![1, 1000]);
        // Settings past the cap are capped; zero sizes are fine.
        let c = point_counts(&[u32::MAX; 4], usize::MAX, usize::MAX, 0);
        assert!(c.iter().sum::<u64>() <= MAX_RING_SIZE as u64);
        assert_eq!(point_counts(&[1, 1], 0, 0, 0), vec![1, 1]);
        // Three healthy hosts of a cluster of four keep the points they had among four.
        assert_eq!(point_counts(&[1; 3], 1024, 8 << 20, 4), vec![256; 3]);
        assert_eq!(point_counts(&[1; 4], 1024, 8 << 20, 0), vec![256; 4]);
        assert_eq!(ring(&keys(3), &[1, 1, 1]).len(), 3 * 512);
    }

    #[test]
    fn point_names() {
        let mut buf = Vec::new();
        for n in [0u64, 7, 10, 1234, u64::MAX] {
            buf.clear();
            push_decimal(&mut buf, n);
            assert_eq!(buf, n.to_string().as_bytes());
        }
        // Points are xxHash64 of "{key}_{n}".
        let r = Ring::new(&["a:1"], &[1], 2, 2, 0);
        let mut want = vec![xxh64(b"a:1_0", 0), xxh64(b"a:1_1", 0)];
        want.sort_unstable();
        assert_eq!(r.hashes, want);
    }

    #[test]
    fn indexed_lookup_matches_plain_search() {
        for n in [1usize, 2, 3, 10, 1000] {
            let k = keys(n);
            let r = ring(&k, &vec![1; n]);
            let mut probes = request_hashes();
            probes.extend([0, 1, u64::MAX, u64::MAX - 1]);
            probes.extend(
                r.hashes
                    .iter()
                    .flat_map(|&h| [h, h.wrapping_add(1), h.wrapping_sub(1)]),
            );
            for h in probes {
                let mut i = r.hashes.partition_point(|&x| x < h);
                if i == r.hashes.len() {
                    i = 0;
                }
                assert_eq!(r.pick(h, None), r.owners[i] as usize);
            }
        }
    }

    #[test]
    fn same_hash_same_host() {
        let k = keys(10);
        let r = ring(&k, &[1; 10]);
        let hashes = request_hashes();
        let first = owners(&r, &k, &hashes);
        assert_eq!(first, owners(&r, &k, &hashes));
        // Independent of the order the hosts come in.
        let mut rev = k.clone();
        rev.reverse();
        let r2 = ring(&rev, &[1; 10]);
        assert_eq!(first, owners(&r2, &rev, &hashes));
        // Spread: every host has some keys, none more than twice its share.
        for key in &k {
            let n = first.iter().filter(|o| *o == key).count();
            assert!((500..2000).contains(&n), "{key}: {n}");
        }
    }

    #[test]
    fn removing_a_host_moves_only_its_keys() {
        let k = keys(10);
        let hashes = request_hashes();
        let before = owners(&ring(&k, &[1; 10]), &k, &hashes);
        let removed = k[4].clone();
        let rest: Vec<String> = k.iter().filter(|x| **x != removed).cloned().collect();
        let after = owners(&ring(&rest, &[1; 9]), &rest, &hashes);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!((500..=1500).contains(&moved), "{moved}");
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*b, removed);
            }
        }
    }

    #[test]
    fn adding_a_host_moves_only_keys_to_it() {
        let k = keys(11);
        let hashes = request_hashes();
        let before = owners(&ring(&k[..10], &[1; 10]), &k[..10], &hashes);
        let after = owners(&ring(&k, &[1; 11]), &k, &hashes);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        // About 1/11.
        assert!((450..=1400).contains(&moved), "{moved}");
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, k[10]);
            }
        }
    }

    #[test]
    fn weights_are_respected() {
        let k = keys(10);
        let mut w = [1u32; 10];
        w[0] = 2;
        let r = ring(&k, &w);
        let o = owners(&r, &k, &request_hashes());
        let heavy = o.iter().filter(|x| **x == k[0]).count() as f64;
        let light = (o.len() as f64 - heavy) / 9.0;
        let ratio = heavy / light;
        assert!((1.6..=2.4).contains(&ratio), "{ratio}");
    }

    #[test]
    fn avoid_walks_to_the_next_host() {
        let k = keys(5);
        let r = ring(&k, &[1; 5]);
        for h in request_hashes().into_iter().take(1000) {
            let first = r.pick(h, None);
            let second = r.pick(h, Some(first));
            assert_ne!(first, second);
            // Deterministic.
            assert_eq!(second, r.pick(h, Some(first)));
            // Avoiding another host changes nothing.
            assert_eq!(first, r.pick(h, Some((first + 1) % 5)));
        }
        let lone = ring(&k[..1], &[1]);
        assert_eq!(lone.pick(42, Some(0)), 0);
    }
}
