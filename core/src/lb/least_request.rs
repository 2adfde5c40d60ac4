//! Least request: the power of two choices. Two distinct hosts are drawn (in proportion
//! to their weights) and the one with fewer requests in flight wins; with unequal
//! weights the comparison is of requests in flight per unit of weight. Ties go to the
//! first draw, so with no requests in flight the shares follow the weights exactly.

use rand::Rng;

use super::random::Sampler;

/// Draws tried for the second candidate before settling for the first alone.
const SECOND_TRIES: usize = 3;

pub(super) struct LeastRequest {
    sampler: Sampler,
    /// Weights when they are not all equal.
    weights: Option<Vec<u32>>,
}

impl LeastRequest {
    /// `weights` non-empty, each at least 1.
    pub(super) fn new(weights: &[u32]) -> LeastRequest {
        let sampler = Sampler::new(weights);
        let weights = (!sampler.uniform()).then(|| weights.iter().map(|&w| w.max(1)).collect());
        LeastRequest { sampler, weights }
    }

    /// A position, not `avoid` when another exists; `active(p)` is the requests in
    /// flight to position `p`.
    pub(super) fn pick<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        avoid: Option<usize>,
        active: impl Fn(usize) -> usize,
    ) -> usize {
        let first = match avoid {
            Some(a) => self.sampler.sample_excluding(rng, a),
            None => self.sampler.sample(rng),
        };
        let mut second = None;
        for _ in 0..SECOND_TRIES {
            let s = self.sampler.sample_excluding(rng, first);
            if s != first && Some(s) != avoid {
                second = Some(s);
                break;
            }
        }
        let Some(second) = second else {
            return first;
        };
        let (a, b) = (active(first), active(second));
        let second_wins = match &self.weights {
            None => b < a,
            // b / w_b < a / w_a
            Some(w) => (b as u128) * u128::from(w[first]) < (a as u128) * u128::from(w[second]),
        };
        if second_wins {
            second
        } else {
            first
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
    fn idle_shares_follow_weights() {
        let mut rng = StdRng::seed_from_u64(3);
        for weights in [&[1u32, 1, 1, 1][..], &[1, 2, 7]] {
            let lr = LeastRequest::new(weights);
            let mut c = vec![0; weights.len()];
            for _ in 0..100_000 {
                c[lr.pick(&mut rng, None, |_| 0)] += 1;
            }
            assert_shares(&c, weights, 0.02);
        }
    }

    #[test]
    fn prefers_idle_hosts() {
        let mut rng = StdRng::seed_from_u64(4);
        // Two hosts: both are always the candidates, the idle one always wins.
        let lr = LeastRequest::new(&[1, 1]);
        for _ in 0..1000 {
            assert_eq!(lr.pick(&mut rng, None, |p| [5, 0][p]), 1);
        }
        // Ten hosts, one idle: it wins whenever drawn, about 2/10 of the time.
        let lr = LeastRequest::new(&[1; 10]);
        let mut idle = 0;
        for _ in 0..100_000 {
            if lr.pick(&mut rng, None, |p| if p == 3 { 0 } else { 10 }) == 3 {
                idle += 1;
            }
        }
        assert!((19_000..21_000).contains(&idle), "{idle}");
        // Busier hosts lose: with loads 0..10 the least loaded take most picks.
        let mut c = [0usize; 10];
        for _ in 0..100_000 {
            c[lr.pick(&mut rng, None, |p| p)] += 1;
        }
        assert!(c.windows(2).all(|w| w[0] > w[1]), "{c:?}");
    }

    #[test]
    fn unequal_weights_compare_load_per_weight() {
        let mut rng = StdRng::seed_from_u64(5);
        // 1 in flight on weight 1 is busier than 3 in flight on weight 4.
        let lr = LeastRequest::new(&[1, 4]);
        for _ in 0..1000 {
            assert_eq!(lr.pick(&mut rng, None, |p| [1, 3][p]), 1);
        }
        // 1 on weight 1 is less busy than 5 on weight 4.
        for _ in 0..1000 {
            assert_eq!(lr.pick(&mut rng, None, |p| [1, 5][p]), 0);
        }
    }

    #[test]
    fn avoid_is_skipped() {
        let mut rng = StdRng::seed_from_u64(6);
        for weights in [&[1u32, 1, 1][..], &[1, 2, 7], &[1, 1000], &[5, 5]] {
            let lr = LeastRequest::new(weights);
            for a in 0..weights.len() {
                for _ in 0..500 {
                    // The avoided host is idle, the others busy: it still loses.
                    let p = lr.pick(&mut rng, Some(a), |p| usize::from(p != a) * 10);
                    assert_ne!(p, a, "{weights:?}");
                }
            }
        }
        assert_eq!(LeastRequest::new(&[2]).pick(&mut rng, Some(0), |_| 0), 0);
    }
}
