//! A user's partition: `jump_hash(xxh3(user_id, seed), partitions)`.
//!
//! Keyed on the user, not (character, user), so a user's conversations, `/forget` and limits
//! live in one process. The seed differs from the shard ring's, so the partition a user lands in
//! says nothing about the shard inside the worker (both stay balanced).

use xxhash_rust::xxh3::xxh3_64_with_seed;

const SEED: u64 = 0x5041_5254_4954_494f; // "PARTITIO"

/// Lamping and Veach's jump consistent hash: `buckets` equal ranges, and growing to n+1
/// buckets moves only 1/(n+1) of the keys.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = buckets.max(1) as i64;
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The partition of `user` among `partitions`.
pub fn partition_of(user: &str, partitions: u32) -> u32 {
    jump_hash(xxh3_64_with_seed(user.as_bytes(), SEED), partitions)
}

/// The broker queue of a partition.
pub fn queue_name(prefix: &str, partition: u32) -> String {
    format!("{prefix}.p.{partition:05}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_balanced_and_stable() {
        let mut counts = vec![0u32; 256];
        for u in 0..100_000 {
            counts[partition_of(&format!("discord:{u}"), 256) as usize] += 1;
        }
        let mean = 100_000.0 / 256.0;
        for c in counts {
            assert!((c as f64 - mean).abs() / mean < 0.2, "{c} vs {mean}");
        }
        assert_eq!(
            partition_of("discord:42", 256),
            partition_of("discord:42", 256)
        );
    }

    #[test]
    fn growing_moves_only_the_new_buckets_share() {
        let moved = (0..10_000u64)
            .filter(|k| jump_hash(*k, 10) != jump_hash(*k, 11))
            .count();
        assert!(
            (700..1100).contains(&moved),
            "{moved} of 10000 moved (expect ~909)"
        );
        assert!((0..10_000u64).all(|k| {
            let (a, b) = (jump_hash(k, 10), jump_hash(k, 11));
            a == b || b == 10
        }));
    }
}
