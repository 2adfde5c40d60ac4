//! Local rate limiting: token buckets per listener and per route, as Envoy's local rate
//! limit filter. A bucket starts full, gains `tokens_per_fill` every `fill_interval` up to
//! `max_tokens`, and each request it applies to takes one token; a request that finds it
//! empty is answered with the protocol's "over limit" reply. Refills are computed when a
//! request arrives, so an idle bucket costs nothing.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config;
use crate::message::Metadata;
use crate::router::Conditions;

/// One token bucket, optionally limited to requests with some attributes.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval: Duration,
    conditions: Conditions,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: u64,
    last_fill: Instant,
}

impl TokenBucket {
    /// A full bucket built from its configuration (validated beforehand).
    pub fn new(cfg: &config::TokenBucket, path: &str) -> Result<Self, config::ConfigError> {
        let conditions = match &cfg.match_ {
            Some(m) => Conditions::compile(m, &format!("{path}.match"))?,
            None => Conditions::default(),
        };
        let max_tokens = u64::from(cfg.max_tokens.max(1));
        Ok(Self {
            max_tokens,
            tokens_per_fill: u64::from(cfg.tokens_per_fill.unwrap_or(cfg.max_tokens).max(1)),
            fill_interval: cfg.fill_interval.0.max(Duration::from_millis(1)),
            conditions,
            state: Mutex::new(BucketState {
                tokens: max_tokens,
                last_fill: Instant::now(),
            }),
        })
    }

    /// True when this bucket was built from the same settings as `cfg`, so it can carry
    /// its tokens over into a new configuration.
    pub fn same_settings(&self, cfg: &config::TokenBucket) -> bool {
        self.max_tokens == u64::from(cfg.max_tokens.max(1))
            && self.tokens_per_fill
                == u64::from(cfg.tokens_per_fill.unwrap_or(cfg.max_tokens).max(1))
            && self.fill_interval == cfg.fill_interval.0.max(Duration::from_millis(1))
            && cfg.match_.is_none()
            && self.conditions.is_empty()
    }

    /// True when the bucket's match (if any) holds for `metadata`.
    pub fn applies(&self, metadata: &Metadata) -> bool {
        self.conditions.matches(metadata)
    }

    /// Takes a token for a request with `metadata`. True when the request may proceed:
    /// either the bucket does not apply to it or a token was available.
    pub fn admit(&self, metadata: &Metadata) -> bool {
        if !self.conditions.matches(metadata) {
            return true;
        }
        self.take()
    }

    /// Takes a token if one is left.
    pub fn take(&self) -> bool {
        let now = Instant::now();
        // A poisoned lock only means another thread panicked mid-update; the counts are
        // still plain integers.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.last_fill);
        if elapsed >= self.fill_interval {
            let fills = elapsed.as_nanos() / self.fill_interval.as_nanos();
            let added = u64::try_from(fills)
                .unwrap_or(u64::MAX)
                .saturating_mul(self.tokens_per_fill);
            s.tokens = s.tokens.saturating_add(added).min(self.max_tokens);
            // Keep the fill phase: the remainder of the interval carries over.
            let step = self
                .fill_interval
                .checked_mul(u32::try_from(fills).unwrap_or(u32::MAX))
                .unwrap_or(elapsed);
            s.last_fill = if fills > u128::from(u32::MAX) {
                now
            } else {
                s.last_fill + step
            };
        }
        if s.tokens == 0 {
            return false;
        }
        s.tokens -= 1;
        true
    }

    /// Tokens left now (without refilling), for tests and introspection.
    pub fn tokens(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn bucket(max: u32, per_fill: Option<u32>, every: Duration) -> TokenBucket {
        TokenBucket::new(
            &config::TokenBucket {
                max_tokens: max,
                tokens_per_fill: per_fill,
                fill_interval: ConfigDuration(every),
                match_: None,
            },
            "t",
        )
        .expect("valid bucket")
    }

    #[tokio::test(start_paused = true)]
    async fn starts_full_then_refuses_until_the_next_fill() {
        let b = bucket(3, Some(2), Duration::from_secs(1));
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.take(), "no fill before the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.take() && b.take());
        assert!(!b.take(), "a fill adds tokens_per_fill");
    }

    #[tokio::test(start_paused = true)]
    async fn fills_accumulate_up_to_the_bucket_size_and_keep_their_phase() {
        let b = bucket(5, Some(1), Duration::from_millis(100));
        for _ in 0..5 {
            assert!(b.take());
        }
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(b.take() && b.take());
        assert!(!b.take(), "two whole intervals passed");
        // 50ms of the third interval had already passed.
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(b.take());
        tokio::time::advance(Duration::from_secs(3600)).await;
        let mut n = 0;
        while b.take() {
            n += 1;
        }
        assert_eq!(n, 5, "never more than max_tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_with_conditions_only_counts_matching_requests() {
        let cfg: config::TokenBucket = serde_yaml_ng::from_str(
            "{ max_tokens: 1, fill_interval: 1h, match: { attributes: { tier: { exact: batch } } } }",
        )
        .expect("yaml");
        let b = TokenBucket::new(&cfg, "t").expect("valid");
        let mut batch = Metadata::new();
        batch.push_decoded("tier", "batch");
        let other = Metadata::new();
        assert!(b.admit(&batch));
        assert!(!b.admit(&batch));
        for _ in 0..10 {
            assert!(
                b.admit(&other),
                "requests outside the match are not limited"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_rate_matches_the_fill_rate() {
        let b = bucket(10, Some(10), Duration::from_secs(1));
        let mut admitted = 0;
        // 100 requests per second for 10 seconds against 10 per second.
        for _ in 0..1000 {
            if b.take() {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((100..=110).contains(&admitted), "{admitted}");
    }
}

/// A listener's buckets: conditional ones tried in order, then the default one.
#[derive(Debug, Default)]
pub struct ListenerLimits {
    conditions: Vec<TokenBucket>,
    default: Option<TokenBucket>,
}

impl ListenerLimits {
    /// The buckets of `listener`; `None` when it has none.
    pub fn new(listener: &config::Listener) -> Result<Option<Self>, config::ConfigError> {
        let p = format!("listeners[{}]", listener.name);
        let conditions = listener
            .local_rate_limit_conditions
            .iter()
            .enumerate()
            .map(|(k, tb)| TokenBucket::new(tb, &format!("{p}.local_rate_limit_conditions[{k}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let default = listener
            .local_rate_limit
            .as_ref()
            .map(|tb| TokenBucket::new(tb, &format!("{p}.local_rate_limit")))
            .transpose()?;
        if conditions.is_empty() && default.is_none() {
            return Ok(None);
        }
        Ok(Some(ListenerLimits {
            conditions,
            default,
        }))
    }

    /// Takes a token for a request with `metadata` from the first condition it meets, or
    /// else from the default bucket. True when the request may proceed.
    pub fn admit(&self, metadata: &Metadata) -> bool {
        for c in &self.conditions {
            if c.applies(metadata) {
                return c.take();
            }
        }
        self.default.as_ref().is_none_or(|d| d.admit(metadata))
    }
}
