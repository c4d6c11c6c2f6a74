//! The serenity event handler of one bot (one character): decides whether a message is for
//! this bot, gathers what Discord adds to it (the replied-to message, the author's name, text
//! attachments, images for a model that reads them) and routes it through the ShardRouter like
//! any other message.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use serenity::all::{
    ChannelId, Context, EventHandler, GuildChannel, GuildId, Message, MessageId,
    MessageUpdateEvent, Ready, ResumedEvent, Role,
};
use serenity::async_trait;
use tracing::{debug, info, warn};
use whisper_actors::messages::{FailureKind, ReplyStatus, ReplyUpdate};
use whisper_actors::{ConversationKey, Image, Scope, ShardRouter, UserMessage};

use super::channel::{ChannelLog, Line};
use super::outbound::{ChannelLimiter, DiscordActor, Register};
use super::policy::{Access, Decision, Inbound};

/// Extensions read as text when attached (beyond `text/*` content types).
const TEXT_EXTENSIONS: [&str; 12] = [
    "txt", "md", "csv", "json", "log", "toml", "yaml", "yml", "rs", "py", "js", "ts",
];

/// A thread's parent channel and owner.
pub type ThreadInfo = (Option<u64>, Option<u64>);

/// Threads remembered per bot.
pub const THREADS: usize = 10_000;

pub struct Bot {
    pub character: String,
    /// Each author's messages in Discord's order (handlers run in tasks of their own).
    pub arrivals: Arc<super::arrivals::Arrivals>,
    /// Threads seen created: thread id to (parent channel, owner). The cache only knows threads
    /// of guilds it holds, and a thread's channel rules follow its parent.
    /// Bounded (`THREADS`, least recently used dropped): a dropped thread is looked up in the
    /// cache again.
    pub threads: std::sync::Mutex<lru::LruCache<u64, ThreadInfo>>,
    /// The access rules in force (`[discord]` lists are live).
    pub access: whisper_actors::live::Live<Access>,
    pub router: ShardRouter,
    /// Cluster mode (`cluster.role = "gateway"`): messages go to the broker, not the router.
    #[cfg(feature = "server")]
    pub cluster: Option<Arc<crate::cluster::gateway::Gateway>>,
    /// The shards this process runs for the bot (a cluster reply comes back on its shard's queue).
    pub shards: super::shards::ShardPlan,
    pub outbound: Addr<DiscordActor>,
    /// Where the bot was refused (403): messages there are not answered at all.
    pub limiter: Arc<ChannelLimiter>,
    /// The guild channels' recent messages (channel context), when enabled.
    pub log: Option<Arc<ChannelLog>>,
    pub max_attachment_bytes: u64,
    /// `llm.vision`: whether a character whose `[model]` does not say reads images.
    pub vision_default: bool,
    pub image_limits: super::images::ImageLimits,
    /// The bot's HTTP client (the one serenity and the writer use), for attachment downloads.
    pub http: reqwest012::Client,
}

/// The user key of a Discord user: the same person across every bot and guild.
pub fn user_key(user: u64) -> String {
    format!("discord:{user}")
}

#[async_trait]
impl EventHandler for Bot {
    async fn ready(&self, ctx: Context, ready: Ready) {
        // The shard runner calls collectors in the gateway's order, before any handler runs.
        ctx.shard.add_collector(self.arrivals.collector());
        if let Some(log) = &self.log {
            log.set_bot(&self.character, ready.user.id.get());
        }
        info!(character = %self.character, bot = %ready.user.name, guilds = ready.guilds.len(), "connected to Discord");
    }

