//! Which gateway shards a process runs. Discord assigns a guild to shard
//! `(guild_id >> 22) % shard_total` and direct messages to shard 0; a bot in many guilds must
//! shard (Discord closes an oversized single session with 4011), and cluster gateways split
//! the shards between them by range.

use serenity::all::Http;

use crate::config::{AutoCount, DiscordSection};

/// Shards `first..=last` of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    pub first: u32,
    pub last: u32,
    pub total: u32,
}

impl ShardPlan {
    /// The shard that carries a guild's events (direct messages: shard 0).
    pub fn shard_of(&self, guild: Option<u64>) -> u32 {
        shard_of(guild, self.total)
    }

    pub fn shards(&self) -> impl Iterator<Item = u32> {
        self.first..=self.last
    }
}

/// Discord's rule: `(guild_id >> 22) % total`, direct messages on shard 0.
pub fn shard_of(guild: Option<u64>, total: u32) -> u32 {
    match guild {
        Some(guild) if total > 0 => ((guild >> 22) % u64::from(total)) as u32,
        _ => 0,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("discord.shard_total = \"auto\": cannot ask Discord for the recommended count: {0}")]
    Recommend(serenity::Error),
}

/// The configured plan; "auto" asks Discord (`GET /gateway/bot`) for the total.
pub async fn resolve(section: &DiscordSection, http: &Http) -> Result<ShardPlan, ShardError> {
    let total = match section.shard_total {
        AutoCount::Fixed(total) => total,
        AutoCount::Auto => http
            .get_bot_gateway()
            .await
            .map_err(ShardError::Recommend)?
            .shards
            .max(1),
    };
    // The configuration was validated against a fixed total; a recommended one can only be
    // paired with the whole range (first 0, last "auto").
    let last = match section.shard_last {
        AutoCount::Fixed(last) => last.min(total - 1),
        AutoCount::Auto => total - 1,
    };
    Ok(ShardPlan {
        first: section.shard_first.min(last),
        last,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guilds_spread_by_their_id_and_dms_take_shard_zero() {
        // Only the id's timestamp bits (above bit 22) decide, never the low bits.
        let guild = |stamp: u64| (stamp << 22) | 0x3f_ffff;
        assert_eq!(shard_of(Some(guild(7)), 4), 3);
        assert_eq!(shard_of(Some(guild(8)), 4), 0);
        assert_eq!(
            shard_of(Some(41_771_983_423_143_937), 3),
            (9_959_216_934_u64 % 3) as u32
        );
        assert_eq!(shard_of(Some(guild(7)), 1), 0);
        assert_eq!(shard_of(None, 16), 0);
        let plan = ShardPlan {
            first: 2,
            last: 3,
            total: 4,
        };
        assert_eq!(plan.shards().collect::<Vec<_>>(), [2, 3]);
    }
}
