//! Whether a bot answers a Discord message: who may talk to it, where, and what addresses it.
//! Pure, so every rule is unit-tested without a gateway.

use std::collections::HashSet;

use crate::config::{DiscordSection, DmPolicy};

/// Access rules from `[discord]`, as sets.
#[derive(Clone, Debug)]
pub struct Access {
    pub ignore_bots: bool,
    pub dm_policy: DmPolicy,
    pub dm_allowlist: HashSet<u64>,
    pub open_channels: HashSet<u64>,
    pub allowed_channels: HashSet<u64>,
    pub blocked_channels: HashSet<u64>,
    pub allowed_users: HashSet<u64>,
    pub blocked_users: HashSet<u64>,
    pub allowed_roles: HashSet<u64>,
    pub blocked_roles: HashSet<u64>,
    pub admins: HashSet<u64>,
}

impl From<&DiscordSection> for Access {
    fn from(s: &DiscordSection) -> Self {
        let set = |v: &Vec<u64>| v.iter().copied().collect::<HashSet<u64>>();
        Access {
            ignore_bots: s.ignore_bots,
            dm_policy: s.dm_policy,
            dm_allowlist: set(&s.dm_allowlist),
            open_channels: set(&s.open_channels),
            allowed_channels: set(&s.allowed_channels),
            blocked_channels: set(&s.blocked_channels),
            allowed_users: set(&s.allowed_users),
            blocked_users: set(&s.blocked_users),
            allowed_roles: set(&s.allowed_roles),
            blocked_roles: set(&s.blocked_roles),
            admins: set(&s.admins),
        }
    }
}

/// What the policy needs to know about one message.
#[derive(Clone, Debug, Default)]
pub struct Inbound<'a> {
    pub author: u64,
    pub author_is_bot: bool,
    /// Written by this bot itself.
    pub from_self: bool,
    /// `None` for a DM.
    pub guild: Option<u64>,
    pub channel: u64,
    /// For a thread, its parent channel: channel rules follow the parent.
    pub parent_channel: Option<u64>,
    pub roles: &'a [u64],
    pub mentions_me: bool,
    pub replies_to_me: bool,
    pub in_my_thread: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Answer,
    Ignore(&'static str),
}

impl Access {
    pub fn decide(&self, m: &Inbound<'_>) -> Decision {
        use Decision::*;
        if m.from_self {
            return Ignore("own message");
        }
        if m.author_is_bot && self.ignore_bots {
            return Ignore("from a bot");
        }
        if self.blocked_users.contains(&m.author) {
            return Ignore("blocked user");
        }
        if !self.allowed_users.is_empty() && !self.allowed_users.contains(&m.author) {
            return Ignore("user not allowed");
        }
        let Some(_guild) = m.guild else {
            return match self.dm_policy {
                DmPolicy::Off => Ignore("direct messages are off"),
                DmPolicy::Allowlist if !self.dm_allowlist.contains(&m.author) => {
                    Ignore("user not on the DM allowlist")
                }
                _ => Answer,
            };
        };
        let channels: Vec<u64> = std::iter::once(m.channel).chain(m.parent_channel).collect();
        if channels.iter().any(|c| self.blocked_channels.contains(c)) {
            return Ignore("blocked channel");
        }
        if !self.allowed_channels.is_empty()
            && !channels.iter().any(|c| self.allowed_channels.contains(c))
        {
            return Ignore("channel not allowed");
        }
        if m.roles.iter().any(|r| self.blocked_roles.contains(r)) {
            return Ignore("blocked role");
        }
        if !self.allowed_roles.is_empty() && !m.roles.iter().any(|r| self.allowed_roles.contains(r))
        {
            return Ignore("role not allowed");
        }
        let open = channels.iter().any(|c| self.open_channels.contains(c));
        if m.mentions_me || m.replies_to_me || m.in_my_thread || open {
            Answer
        } else {
            Ignore("not addressed to this bot")
        }
    }

