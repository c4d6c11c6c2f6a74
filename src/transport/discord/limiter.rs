//! The channel budget the DiscordActors share: Discord rations writes per channel (about 5 per
//! 5 s), holds a channel after a 429, and some channels refuse the bot.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::lock;

/// Why a channel is skipped: the bot was refused there.
struct Refusal {
    guild: Option<u64>,
    until: Instant,
}

/// Per-channel write budget (Discord: about 5 writes per 5 s), holds after a 429, and the
/// channels where the bot may not write.
pub struct ChannelLimiter {
    writes: usize,
    window: Duration,
    recent: Mutex<HashMap<u64, VecDeque<Instant>>>,
    /// A channel's 429: no write there before this.
    held: Mutex<HashMap<u64, Instant>>,
    /// Channels that answered 403, remembered for `forbidden_for` or until the bot's
    /// permissions change, so neither the model nor Discord is asked again meanwhile (403s
    /// count toward Discord's invalid-request ban).
    forbidden: Mutex<HashMap<u64, Refusal>>,
    forbidden_for: Duration,
}

/// Channels tracked before idle ones are pruned.
const CHANNELS: usize = 10_000;

impl ChannelLimiter {
    /// Discord counts writes when they arrive, and requests do not all take equally long to get
    /// there, so the window kept here is a tenth longer than Discord's.
    pub fn new(writes: usize, window: Duration, forbidden_for: Duration) -> Self {
        Self {
            writes: writes.max(1),
            window: window + window / 10,
            recent: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            forbidden: Mutex::new(HashMap::new()),
            forbidden_for,
        }
    }

    /// Waits until `channel` may take one more write, and takes it.
    pub(super) async fn acquire(&self, channel: u64) {
        loop {
            let held = lock(&self.held).get(&channel).copied();
            if let Some(until) = held
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let wait = {
                let mut recent = lock(&self.recent);
                let now = Instant::now();
                // Bounded: channels with no write inside the window are forgotten.
                if recent.len() > CHANNELS {
                    let window = self.window;
                    recent.retain(|_, t| t.back().is_some_and(|w| now.duration_since(*w) < window));
                    lock(&self.held).retain(|_, until| *until > now);
                    lock(&self.forbidden).retain(|_, r| r.until > now);
                }
                let times = recent.entry(channel).or_default();
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    times.pop_front();
                }
                if times.len() < self.writes {
                    times.push_back(now);
                    return;
                }
                self.window - now.duration_since(times[0])
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// After a 429 for this channel: nothing is written there before `until`.
    pub(super) fn hold(&self, channel: u64, until: Instant) {
        let mut held = lock(&self.held);
        let entry = held.entry(channel).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Remembers that the bot may not write in `channel`; true the first time (to log once).
    pub(super) fn forbid(&self, channel: u64, guild: Option<u64>) -> bool {
        let until = Instant::now() + self.forbidden_for;
        lock(&self.forbidden)
            .insert(channel, Refusal { guild, until })
            .is_none_or(|old| old.until <= Instant::now())
    }

    /// Whether a message in `channel` should be left unanswered (the bot was refused there).
    pub fn is_forbidden(&self, channel: u64) -> bool {
        let mut forbidden = lock(&self.forbidden);
        match forbidden.get(&channel) {
            Some(r) if r.until > Instant::now() => true,
            Some(_) => {
                forbidden.remove(&channel);
                false
            }
            None => false,
        }
    }

    /// The channel's permissions changed: try it again.
    pub fn permissions_changed_in_channel(&self, channel: u64) {
        lock(&self.forbidden).remove(&channel);
    }

    /// Roles or the bot's membership changed in `guild`: try its channels again.
    pub fn permissions_changed_in_guild(&self, guild: u64) {
        lock(&self.forbidden).retain(|_, r| r.guild != Some(guild));
    }
}
