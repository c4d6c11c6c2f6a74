//! The Discord transport: one serenity client per character token, all feeding the one actor
//! system and sharing its stores and pools.
//!
//! ```text
//! gateway ─▶ Bot (EventHandler, per character) ─▶ policy ─▶ ShardRouter ─▶ conversations
//!                         │ Register                                          │ ReplyUpdate
//!                         ▼                                                   ▼
//!                     DiscordActor (per bot token) ─▶ writer task per reply ─▶ REST
//! ```

pub mod arrivals;
pub mod channel;
pub mod commands;
pub mod images;
pub mod inbound;
pub mod limiter;
pub mod outbound;
pub mod policy;
pub mod rest;
pub mod shards;
pub mod split;
mod writer;

use std::sync::Arc;

use actix::prelude::*;
use serenity::all::{ClientBuilder, GatewayIntents, HttpBuilder, ShardManager};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::Settings;
use inbound::Bot;
use outbound::ChannelLimiter;
pub use outbound::DiscordActor;

#[derive(Debug, thiserror::Error)]
pub enum DiscordError {
    #[error("discord.tokens names character {0:?}, which is not in characters.dir")]
    UnknownCharacter(String),
    #[error("discord.tokens.{0} is empty")]
    EmptyToken(String),
    #[error("cannot start the Discord client for {character}: {source}")]
    Client {
        character: String,
        source: serenity::Error,
    },
    #[cfg(feature = "server")]
    #[error("cluster.role = \"gateway\": {0}")]
    Broker(#[from] crate::cluster::broker::BrokerError),
    #[error("the Discord bot for {character}: {source}")]
    Shards {
        character: String,
        source: shards::ShardError,
    },
}

/// Locks a map shared by the bot's tasks; a task that panicked holding it leaves consistent data
/// (every update is a single insert or remove), so the poison is ignored.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One bot: its character, gateway shards, client task and DiscordActor.
struct RunningBot {
    character: String,
    manager: Arc<ShardManager>,
    task: tokio::task::JoinHandle<()>,
    outbound: Addr<DiscordActor>,
    #[cfg(feature = "server")]
    plan: shards::ShardPlan,
}

/// The running bots.
pub struct DiscordBots {
    bots: Vec<RunningBot>,
    _arbiter: Arbiter,
}

/// The gateway intents the bots need: guild and direct messages, and their content.
pub fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
}