    async fn thread_create(&self, _: Context, thread: GuildChannel) {
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).put(
            thread.id.get(),
            (
                thread.parent_id.map(|p| p.get()),
                thread.owner_id.map(|o| o.get()),
            ),
        );
    }

    async fn resume(&self, _: Context, _: ResumedEvent) {
        info!(character = %self.character, "Discord gateway session resumed");
    }

    async fn message_update(
        &self,
        _: Context,
        _: Option<Message>,
        _: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        if let (Some(log), Some(content)) = (&self.log, &event.content) {
            log.edit(event.channel_id.get(), event.id.get(), content);
        }
    }

    async fn message_delete(
        &self,
        _: Context,
        channel: ChannelId,
        message: MessageId,
        _: Option<GuildId>,
    ) {
        if let Some(log) = &self.log {
            log.delete(channel.get(), message.get());
        }
    }

    // The bot's permissions may have changed: channels that refused it are tried again.
    async fn channel_update(&self, _: Context, _: Option<GuildChannel>, new: GuildChannel) {
        self.limiter.permissions_changed_in_channel(new.id.get());
    }

    async fn guild_role_update(&self, _: Context, _: Option<Role>, new: Role) {
        self.limiter
            .permissions_changed_in_guild(new.guild_id.get());
    }

    async fn message(&self, ctx: Context, msg: Message) {
        // Held until this message is handed on (or dropped): later ones of the author wait.
        let place = self.arrivals.enter(msg.author.id.get(), msg.id.get());
        let me = ctx.cache.current_user().id;
        let known = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&msg.channel_id.get())
            .copied();
        let (parent, thread_owner) = known.unwrap_or_else(|| thread_of(&ctx, &msg));
        let roles: Vec<u64> = msg
            .member
            .as_ref()
            .map(|m| m.roles.iter().map(|r| r.get()).collect())
            .unwrap_or_default();
        let display_name = msg
            .member
            .as_ref()
            .and_then(|m| m.nick.clone())
            .or_else(|| msg.author.global_name.clone())
            .unwrap_or_else(|| msg.author.name.clone());
        if let (Some(log), Some(guild)) = (&self.log, msg.guild_id) {
            log.record(
                guild.get(),
                msg.channel_id.get(),
                Line {
                    id: msg.id.get(),
                    author: msg.author.id.get(),
                    author_name: display_name.clone(),
                    author_is_bot: msg.author.bot,
                    roles: roles.clone(),
                    text: msg.content.clone(),
                    at: Instant::now(),
                },
            );
        }
        let inbound = Inbound {
            author: msg.author.id.get(),
            author_is_bot: msg.author.bot,
            from_self: msg.author.id == me,
            guild: msg.guild_id.map(|g| g.get()),
            channel: msg.channel_id.get(),
            parent_channel: parent,
            roles: &roles,
            mentions_me: msg.mentions_user_id(me),
            replies_to_me: msg
                .referenced_message
                .as_ref()
                .is_some_and(|r| r.author.id == me),
            in_my_thread: thread_owner == Some(me.get()),
        };
        if let Decision::Ignore(why) = self.access.get().decide(&inbound) {
            debug!(character = %self.character, message = %msg.id, why, "not answering");
            return;
        }
        if self.limiter.is_forbidden(msg.channel_id.get()) {
            // Answering would cost a model call and requests Discord refuses (and counts).
            metrics::counter!("whisper_discord_skipped_forbidden_total").increment(1);
            debug!(character = %self.character, channel = %msg.channel_id, "not answering: the bot may not write in this channel");
            return;
        }
        let (text, images, notice) = self.compose(&msg, me.get()).await;
        if text.trim().is_empty() && images.is_empty() {
            return;
        }
        let scope = match msg.guild_id {
            Some(guild) => Scope::Guild(guild.get()),
            None => Scope::Direct,
        };
        let message_id = msg.id.get();
        self.outbound.do_send(Register {
            message_id,
            channel: msg.channel_id.get(),
            guild: msg.guild_id.map(|g| g.get()),
            notice,
        });
        let key = ConversationKey::new(self.character.as_str(), user_key(msg.author.id.get()));
        let message = UserMessage {
            key: key.clone(),
            scope,
            channel: Some(msg.channel_id.get()),
            display_name,
            text,
            message_id,
            received_at: Instant::now(),
            reply_to: self.outbound.clone().recipient(),
            settled: None,
            images,
        };
        place.wait_turn().await;
        #[cfg(feature = "server")]
        if let Some(gateway) = &self.cluster {
            let shard = self.shards.shard_of(msg.guild_id.map(|g| g.get()));
            if let Err(error) = gateway.publish(&message, shard).await {
                warn!(%error, "could not hand a Discord message to the broker");
                self.outbound.do_send(ReplyUpdate {
                    message_id,
                    key,
                    text: "I can't reach my workers right now. Please try again in a moment."
                        .into(),
                    status: ReplyStatus::Failed(FailureKind::LlmFailed),
                });
            }
            return;
        }
        let routed = self.router.route(message);
        if let Err(whisper_actors::RouteError::UnknownCharacter(character)) = &routed {
            // A reload removed its character file; the bot stays connected (its token needs a
            // restart to change) and stops answering.
            warn!(
                character,
                "a message for a character no longer in characters.dir: not answered (restart to disconnect its bot)"
            );
            return;
        }
        if let Err(error) = routed {
            warn!(%error, "could not route a Discord message");
            self.outbound.do_send(ReplyUpdate {
                message_id,
                key,
                text: "I'm restarting right now. Please try again in a moment.".into(),
                status: ReplyStatus::Failed(FailureKind::LlmFailed),
            });
        }
    }
}

