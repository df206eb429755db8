//! The counters of one rule, by key, in a bounded sharded map.
//!
//! Memory stays bounded under key churn: each rule holds at most `max_keys` keys. When a shard
//! is full, keys whose windows hold nothing any more are dropped first (that loses nothing);
//! if none is idle, the least recently seen of a small sample is forgotten and counted in
//! `cedargate_ratelimit_evictions_total`. A forgotten key starts again from zero, so under a
//! churn of more live keys than `max_keys` that one key may be admitted up to `limit` more times
//! in its window — the only case where a limit is exceeded, and the metric shows it happening.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

use super::window::{Counter, Standing, WindowSpec};

const SHARDS: usize = 64;
/// Keys compared when a full shard must forget a live one.
const EVICTION_SAMPLE: usize = 8;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether every window of the rule had room (and, for [`Table::check`], the request was
    /// counted).
    pub admitted: bool,
    /// Which window decided: the refusing one, or the one with the least room left.
    pub window: usize,
    /// Where the key stands in that window.
    pub standing: Standing,
}

struct Entry {
    counters: Box<[Counter]>,
    last_ms: u64,
}

struct Shard<K> {
    map: HashMap<K, Entry>,
    last_sweep_ms: u64,
}

/// Counters of one rule (one or more windows) by key.
pub struct Table<K> {
    windows: Box<[WindowSpec]>,
    shards: Box<[Mutex<Shard<K>>]>,
    per_shard: usize,
    hasher: RandomState,
    sweep_every_ms: u64,
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// A table for a rule with these windows, holding at most about `max_keys` keys.
    pub fn new(windows: Vec<WindowSpec>, max_keys: usize) -> Table<K> {
        let sweep_every_ms = windows
            .iter()
            .map(|w| w.window_ms.div_ceil(u64::from(w.buckets.max(1))).max(1))
            .min()
            .unwrap_or(1_000);
        Table {
            windows: windows.into_boxed_slice(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        last_sweep_ms: 0,
                    })
                })
                .collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            sweep_every_ms,
        }
    }

    /// The rule's windows.
    pub fn windows(&self) -> &[WindowSpec] {
        &self.windows
    }

    /// Check (and when admitted, count) a request of `key` at `now_ms`. Returns the verdict
    /// and how many keys were forgotten to make room.
    pub fn check<Q>(&self, key: &Q, now_ms: u64, owned: impl FnOnce() -> K) -> (Verdict, u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key);
        let mut evicted = 0;
        if !shard.map.contains_key(key) {
            if shard.map.len() >= self.per_shard {
                evicted = self.make_room(&mut shard, now_ms);
            }
            let counters = self.windows.iter().map(Counter::new).collect();
            shard.map.insert(
                owned(),
                Entry {
                    counters,
                    last_ms: now_ms,
                },
            );
        }
        let Some(entry) = shard.map.get_mut(key) else {
            // Just inserted under the same lock; unreachable, but refuse rather than panic.
            return (self.refused_unknown(), evicted);
        };
        entry.last_ms = now_ms;
        (self.judge(entry, now_ms, true), evicted)
    }

    /// Whether one more request of `key` would be admitted at `now_ms`, and where the key
    /// stands, without counting anything (for rules that count only some outcomes).
    pub fn peek<Q>(&self, key: &Q, now_ms: u64) -> Verdict
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key);
        match shard.map.get_mut(key) {
            Some(entry) => self.judge(entry, now_ms, false),
            None => {
                let mut fresh = Entry {
                    counters: self.windows.iter().map(Counter::new).collect(),
                    last_ms: now_ms,
                };
                self.judge(&mut fresh, now_ms, false)
            }
        }
    }

    fn shard<Q>(&self, key: &Q) -> std::sync::MutexGuard<'_, Shard<K>>
    where
        Q: Hash + ?Sized,
    {
        let shard_index = (self.hasher.hash_one(key) as usize) % SHARDS;
        match self.shards[shard_index].lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether every window of `entry` has room at `now_ms` (counting the request in each
    /// when it has and `count` is set), and the deciding window's standing.
    fn judge(&self, entry: &mut Entry, now_ms: u64, count: bool) -> Verdict {
        let refusing = self
            .windows
            .iter()
            .zip(entry.counters.iter_mut())
            .position(|(spec, c)| !c.fits(spec, now_ms));
        if refusing.is_none() && count {
            for (spec, c) in self.windows.iter().zip(entry.counters.iter_mut()) {
                c.add(spec, now_ms);
            }
        }
        let standings = self
            .windows
            .iter()
            .zip(entry.counters.iter())
            .map(|(spec, c)| c.standing(spec, now_ms));
        let (window, standing) = match refusing {
            Some(i) => (i, standings.clone().nth(i).unwrap_or(EMPTY)),
            None => standings
                .enumerate()
                .min_by_key(|(_, s)| s.remaining)
                .unwrap_or((0, EMPTY)),
        };
        Verdict {
            admitted: refusing.is_none(),
            window,
            standing,
        }
    }

    /// Keys currently held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }

    fn refused_unknown(&self) -> Verdict {
        Verdict {
            admitted: false,
            window: 0,
            standing: EMPTY,
        }
    }

    /// Free at least one slot in a full shard; returns how many live keys were forgotten.
    fn make_room(&self, shard: &mut Shard<K>, now_ms: u64) -> u64 {
        // Sweeping is O(shard); do it at most once per bucket width, so a churn of live keys
        // costs O(1) per new key.
        if now_ms.saturating_sub(shard.last_sweep_ms) >= self.sweep_every_ms {
            shard.last_sweep_ms = now_ms;
            let windows = &self.windows;
            shard.map.retain(|_, e| {
                !windows
                    .iter()
                    .zip(e.counters.iter())
                    .all(|(spec, c)| c.is_idle(spec, now_ms))
            });
            if shard.map.len() < self.per_shard {
                return 0;
            }
        }
        let victim = shard
            .map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, e)| e.last_ms)
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => u64::from(shard.map.remove(&k).is_some()),
            None => 0,
        }
    }
}

