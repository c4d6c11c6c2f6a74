//! Consistent hashing with virtual nodes.
//!
//! Each shard owns `virtual_nodes` points on a 64-bit ring; a key belongs to the first point at
//! or after its hash. Adding a shard only takes over the arcs in front of its own points, so
//! growing from N to N+1 shards moves about 1/(N+1) of the keys, and every other key keeps its
//! shard (and its warm conversation actor). Hashes are xxh3 with a fixed seed so placement is
//! stable across processes and releases.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const SEED: u64 = 0x5748_4953_5045_5221; // "WHISPER!"

/// An immutable ring; resizing builds a new one.
#[derive(Clone, Debug)]
pub struct HashRing {
    /// `(point, shard)` sorted by point.
    points: Vec<(u64, u32)>,
    shards: u32,
}

impl HashRing {
    /// Builds a ring over `shards` shards with `virtual_nodes` points each.
    ///
    /// # Panics
    /// If `shards` or `virtual_nodes` is zero: configuration validation rejects both earlier.
    pub fn new(shards: u32, virtual_nodes: u32) -> Self {
        assert!(
            shards > 0 && virtual_nodes > 0,
            "a ring needs at least one shard and one point"
        );
        let mut points = Vec::with_capacity((shards * virtual_nodes) as usize);
        for shard in 0..shards {
            for vnode in 0..virtual_nodes {
                let label = ((shard as u64) << 32) | vnode as u64;
                points.push((xxh3_64_with_seed(&label.to_le_bytes(), SEED), shard));
            }
        }
        points.sort_unstable();
        Self { points, shards }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard owning an already-hashed key.
    pub fn shard_for_hash(&self, hash: u64) -> u32 {
        let idx = self.points.partition_point(|&(point, _)| point < hash);
        self.points.get(idx).unwrap_or(&self.points[0]).1
    }

    /// The shard owning `(character, user)`.
    pub fn shard_for(&self, character: &str, user: &str) -> u32 {
        self.shard_for_hash(key_hash(character, user))
    }
}

/// Hash of a conversation key; the separator keeps `("ab", "c")` and `("a", "bc")` apart.
pub fn key_hash(character: &str, user: &str) -> u64 {
    let mut buf = Vec::with_capacity(character.len() + user.len() + 1);
    buf.extend_from_slice(character.as_bytes());
    buf.push(0);
    buf.extend_from_slice(user.as_bytes());
    xxh3_64_with_seed(&buf, SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 100_000;
    const VNODES: u32 = 1024;

    fn keys() -> impl Iterator<Item = String> {
        (0..KEYS).map(|i| format!("console:user-{i}"))
    }

    #[test]
    fn load_is_balanced_within_ten_percent() {
        for shards in [2u32, 4, 8, 16] {
            let ring = HashRing::new(shards, VNODES);
            let mut counts = vec![0usize; shards as usize];
            for user in keys() {
                counts[ring.shard_for("aria", &user) as usize] += 1;
            }
            let mean = KEYS as f64 / shards as f64;
            for (shard, &count) in counts.iter().enumerate() {
                let deviation = (count as f64 - mean).abs() / mean;
                assert!(
                    deviation <= 0.10,
                    "{shards} shards: shard {shard} has {count} keys, {:.1}% off the mean",
                    deviation * 100.0
                );
            }
        }
    }

    #[test]
    fn growing_by_one_shard_moves_about_one_in_n_plus_one_keys() {
        for n in [1u32, 2, 4, 7, 15] {
            let before = HashRing::new(n, VNODES);
            let after = HashRing::new(n + 1, VNODES);
            let mut moved = 0usize;
            for user in keys() {
                let (a, b) = (
                    before.shard_for("aria", &user),
                    after.shard_for("aria", &user),
                );
                if a != b {
                    // Keys only ever move to the new shard, never between old ones.
                    assert_eq!(b, n, "key {user} moved between existing shards");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / KEYS as f64;
            let bound = 1.5 / (n + 1) as f64;
            assert!(
                fraction <= bound,
                "{n}->{}: moved {fraction:.3} > {bound:.3}",
                n + 1
            );
            assert!(
                fraction > 0.5 / (n + 1) as f64,
                "{n}->{}: suspiciously few moved",
                n + 1
            );
        }
    }

    #[test]
    fn a_user_always_lands_on_the_same_shard() {
        let ring = HashRing::new(8, VNODES);
        let rebuilt = HashRing::new(8, VNODES);
        for user in keys().take(10_000) {
            let shard = ring.shard_for("aria", &user);
            assert_eq!(ring.shard_for("aria", &user), shard);
            assert_eq!(rebuilt.shard_for("aria", &user), shard);
        }
    }

    #[test]
    fn the_separator_distinguishes_split_points() {
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
    }
}
