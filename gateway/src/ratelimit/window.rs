//! Sliding-window counters that never over-admit.
//!
//! A window of length `W` is cut into `N` buckets of width `w = W / N`. A request at time `t`
//! falls into bucket `b = floor(t / w)` (`w` rounded up, so `N * w >= W`); it is admitted when the requests already admitted in
//! buckets `b - N ..= b` plus this one do not exceed the limit. Those `N + 1` buckets cover
//! `(t - W, t]` and up to one bucket width more, so:
//!
//! - **never over-admits**: for any interval of length `W`, the last request admitted in it
//!   saw every earlier one of that interval in its count, so at most `limit` are admitted;
//! - **may refuse early**: a request can be refused up to one bucket width (`W / N`) before an
//!   exact log of timestamps would admit it. With the default 20 buckets and a 300 s window,
//!   that is 15 s.
//!
//! Memory per key is `N + 1` counters, whatever the limit (an exact log would hold `limit`
//! timestamps per key). Refused requests are not counted: a client that backs off recovers.

/// One window of a rule: at most `limit` requests per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Requests admitted per window.
    pub limit: u32,
    /// The window's length in milliseconds.
    pub window_ms: u64,
    /// Buckets per window (the refusal-may-come-early granularity is `window_ms / buckets`).
    pub buckets: u32,
}

impl WindowSpec {
    /// Rounded up, so that `buckets` buckets always span at least the whole window.
    fn width_ms(&self) -> u64 {
        self.window_ms
            .div_ceil(u64::from(self.buckets.max(1)))
            .max(1)
    }

    fn slots(&self) -> usize {
        self.buckets as usize + 1
    }
}

/// The counts of one key in one window.
#[derive(Debug, Clone)]
pub struct Counter {
    counts: Box<[u32]>,
    /// Absolute bucket index of the newest slot written (or advanced to).
    newest: u64,
}

/// What a check found for one window, for the `RateLimit` header and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Requests still admitted in the current window (after this one, when admitted).
    pub remaining: u32,
    /// Milliseconds until the oldest counted request leaves the window (0 when none counted).
    pub reset_ms: u64,
    /// When refused: milliseconds until one more request would be admitted.
    pub retry_after_ms: u64,
}

impl Counter {
    /// An empty counter for `spec`.
    pub fn new(spec: &WindowSpec) -> Counter {
        Counter {
            counts: vec![0; spec.slots()].into_boxed_slice(),
            newest: 0,
        }
    }

