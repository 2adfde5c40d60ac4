//! Weighted random choice: uniform for equal weights, otherwise a binary search of the
//! cumulative weights.

use rand::Rng;

pub(super) struct Sampler {
    n: usize,
    /// Cumulative weights when they are not all equal.
    cumulative: Option<Vec<u64>>,
}

impl Sampler {
    /// `weights` non-empty, each at least 1.
    pub(super) fn new(weights: &[u32]) -> Sampler {
        let n = weights.len().max(1);
        let cumulative = (!weights.windows(2).all(|w| w[0] == w[1])).then(|| {
            weights
                .iter()
                .scan(0u64, |acc, &w| {
                    *acc += u64::from(w.max(1));
                    Some(*acc)
                })
                .collect()
        });
        Sampler { n, cumulative }
    }

    /// True when all weights are equal.
    pub(super) fn uniform(&self) -> bool {
        self.cumulative.is_none()
    }

    /// A position drawn in proportion to its weight.
    pub(super) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match &self.cumulative {
            None => rng.gen_range(0..self.n),
            Some(c) => {
                let total = c.last().copied().unwrap_or(1);
                let x = rng.gen_range(0..total);
                c.partition_point(|&v| v <= x)
            }
        }
    }

    /// A position other than `skip` drawn in proportion to its weight (`skip` itself
    /// when it is the only one).
    pub(super) fn sample_excluding<R: Rng + ?Sized>(&self, rng: &mut R, skip: usize) -> usize {
        if self.n <= 1 || skip >= self.n {
            return self.sample(rng);
        }
        match &self.cumulative {
            None => {
                let q = rng.gen_range(0..self.n - 1);
                q + usize::from(q >= skip)
            }
            Some(c) => {
                let hi = c[skip];
                let lo = if skip == 0 { 0 } else { c[skip - 1] };
                let total = c.last().copied().unwrap_or(1);
                let mut x = rng.gen_range(0..total - (hi - lo));
                if x >= lo {
                    x += hi - lo;
                }
                c.partition_point(|&v| v <= x)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::lb::tests::assert_shares;

    #[test]
    fn weighted_shares() {
        let mut rng = StdRng::seed_from_u64(1);
        for weights in [&[1u32, 1, 1, 1][..], &[1, 2, 7], &[10, 1]] {
            let s = Sampler::new(weights);
            let mut c = vec![0; weights.len()];
            for _ in 0..100_000 {
                c[s.sample(&mut rng)] += 1;
            }
            assert_shares(&c, weights, 0.02);
        }
    }

    #[test]
    fn excluding_keeps_the_other_shares() {
        let mut rng = StdRng::seed_from_u64(2);
        for weights in [&[1u32, 1, 1][..], &[1, 2, 7]] {
            let s = Sampler::new(weights);
            for skip in 0..weights.len() {
                let mut c = vec![0; weights.len()];
                for _ in 0..30_000 {
                    c[s.sample_excluding(&mut rng, skip)] += 1;
                }
                assert_eq!(c[skip], 0);
                let mut w = weights.to_vec();
                w[skip] = 0;
                assert_shares(&c, &w, 0.02);
            }
        }
        let one = Sampler::new(&[3]);
        assert_eq!(one.sample_excluding(&mut rng, 0), 0);
    }
}