const EMPTY: Standing = Standing {
    remaining: 0,
    reset_ms: 0,
    retry_after_ms: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32, window_ms: u64) -> WindowSpec {
        WindowSpec {
            limit,
            window_ms,
            buckets: 10,
        }
    }

    #[test]
    fn keys_are_counted_apart() {
        let t: Table<String> = Table::new(vec![spec(2, 10_000)], 1_000);
        for _ in 0..2 {
            assert!(t.check("a", 0, || "a".into()).0.admitted);
        }
        assert!(!t.check("a", 0, || "a".into()).0.admitted);
        assert!(t.check("b", 0, || "b".into()).0.admitted);
    }

    #[test]
    fn every_window_must_have_room_and_refused_requests_are_not_counted() {
        // 10 per 10 s, with a burst of at most 2 per second.
        let t: Table<u32> = Table::new(vec![spec(10, 10_000), spec(2, 1_000)], 100);
        let admitted = (0..5).filter(|_| t.check(&1, 0, || 1).0.admitted).count();
        assert_eq!(admitted, 2);
        let (v, _) = t.check(&1, 10, || 1);
        assert!(!v.admitted);
        assert_eq!(v.window, 1, "the burst window refuses");
        // Only the two admitted count against the long window.
        // One bucket (100 ms) after the burst window, the two of t=0 no longer count there.
        let (v, _) = t.check(&1, 1_100, || 1);
        assert!(v.admitted);
        assert_eq!(
            v.standing.remaining, 1,
            "the burst window is the tighter one"
        );
    }

    #[test]
    fn peeking_counts_nothing() {
        let t: Table<u32> = Table::new(vec![spec(2, 10_000)], 100);
        let v = t.peek(&1, 0);
        assert!(v.admitted);
        assert_eq!(v.standing.remaining, 2, "an unseen key has the whole limit");
        assert_eq!(t.len(), 0, "peeking an unseen key stores nothing");
        t.check(&1, 0, || 1);
        for _ in 0..5 {
            assert_eq!(t.peek(&1, 10).standing.remaining, 1);
        }
        t.check(&1, 20, || 1);
        let v = t.peek(&1, 30);
        assert!(!v.admitted, "two counted: the next one would not fit");
        assert!(v.standing.retry_after_ms > 0);
        assert!(t.peek(&1, 11_000).admitted, "both left the window");
    }

    #[test]
    fn memory_stays_bounded_under_churn() {
        let t: Table<u64> = Table::new(vec![spec(5, 60_000)], 6_400);
        let mut evicted = 0;
        for k in 0..1_000_000u64 {
            evicted += t.check(&k, k / 1_000, || k).1;
        }
        assert!(t.len() <= 6_400, "{} keys held", t.len());
        assert!(evicted > 0);
    }

    #[test]
    fn idle_keys_are_dropped_before_live_ones() {
        let t: Table<u64> = Table::new(vec![spec(5, 1_000)], SHARDS * 50);
        for k in 0..(SHARDS * 150) as u64 {
            t.check(&k, 0, || k);
        }
        // Much later every key is idle: making room forgets nothing live.
        let mut evicted = 0;
        for k in 1_000_000..1_000_000 + (SHARDS * 10) as u64 {
            evicted += t.check(&k, 10_000, || k).1;
        }
        assert_eq!(evicted, 0);
    }
}
