//! Which worker consumes which partition: rendezvous (highest random weight) hashing over the
//! live members. Each partition ranks every member by `xxh3(member, partition)`; the first is
//! its owner, the next `standby` consume it as standby (the broker hands it to one of them the
//! moment the owner's consumer goes). A member joining takes only partitions it now ranks
//! first for; a member leaving gives up only its own.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

const SEED: u64 = 0x4852_5750_4c41_4345; // "HRWPLACE"

fn weight(member: &str, partition: u32) -> u64 {
    let mut bytes = Vec::with_capacity(member.len() + 4);
    bytes.extend_from_slice(member.as_bytes());
    bytes.extend_from_slice(&partition.to_le_bytes());
    xxh3_64_with_seed(&bytes, SEED)
}

/// `members` ranked for `partition`, best first (ties cannot happen between distinct names in
/// practice; they break by name).
pub fn ranked(partition: u32, members: &[String]) -> Vec<&str> {
    let mut ranked: Vec<&str> = members.iter().map(String::as_str).collect();
    ranked.sort_by(|a, b| {
        weight(b, partition)
            .cmp(&weight(a, partition))
            .then_with(|| a.cmp(b))
    });
    ranked
}

/// What one member consumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub owned: Vec<u32>,
    pub standby: Vec<u32>,
}

/// Every member's assignment for `partitions` partitions with `standby` standbys each.
pub fn assign(members: &[String], partitions: u32, standby: u32) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.clone(), Assignment::default()))
        .collect();
    for p in 0..partitions {
        for (i, m) in ranked(p, members)
            .into_iter()
            .take(1 + standby as usize)
            .enumerate()
        {
            let a = out.get_mut(m).expect("a member");
            if i == 0 {
                a.owned.push(p);
            } else {
                a.standby.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    fn owner_of(members: &[String], partitions: u32) -> Vec<String> {
        (0..partitions)
            .map(|p| ranked(p, members)[0].to_owned())
            .collect()
    }

    #[test]
    fn a_joining_member_takes_only_its_share_and_only_for_itself() {
        let before = owner_of(&members(2), 256);
        let after = owner_of(&members(3), 256);
        let moved: Vec<usize> = (0..256).filter(|&p| before[p] != after[p]).collect();
        assert!(
            moved.iter().all(|&p| after[p] == "worker-2"),
            "moves only to the new member"
        );
        assert!(
            (60..110).contains(&moved.len()),
            "{} moved, about a third",
            moved.len()
        );
    }

    #[test]
    fn a_leaving_member_gives_up_only_its_own() {
        let before = owner_of(&members(4), 256);
        let survivors: Vec<String> = members(4).into_iter().filter(|m| m != "worker-1").collect();
        let after = owner_of(&survivors, 256);
        for p in 0..256 {
            if before[p] != "worker-1" {
                assert_eq!(before[p], after[p], "partition {p} stayed");
            }
        }
    }

    #[test]
    fn every_partition_has_one_owner_and_its_standbys_elsewhere() {
        let assigned = assign(&members(3), 64, 1);
        let mut owners = vec![0; 64];
        for a in assigned.values() {
            for p in &a.owned {
                owners[*p as usize] += 1;
                assert!(!a.standby.contains(p), "a member is not its own standby");
            }
        }
        assert!(owners.iter().all(|&n| n == 1));
        let standbys: usize = assigned.values().map(|a| a.standby.len()).sum();
        assert_eq!(standbys, 64);
    }
}