    /// Whether a user's words are kept out of the bot entirely (blocked by id or role): such
    /// a user is neither answered nor shown to a character as channel context.
    pub fn blocks(&self, user: u64, roles: &[u64]) -> bool {
        self.blocked_users.contains(&user) || roles.iter().any(|r| self.blocked_roles.contains(r))
    }

    pub fn is_admin(&self, user: u64) -> bool {
        self.admins.contains(&user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            ignore_bots: true,
            dm_policy: DmPolicy::Open,
            dm_allowlist: HashSet::new(),
            open_channels: HashSet::from([50]),
            allowed_channels: HashSet::new(),
            blocked_channels: HashSet::from([66]),
            allowed_users: HashSet::new(),
            blocked_users: HashSet::from([13]),
            allowed_roles: HashSet::new(),
            blocked_roles: HashSet::from([900]),
            admins: HashSet::from([1]),
        }
    }

    fn guild_msg() -> Inbound<'static> {
        Inbound {
            author: 7,
            guild: Some(1000),
            channel: 40,
            ..Default::default()
        }
    }

    #[test]
    fn guild_messages_need_to_address_the_bot_unless_the_channel_is_open() {
        let a = access();
        assert_eq!(
            a.decide(&guild_msg()),
            Decision::Ignore("not addressed to this bot")
        );
        for m in [
            Inbound {
                mentions_me: true,
                ..guild_msg()
            },
            Inbound {
                replies_to_me: true,
                ..guild_msg()
            },
            Inbound {
                in_my_thread: true,
                ..guild_msg()
            },
            Inbound {
                channel: 50,
                ..guild_msg()
            },
            Inbound {
                channel: 51,
                parent_channel: Some(50),
                ..guild_msg()
            },
        ] {
            assert_eq!(a.decide(&m), Decision::Answer, "{m:?}");
        }
    }

    #[test]
    fn blocks_win_and_threads_follow_their_parent() {
        let a = access();
        let addressed = Inbound {
            mentions_me: true,
            ..guild_msg()
        };
        assert_eq!(
            a.decide(&Inbound {
                author: 13,
                ..addressed.clone()
            }),
            Decision::Ignore("blocked user")
        );
        assert_eq!(
            a.decide(&Inbound {
                channel: 67,
                parent_channel: Some(66),
                ..addressed.clone()
            }),
            Decision::Ignore("blocked channel")
        );
        assert_eq!(
            a.decide(&Inbound {
                roles: &[5, 900],
                ..addressed.clone()
            }),
            Decision::Ignore("blocked role")
        );
        assert_eq!(
            a.decide(&Inbound {
                author_is_bot: true,
                ..addressed.clone()
            }),
            Decision::Ignore("from a bot")
        );
        assert_eq!(
            a.decide(&Inbound {
                from_self: true,
                ..addressed
            }),
            Decision::Ignore("own message")
        );
    }

    #[test]
    fn dm_policy() {
        let dm = Inbound {
            author: 7,
            channel: 99,
            ..Default::default()
        };
        let mut a = access();
        assert_eq!(a.decide(&dm), Decision::Answer);
        a.dm_policy = DmPolicy::Off;
        assert_eq!(a.decide(&dm), Decision::Ignore("direct messages are off"));
        a.dm_policy = DmPolicy::Allowlist;
        assert_eq!(
            a.decide(&dm),
            Decision::Ignore("user not on the DM allowlist")
        );
        a.dm_allowlist.insert(7);
        assert_eq!(a.decide(&dm), Decision::Answer);
    }

    #[test]
    fn allow_lists_restrict_when_set() {
        let mut a = access();
        let addressed = Inbound {
            mentions_me: true,
            roles: &[5],
            ..guild_msg()
        };
        a.allowed_channels.insert(41);
        assert_eq!(
            a.decide(&addressed),
            Decision::Ignore("channel not allowed")
        );
        a.allowed_channels.insert(40);
        a.allowed_roles.insert(6);
        assert_eq!(a.decide(&addressed), Decision::Ignore("role not allowed"));
        a.allowed_roles.insert(5);
        assert_eq!(a.decide(&addressed), Decision::Answer);
    }
}
