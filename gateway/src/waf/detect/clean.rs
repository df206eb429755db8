//! Values already found clean. Detection is a pure function of a value's bytes and of how it
//! is read (its [`Class`]), and most traffic repeats the same path segments, query names and
//! header values; remembering the clean ones skips normalising and matching them again.
//!
//! Only a keyed 128-bit hash of a value is kept, never the value (headers and query strings
//! may carry secrets): two SipHash functions under random per-process keys, so an attacker can
//! neither read values back nor aim for a collision. Only "no rule matched" is remembered;
//! exclusions and rule actions are applied afterwards by the caller, so they never go stale.
//! The table is direct-mapped and lock-free: a newer value evicts the older one in its slot.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table (a power of two): 128 KiB of hashes.
const SLOTS: usize = 8192;

/// Longer values are scanned every time (hashing them is cheap, but they are rarely repeated
/// and would push out the short ones that are).
pub const MAX_VALUE: usize = 2048;

/// How a value is read: everything besides its bytes that decides the detection result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class(u8);

impl Class {
    pub fn new(header: bool, line_field: bool, path: bool, plus: bool) -> Class {
        Class(header as u8 | (line_field as u8) << 1 | (path as u8) << 2 | (plus as u8) << 3)
    }
}

/// The 128-bit key of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64, u64);

/// The table of clean values.
pub struct CleanValues {
    hashers: [std::hash::RandomState; 2],
    /// Allocated by the first value found clean (an idle gateway does not hold it).
    slots: OnceLock<Box<[[AtomicU64; 2]]>>,
}

impl std::fmt::Debug for CleanValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanValues")
            .field("slots", &SLOTS)
            .finish()
    }
}

impl Default for CleanValues {
    fn default() -> Self {
        CleanValues::new()
    }
}

impl CleanValues {
    pub fn new() -> CleanValues {
        CleanValues {
            hashers: [std::hash::RandomState::new(), std::hash::RandomState::new()],
            slots: OnceLock::new(),
        }
    }

    /// The key of `raw` read as `class`.
    pub fn key(&self, class: Class, raw: &[u8]) -> Key {
        let hash = |s: &std::hash::RandomState| {
            let mut h = s.build_hasher();
            h.write_u8(class.0);
            h.write(raw);
            h.finish()
        };
        // (0, 0) is an empty slot; no value may claim it.
        match (hash(&self.hashers[0]), hash(&self.hashers[1])) {
            (0, 0) => Key(1, 0),
            (a, b) => Key(a, b),
        }
    }

    fn index(key: Key) -> usize {
        (key.1 as usize) & (SLOTS - 1)
    }

    /// Whether the value with `key` was found clean (and is still remembered).
    pub fn contains(&self, key: Key) -> bool {
        let Some(slots) = self.slots.get() else {
            return false;
        };
        let slot = &slots[Self::index(key)];
        // A slot read while written, or written by two threads at once, may pair halves of two
        // keys: that is a miss for both, and a third value would need its two independent
        // 64-bit halves to coincide with theirs.
        slot[0].load(Ordering::Relaxed) == key.0 && slot[1].load(Ordering::Relaxed) == key.1
    }

    /// Remember that the value with `key` is clean.
    pub fn insert(&self, key: Key) {
        let slots = self.slots.get_or_init(|| {
            (0..SLOTS)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect()
        });
        let slot = &slots[Self::index(key)];
        slot[0].store(key.0, Ordering::Relaxed);
        slot[1].store(key.1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_bytes_and_class() {
        let c = CleanValues::new();
        let plain = Class::new(false, false, false, false);
        let k = c.key(plain, b"weekly");
        assert!(!c.contains(k));
        c.insert(k);
        assert!(c.contains(k));
        assert!(c.contains(c.key(plain, b"weekly")));
        assert!(!c.contains(c.key(plain, b"weekly2")));
        assert!(!c.contains(c.key(Class::new(false, false, false, true), b"weekly")));
        assert!(!c.contains(c.key(Class::new(true, true, false, false), b"weekly")));
    }

    #[test]
    fn keys_differ_between_tables() {
        // Random keys per table: the hash of a value is not predictable from outside.
        let (a, b) = (CleanValues::new(), CleanValues::new());
        let class = Class::new(false, false, false, false);
        assert_ne!(a.key(class, b"x"), b.key(class, b"x"));
    }

    #[test]
    fn a_newer_value_evicts_the_older_in_its_slot() {
        let c = CleanValues::new();
        let class = Class::new(false, false, false, false);
        let first = c.key(class, b"v-0");
        c.insert(first);
        // Find another value mapped to the same slot.
        let other = (1..)
            .map(|i| c.key(class, format!("v-{i}").as_bytes()))
            .find(|k| CleanValues::index(*k) == CleanValues::index(first))
            .expect("a value in the same slot");
        c.insert(other);
        assert!(c.contains(other));
        assert!(!c.contains(first));
    }
}