impl Bot {
    /// Whether this bot's character reads images (looked up per message: characters reload).
    fn reads_images(&self) -> bool {
        self.router
            .characters()
            .get(&self.character)
            .and_then(|c| c.model.vision)
            .unwrap_or(self.vision_default)
    }

    /// The text the character sees, the images it sees (vision models only), and a notice for
    /// attachments it could not read.
    async fn compose(&self, msg: &Message, me: u64) -> (String, Vec<Image>, Option<String>) {
        let mut text = msg
            .content
            .replace(&format!("<@{me}>"), "")
            .replace(&format!("<@!{me}>"), "")
            .trim()
            .to_owned();
        if let Some(replied) = &msg.referenced_message
            && replied.author.id.get() != me
            && !replied.content.is_empty()
        {
            let who = replied
                .author
                .global_name
                .clone()
                .unwrap_or_else(|| replied.author.name.clone());
            text = format!("(replying to {who}: \"{}\")\n{text}", replied.content);
        }
        let mut unread = Vec::new();
        let vision = self.reads_images() && self.image_limits.max_images > 0;
        let mut pictures = Vec::new();
        for attachment in &msg.attachments {
            if vision
                && crate::vision::looks_like_image(
                    attachment.content_type.as_deref(),
                    &attachment.filename,
                )
            {
                pictures.push(attachment);
                continue;
            }
            let is_text = attachment
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("text/"))
                || attachment
                    .filename
                    .rsplit_once('.')
                    .is_some_and(|(_, ext)| TEXT_EXTENSIONS.contains(&ext.to_lowercase().as_str()));
            if !is_text || u64::from(attachment.size) > self.max_attachment_bytes {
                unread.push(attachment.filename.clone());
                continue;
            }
            match attachment.download().await {
                Ok(bytes) => {
                    let body = String::from_utf8_lossy(&bytes);
                    text.push_str(&format!("\n\n[attached {}]\n{body}", attachment.filename));
                }
                Err(error) => {
                    // The file name is the user's words too: not logged.
                    warn!(%error, bytes = attachment.size, "could not download an attachment");
                    unread.push(attachment.filename.clone());
                }
            }
        }
        let fetched = if pictures.is_empty() {
            Default::default()
        } else {
            super::images::fetch(&self.http, &pictures, &self.image_limits).await
        };
        let mut notes: Vec<String> = Vec::new();
        if !unread.is_empty() {
            let images = if vision { " and images" } else { "" };
            notes.push(format!(
                "-# I can only read text attachments up to {} KB{images}; I couldn't open {}.",
                self.max_attachment_bytes / 1024,
                unread.join(", ")
            ));
        }
        notes.extend(fetched.note(&self.image_limits));
        if text.trim().is_empty() && !pictures.is_empty() {
            // Images alone: the history shows that something was sent (and a reply with the
            // note answers even when none could be opened).
            text = match fetched.images.len() {
                0 => "(sent an image you could not open)".to_owned(),
                1 => "(sent an image)".to_owned(),
                n => format!("(sent {n} images)"),
            };
        }
        let notice = (!notes.is_empty()).then(|| notes.join("\n"));
        (text, fetched.images, notice)
    }
}

/// For a message in a thread: the thread's parent channel and owner, from the cache.
fn thread_of(ctx: &Context, msg: &Message) -> (Option<u64>, Option<u64>) {
    let Some(guild) = msg.guild_id.and_then(|g| ctx.cache.guild(g)) else {
        return (None, None);
    };
    guild
        .threads
        .iter()
        .find(|t| t.id == msg.channel_id)
        .map_or((None, None), |t| {
            (t.parent_id.map(|p| p.get()), t.owner_id.map(|o| o.get()))
        })
}
