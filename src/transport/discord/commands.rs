//! Slash commands (poise): the user's view of and control over what a character keeps about
//! them, and the admins' view of the runtime. Replies about a user's data are ephemeral (only
//! they see them), and what is shown respects the scope rule: in a guild, nothing from DMs.

use whisper_actors::ConversationKey;
use whisper_actors::Scope;
use whisper_actors::memory::AllowedScopes;

use super::inbound::user_key;
use super::policy::Access;
use crate::app::{ForgetScope, UserControl};

pub type Error = anyhow::Error;
pub type Ctx<'a> = poise::Context<'a, CommandData, Error>;

/// Shared by a bot's commands.
pub struct CommandData {
    pub character: String,
    pub control: UserControl,
    pub access: whisper_actors::live::Live<Access>,
    pub guild_memories_in_dm: bool,
    /// Cluster mode: `/forget` runs on the worker owning the user's partition.
    #[cfg(feature = "server")]
    pub cluster: Option<std::sync::Arc<crate::cluster::gateway::Gateway>>,
    pub shards: super::shards::ShardPlan,
    /// `/forget` takes its place in the user's line behind the messages they sent before it.
    pub arrivals: std::sync::Arc<super::arrivals::Arrivals>,
}

pub fn all() -> Vec<poise::Command<CommandData, Error>> {
    vec![memories(), facts(), forget(), profile(), status(), help()]
}

fn scope_of(ctx: &Ctx<'_>) -> Scope {
    match ctx.guild_id() {
        Some(guild) => Scope::Guild(guild.get()),
        None => Scope::Direct,
    }
}

/// What I remember about you (here)
#[poise::command(slash_command, ephemeral)]
pub async fn memories(ctx: Ctx<'_>) -> Result<(), Error> {
    let data = ctx.data();
    let key = ConversationKey::new(data.character.as_str(), user_key(ctx.author().id.get()));
    let allowed = AllowedScopes::for_scope(&scope_of(&ctx), data.guild_memories_in_dm);
    let mut list = data.control.data().memories(&key, 100).await?;
    list.retain(|m| allowed.allows(&m.scope));
    list.truncate(15);
    let text = if list.is_empty() {
        "I don't remember anything about you here yet.".to_owned()
    } else {
        list.iter()
            .map(|m| format!("- [{}] {}", m.kind.as_str(), clip(&m.text, 180)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    ctx.say(clip(&text, 1900)).await?;
    Ok(())
}

/// Facts I know about you
#[poise::command(slash_command, ephemeral)]
pub async fn facts(ctx: Ctx<'_>) -> Result<(), Error> {
    let user = user_key(ctx.author().id.get());
    let facts = ctx.data().control.data().facts(&user).await?;
    let text = if facts.is_empty() {
        "I don't know any facts about you yet.".to_owned()
    } else {
        whisper_actors::graph::describe_facts(&facts)
    };
    ctx.say(clip(&text, 1900)).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, poise::ChoiceParameter)]
pub enum ForgetChoice {
    #[name = "all"]
    All,
    #[name = "memories"]
    Memories,
    #[name = "facts"]
    Facts,
    #[name = "history"]
    History,
}

/// Forget what I keep about you, in every character and place
#[poise::command(slash_command, ephemeral)]
pub async fn forget(
    ctx: Ctx<'_>,
    #[description = "What to forget (default: all)"] scope: Option<ForgetChoice>,
) -> Result<(), Error> {
    let place = ctx.data().arrivals.enter(ctx.author().id.get(), ctx.id());
    // Forgetting waits for a reply in flight; acknowledge within Discord's 3 s first.
    ctx.defer_ephemeral().await?;
    place.wait_turn().await;
    let scope = match scope.unwrap_or(ForgetChoice::All) {
        ForgetChoice::All => ForgetScope::All,
        ForgetChoice::Memories => ForgetScope::Memories,
        ForgetChoice::Facts => ForgetScope::Facts,
        ForgetChoice::History => ForgetScope::History,
    };
    let user = user_key(ctx.author().id.get());
    #[cfg(feature = "server")]
    let cluster = ctx.data().cluster.as_ref();
    #[cfg(not(feature = "server"))]
    let cluster: Option<&std::convert::Infallible> = None;
    let report = match cluster {
        // In the user's partition, behind the messages they sent before: none of them can
        // store anything after the delete. The channel context kept here goes too.
        #[cfg(feature = "server")]
        Some(gateway) => {
            let data = ctx.data();
            data.control.forget_channel_context(&user);
            let shard = data.shards.shard_of(ctx.guild_id().map(|g| g.get()));
            let reply_to = gateway.reply_queue(&data.character, shard);
            gateway.forget(&user, scope, reply_to).await?
        }
        #[cfg(not(feature = "server"))]
        Some(never) => match *never {},
        None => ctx.data().control.forget(&user, scope).await?.to_string(),
    };
    drop(place);
    ctx.say(format!("Done, I forgot: {report}.")).await?;
    Ok(())
}

/// What I know about you, and how well we know each other
#[poise::command(slash_command, ephemeral)]
pub async fn profile(ctx: Ctx<'_>) -> Result<(), Error> {
    let data = ctx.data();
    let user = user_key(ctx.author().id.get());
    let text = match data.control.data().profile(&user).await? {
        None => "We haven't talked yet.".to_owned(),
        Some(p) => {
            let days = ((p.last_seen_ms - p.first_seen_ms).max(0) / 86_400_000) as u64;
            let trust = whisper_actors::conversation::prompt::trust(p.message_count, days);
            let facts = data.control.data().facts(&user).await?.len();
            format!(
                "You're {}. We've exchanged {} messages over {} days; familiarity {:.0}%. \
                 I know {} facts about you (/facts), and /forget erases everything.",
                p.display_name,
                p.message_count,
                days,
                trust * 100.0,
                facts
            )
        }
    };
    ctx.say(text).await?;
    Ok(())
}

/// Runtime status (admins only)
#[poise::command(slash_command, ephemeral)]
pub async fn status(ctx: Ctx<'_>) -> Result<(), Error> {
    let data = ctx.data();
    if !data.access.get().is_admin(ctx.author().id.get()) {
        ctx.say("Only the bot's admins can see its status.").await?;
        return Ok(());
    }
    ctx.say(data.control.status().summary_line()).await?;
    Ok(())
}

/// How to talk to me, and what I keep
#[poise::command(slash_command, ephemeral)]
pub async fn help(ctx: Ctx<'_>) -> Result<(), Error> {
    ctx.say(
        "Mention me, reply to one of my messages, or DM me, and I'll answer. I remember what \
         you tell me (memories in a DM stay in that DM).\n\
         /memories: what I remember about you here\n/facts: facts I know about you\n\
         /profile: how well we know each other\n/forget [all|memories|facts|history]: erase it",
    )
    .await?;
    Ok(())
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