    /// Move the ring to bucket `b`, clearing the buckets that fell out of the window.
    fn advance(&mut self, b: u64) {
        if b <= self.newest {
            return;
        }
        let slots = self.counts.len() as u64;
        if b - self.newest >= slots {
            self.counts.fill(0);
        } else {
            for i in self.newest + 1..=b {
                self.counts[(i % slots) as usize] = 0;
            }
        }
        self.newest = b;
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    /// Whether a request at `now_ms` fits, without counting it.
    pub fn fits(&mut self, spec: &WindowSpec, now_ms: u64) -> bool {
        self.advance(now_ms / spec.width_ms());
        self.total() < u64::from(spec.limit)
    }

    /// Count a request at `now_ms` (call after [`Counter::fits`] said yes).
    pub fn add(&mut self, spec: &WindowSpec, now_ms: u64) {
        let b = now_ms / spec.width_ms();
        self.advance(b);
        let slot = (b % self.counts.len() as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(1);
    }

    /// Where the key stands at `now_ms` (after [`Counter::fits`] or [`Counter::add`]).
    pub fn standing(&self, spec: &WindowSpec, now_ms: u64) -> Standing {
        let width = spec.width_ms();
        let slots = self.counts.len() as u64;
        let total = self.total();
        let limit = u64::from(spec.limit);
        let oldest_bucket = self.newest.saturating_sub(slots - 1);
        // Bucket `k` stops counting once the current bucket reaches `k + slots`.
        let leaves_at = |k: u64| (k + slots) * width;
        let mut reset_ms = 0;
        let mut retry_after_ms = 0;
        let mut left = total;
        for k in oldest_bucket..=self.newest {
            let c = u64::from(self.counts[(k % slots) as usize]);
            if c == 0 {
                continue;
            }
            if reset_ms == 0 {
                reset_ms = leaves_at(k).saturating_sub(now_ms);
            }
            if left >= limit && retry_after_ms == 0 {
                left -= c;
                if left < limit {
                    retry_after_ms = leaves_at(k).saturating_sub(now_ms);
                }
            }
        }
        Standing {
            remaining: limit.saturating_sub(total) as u32,
            reset_ms,
            retry_after_ms,
        }
    }

    /// Whether nothing is counted any more at `now_ms` (the key can be forgotten for free).
    pub fn is_idle(&self, spec: &WindowSpec, now_ms: u64) -> bool {
        let slots = self.counts.len() as u64;
        now_ms / spec.width_ms() >= self.newest + slots || self.total() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32, window_ms: u64, buckets: u32) -> WindowSpec {
        WindowSpec {
            limit,
            window_ms,
            buckets,
        }
    }

    fn try_admit(c: &mut Counter, s: &WindowSpec, t: u64) -> bool {
        if c.fits(s, t) {
            c.add(s, t);
            true
        } else {
            false
        }
    }

    #[test]
    fn admits_exactly_the_limit_within_one_window() {
        let s = spec(5, 10_000, 10);
        let mut c = Counter::new(&s);
        let admitted = (0..20).filter(|i| try_admit(&mut c, &s, 1_000 + i)).count();
        assert_eq!(admitted, 5);
        let st = c.standing(&s, 1_020);
        assert_eq!(st.remaining, 0);
        // The five sit in bucket 1 (1000..2000 ms); it leaves once bucket 12 starts.
        assert_eq!(st.retry_after_ms, 12_000 - 1_020);
    }

    #[test]
    fn the_window_slides_instead_of_resetting() {
        let s = spec(4, 4_000, 4);
        let mut c = Counter::new(&s);
        assert!(try_admit(&mut c, &s, 0));
        assert!(try_admit(&mut c, &s, 0));
        assert!(try_admit(&mut c, &s, 2_500));
        assert!(try_admit(&mut c, &s, 2_500));
        assert!(!try_admit(&mut c, &s, 3_999));
        // A fixed window would reset at 4000; here the two of t=0 still count until 5000.
        assert!(!try_admit(&mut c, &s, 4_500));
        assert!(try_admit(&mut c, &s, 5_000));
        assert!(try_admit(&mut c, &s, 5_000));
        assert!(!try_admit(&mut c, &s, 5_000));
    }

    /// The property the module promises, checked against a brute-force count of every
    /// window for many random request patterns.
    #[test]
    fn no_window_ever_holds_more_than_the_limit() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let s = spec(
                1 + (rnd() % 20) as u32,
                1_000 + rnd() % 9_000,
                1 + (rnd() % 30) as u32,
            );
            let mut c = Counter::new(&s);
            let mut t = 0u64;
            let mut admitted = Vec::new();
            for _ in 0..2_000 {
                t += rnd() % (s.window_ms / 5 + 1);
                if rnd() % 3 == 0 {
                    t += rnd() % 50;
                }
                if try_admit(&mut c, &s, t) {
                    admitted.push(t);
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                let in_window = admitted[i..]
                    .iter()
                    .take_while(|x| **x < start + s.window_ms)
                    .count();
                assert!(
                    in_window <= s.limit as usize,
                    "round {round}: {in_window} admitted in a window of {s:?}"
                );
            }
        }
    }

    #[test]
    fn a_refusal_comes_at_most_one_bucket_early() {
        let s = spec(3, 3_000, 3);
        let mut c = Counter::new(&s);
        for t in [0, 10, 20] {
            assert!(try_admit(&mut c, &s, t));
        }
        // An exact log admits again at 3000; buckets of 1000 ms admit at 4000 at the latest.
        assert!(!try_admit(&mut c, &s, 3_500));
        assert!(try_admit(&mut c, &s, 4_000));
    }

    #[test]
    fn idle_counters_are_recognised() {
        let s = spec(3, 3_000, 3);
        let mut c = Counter::new(&s);
        assert!(try_admit(&mut c, &s, 500));
        assert!(!c.is_idle(&s, 3_900));
        assert!(c.is_idle(&s, 4_000));
    }
}
