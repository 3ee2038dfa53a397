//! Hashers for the dispatcher's own maps.
//!
//! std's SipHash resists collision attacks on keys an attacker chooses, and
//! costs for it: it was ~7% of the data plane's instructions per call
//! (bench/callgrind-ab). The maps here do not need it: request ids are our
//! own sequence numbers, and the maps keyed by client- or worker-chosen
//! bytes (method names, ZeroMQ identities) are bounded (the method cap, the
//! live workers), so a chosen collision only lengthens probes in a small map.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// For keys that are our own `u64` ids: one multiplication (Fibonacci
/// hashing spreads sequential ids over the high bits hashbrown uses).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u64 keys; correct for anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// FNV-1a, for short byte keys in bounded maps (method names, identities).
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A map keyed by our own `u64` ids.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A bounded map keyed by short byte strings.
pub type BytesMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv1a>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_high_bits() {
        let mut tops = std::collections::HashSet::new();
        for id in 0..128u64 {
            let mut h = IdHasher::default();
            h.write_u64(id);
            tops.insert(h.finish() >> 57);
        }
        assert!(tops.len() > 64, "{} distinct top-7-bit values", tops.len());
    }

    #[test]
    fn maps_work() {
        let mut m: IdMap<u32> = IdMap::default();
        for i in 0..10_000u64 {
            m.insert(i, i as u32);
        }
        assert!((0..10_000u64).all(|i| m[&i] == i as u32));
        let mut b: BytesMap<Vec<u8>, u8> = BytesMap::default();
        b.insert(b"echo".to_vec(), 1);
        assert_eq!(b.get(&b"echo"[..]), Some(&1));
    }
}