/// Connects one client per configured token. Must run inside the actix System.
pub async fn start(app: &App, settings: &Settings) -> Result<DiscordBots, DiscordError> {
    let section = &settings.discord;
    let edit_interval = settings.streaming.edit_interval;
    let router = app.router();
    let access = app.access();
    let limiter = Arc::new(ChannelLimiter::new(
        section.channel_writes,
        section.channel_window,
        section.forbidden_retry,
    ));
    let arbiter = Arbiter::new();
    let mut bots = Vec::new();
    // As a cluster gateway, messages go to the broker and replies come back from it.
    #[cfg(feature = "server")]
    let gateway = match settings.cluster.role {
        crate::config::ClusterRole::Gateway => Some(
            crate::cluster::gateway::Gateway::start(
                &settings.cluster,
                &settings.storage.redis_prefix,
                &crate::cluster::node_id(&settings.cluster.node_id),
            )
            .await?,
        ),
        _ => None,
    };
    for (character, token) in &section.tokens {
        if router.characters().get(character).is_none() {
            return Err(DiscordError::UnknownCharacter(character.clone()));
        }
        if token.expose().trim().is_empty() {
            return Err(DiscordError::EmptyToken(character.clone()));
        }
        let client = rest::http_client();
        let client_for_rest = client.clone();
        let mut http = HttpBuilder::new(token.expose().trim()).client(client.clone());
        if !section.api_url.is_empty() {
            http = http.proxy(section.api_url.trim_end_matches('/'));
        }
        let http = http.ratelimiter_disabled(!section.ratelimiter).build();
        let plan =
            shards::resolve(section, &http)
                .await
                .map_err(|source| DiscordError::Shards {
                    character: character.clone(),
                    source,
                })?;
        // The writer shares the client's Http and HTTP client (one rate limiter per token); it
        // exists once the client is built, before any message can arrive.
        let shared_rest = Arc::new(std::sync::OnceLock::new());
        let outbound = {
            let (rest, limiter) = (shared_rest.clone(), limiter.clone());
            let stats = app.discord_stats(character);
            actix::Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                DiscordActor::new(stats, rest, limiter, edit_interval)
            })
        };
        let arrivals = Arc::new(arrivals::Arrivals::default());
        let handler = Bot {
            arrivals: arrivals.clone(),
            character: character.clone(),
            threads: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(inbound::THREADS).expect("non-zero"),
            )),
            access: access.clone(),
            router: router.clone(),
            #[cfg(feature = "server")]
            cluster: gateway.clone(),
            shards: plan,
            outbound: outbound.clone(),
            limiter: limiter.clone(),
            log: app.channel_log(),
            max_attachment_bytes: section.max_attachment_bytes,
            vision_default: settings.llm.vision,
            image_limits: images::ImageLimits {
                max_images: section.max_images,
                max_bytes: section.max_image_bytes,
                timeout: section.image_timeout,
            },
            http: client.clone(),
        };
        let data = commands::CommandData {
            character: character.clone(),
            control: app.control(),
            access: access.clone(),
            guild_memories_in_dm: settings.memory.guild_memories_in_dm,
            #[cfg(feature = "server")]
            cluster: gateway.clone(),
            shards: plan,
            arrivals,
        };
        let framework = poise::Framework::builder()
            .options(poise::FrameworkOptions {
                commands: commands::all(),
                // Slash commands only: with mention-as-prefix on, poise parses every mention
                // and logs its text when it is no command.
                prefix_options: poise::PrefixFrameworkOptions {
                    prefix: None,
                    mention_as_prefix: false,
                    ..Default::default()
                },
                on_error: |error| Box::pin(on_command_error(error)),
                ..Default::default()
            })
            .initialize_owners(false)
            .setup(move |ctx, _ready, framework| {
                Box::pin(async move {
                    // Global commands: Discord propagates them to every guild the bot is in.
                    if let Err(error) =
                        poise::builtins::register_globally(ctx, &framework.options().commands).await
                    {
                        warn!(%error, "could not register slash commands");
                    }
                    Ok(data)
                })
            })
            .build();
        let mut client = ClientBuilder::new_with_http(http, intents())
            .framework(framework)
            .event_handler(handler)
            .await
            .map_err(|source| DiscordError::Client {
                character: character.clone(),
                source,
            })?;
        let _ = shared_rest.set(Arc::new(rest::Rest::new(
            client.http.clone(),
            client_for_rest,
        )));
        let manager = client.shard_manager.clone();
        let name = character.clone();
        info!(character = %character, first = plan.first, last = plan.last, total = plan.total, "Discord shards");
        let task = tokio::spawn(async move {
            // serenity's range is inclusive of its end.
            let started = client
                .start_shard_range(plan.first..plan.last, plan.total)
                .await;
            if let Err(error) = started {
                warn!(character = %name, %error, "Discord client stopped with an error");
            }
        });
        info!(character = %character, "Discord bot starting");
        bots.push(RunningBot {
            character: character.clone(),
            manager,
            task,
            outbound,
            #[cfg(feature = "server")]
            plan,
        });
    }
    #[cfg(feature = "server")]
    if let Some(gateway) = gateway {
        let sinks = bots
            .iter()
            .map(|b| (b.character.clone(), b.outbound.clone(), b.plan))
            .collect();
        gateway.deliver_replies(sinks).await?;
    }
    Ok(DiscordBots {
        bots,
        _arbiter: arbiter,
    })
}

impl DiscordBots {
    /// The DiscordActor of `character`'s bot.
    pub fn outbound(&self, character: &str) -> Option<Addr<DiscordActor>> {
        self.bots
            .iter()
            .find(|bot| bot.character == character)
            .map(|bot| bot.outbound.clone())
    }

    /// Closes every gateway connection.
    pub async fn shutdown(self) {
        for RunningBot {
            character,
            manager,
            task,
            ..
        } in self.bots
        {
            manager.shutdown_all().await;
            task.abort();
            info!(%character, "Discord bot stopped");
        }
    }
}

/// A failing command answers the user (ephemerally) instead of failing silently.
async fn on_command_error(
    error: poise::FrameworkError<'_, commands::CommandData, commands::Error>,
) {
    match error {
        poise::FrameworkError::Command { error, ctx, .. } => {
            warn!(command = %ctx.command().name, error = %format!("{error:#}"), "slash command failed");
            let reply = poise::CreateReply::default()
                .content("Sorry, that didn't work. Please try again in a moment.")
                .ephemeral(true);
            let _ = ctx.send(reply).await;
        }
        // These carry the message's text; poise's default handler would log it.
        poise::FrameworkError::UnknownCommand { .. }
        | poise::FrameworkError::DynamicPrefix { .. }
        | poise::FrameworkError::NonCommandMessage { .. } => {
            debug!("a message looked like a prefix command; there are none");
        }
        other => {
            if let Err(e) = poise::builtins::on_error(other).await {
                warn!(error = %e, "could not report a command error");
            }
        }
    }
}
