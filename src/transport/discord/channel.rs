//! What is being said in a guild channel: the recent messages the gateway delivered, and the
//! context provider that shows them to a character.
//!
//! A character in a channel should follow the room ("what do you think of what Bob just
//! said?"), not only its own exchanges with the author. Every bot already receives every
//! message of the channels it is in, so the log is fed from the gateway, bounded per channel
//! by count and age, and read with the author's access rules: it never crosses channels or
//! guilds, never holds a DM, leaves out blocked users (and other bots unless configured), and
//! is only ever prompt context: nothing from it is stored as anyone's memory.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lru::LruCache;
use whisper_actors::Scope;
use whisper_actors::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use whisper_actors::conversation::prompt::estimate_tokens;

use super::inbound::user_key;
use super::lock;
use super::policy::Access;
use crate::config::ChannelContextSection;

/// Channels remembered at once; the least recently active are dropped first.
const CHANNELS: usize = 10_000;

/// One message as the gateway delivered it.
#[derive(Clone, Debug)]
pub struct Line {
    pub id: u64,
    pub author: u64,
    pub author_name: String,
    pub author_is_bot: bool,
    pub roles: Vec<u64>,
    pub text: String,
    pub at: Instant,
}

struct Channel {
    guild: u64,
    lines: VecDeque<Line>,
}

/// The recent messages of every guild channel the bots are in.
pub struct ChannelLog {
    channels: Mutex<LruCache<u64, Channel>>,
    /// Bot user id of each character, learnt at READY (a character's own messages are marked).
    bots: Mutex<std::collections::HashMap<String, u64>>,
    max_messages: usize,
    max_age: Duration,
}

impl ChannelLog {
    pub fn new(settings: &ChannelContextSection) -> Self {
        Self {
            channels: Mutex::new(LruCache::new(NonZeroUsize::new(CHANNELS).unwrap())),
            bots: Mutex::default(),
            max_messages: settings.max_messages,
            max_age: settings.max_age,
        }
    }

    pub fn set_bot(&self, character: &str, user: u64) {
        lock(&self.bots).insert(character.to_owned(), user);
    }

    fn bot_of(&self, character: &str) -> Option<u64> {
        lock(&self.bots).get(character).copied()
    }

    /// Records a guild message (every bot hears it; the first one records it).
    pub fn record(&self, guild: u64, channel: u64, line: Line) {
        if self.max_messages == 0 {
            return;
        }
        let mut channels = lock(&self.channels);
        let entry = channels.get_or_insert_mut(channel, || Channel {
            guild,
            lines: VecDeque::new(),
        });
        if entry.lines.iter().any(|l| l.id == line.id) {
            return;
        }
        let now = Instant::now();
        while entry.lines.len() >= self.max_messages
            || entry
                .lines
                .front()
                .is_some_and(|l| now.duration_since(l.at) > self.max_age)
        {
            entry.lines.pop_front();
        }
        entry.lines.push_back(line);
    }

    /// A message was edited (the bot's own streamed replies arrive this way too).
    pub fn edit(&self, channel: u64, id: u64, text: &str) {
        if let Some(entry) = lock(&self.channels).peek_mut(&channel)
            && let Some(line) = entry.lines.iter_mut().find(|l| l.id == id)
        {
            line.text = text.to_owned();
        }
    }

    /// A message was deleted: it is no longer anyone's context.
    pub fn delete(&self, channel: u64, id: u64) {
        if let Some(entry) = lock(&self.channels).peek_mut(&channel) {
            entry.lines.retain(|l| l.id != id);
        }
    }

    /// "Forget me": the user's messages leave every channel's log.
    pub fn forget(&self, user: &str) -> usize {
        let mut removed = 0;
        for (_, entry) in lock(&self.channels).iter_mut() {
            let before = entry.lines.len();
            entry.lines.retain(|l| user_key(l.author) != user);
            removed += before - entry.lines.len();
        }
        removed
    }

    /// The lines of `channel` in `guild` older than message `before`, newest last.
    fn lines(&self, guild: u64, channel: u64, before: u64) -> Vec<Line> {
        let channels = lock(&self.channels);
        let Some(entry) = channels.peek(&channel).filter(|c| c.guild == guild) else {
            return Vec::new();
        };
        let now = Instant::now();
        entry
            .lines
            .iter()
            .filter(|l| l.id < before && now.duration_since(l.at) <= self.max_age)
            .cloned()
            .collect()
    }
}

/// The "recent messages in this channel" section of a guild conversation's prompt.
pub struct ChannelContextProvider {
    pub log: Arc<ChannelLog>,
    /// The access rules in force (`[discord]` lists are live).
    pub access: whisper_actors::live::Live<Access>,
    pub max_tokens: usize,
    pub include_bots: bool,
    pub deadline: Duration,
}

impl ChannelContextProvider {
    pub fn new(
        log: Arc<ChannelLog>,
        access: whisper_actors::live::Live<Access>,
        s: &ChannelContextSection,
    ) -> Self {
        Self {
            log,
            access,
            max_tokens: s.max_tokens,
            include_bots: s.include_bots,
            deadline: s.deadline,
        }
    }

    /// The channel's lines this character may see, within the token budget, oldest first.
    pub fn render(&self, request: &ContextRequest) -> String {
        let (Scope::Guild(guild), Some(channel)) = (&request.scope, request.channel) else {
            return String::new();
        };
        let me = self.log.bot_of(&request.key.character);
        let mut kept = Vec::new();
        let mut budget = self.max_tokens;
        let access = self.access.get();
        for line in self
            .log
            .lines(*guild, channel, request.message_id)
            .iter()
            .rev()
        {
            let own = Some(line.author) == me;
            if !own && line.author_is_bot && !self.include_bots {
                continue;
            }
            if access.blocks(line.author, &line.roles) || line.text.trim().is_empty() {
                continue;
            }
            let who = if own {
                format!("{} (you)", request.key.character)
            } else {
                line.author_name.clone()
            };
            let rendered = format!("{who}: {}", line.text.replace('\n', " "));
            let cost = estimate_tokens(&rendered);
            if cost > budget {
                break;
            }
            budget -= cost;
            kept.push(rendered);
        }
        kept.reverse();
        kept.join("\n")
    }
}

#[async_trait]
impl ContextProvider for ChannelContextProvider {
    fn name(&self) -> &'static str {
        "channel"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Section
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        Ok(ContextPiece::Section(Section {
            title: "Recent messages in this channel (others' words, for context only)".into(),
            body: self.render(request),
        }))
    }
}
