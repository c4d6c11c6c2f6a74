//! Step 2, gather: embed the message once, ask every context provider at once (each under its
//! own deadline), and build the prompt from what came back in time.

use futures::FutureExt;
use tracing::{Instrument, debug, info_span, warn};

use crate::character::{Character, ModelParams};
use crate::conversation::ConversationDeps;
use crate::conversation::context::{
    ContextPiece, ContextRequest, PieceKind, Section, SharedEmbedding,
    gather_within as ask_providers, no_embedding,
};
use crate::conversation::prompt::{self, PromptInput};
use crate::messages::{Timings, UserMessage};
use crate::ports::{ChatRequest, Profile, Turn};

/// What the context step learned.
pub struct Gathered {
    /// The message's embedding, shared with the memory search and the remember job.
    pub embedding: SharedEmbedding,
    /// Sections for the prompt (memories, facts, channel...): empty on the fast track.
    pub sections: Vec<Section>,
    /// History and profile read from the store (when the warm cache had none).
    pub loaded_history: Option<Vec<Turn>>,
    pub loaded_profile: Option<Option<Profile>>,
    /// Small talk, by the classifier's verdict: answered from persona and recent history,
    /// without tools.
    pub fast: bool,
}

/// Runs the providers the warm cache does not make redundant, all at once.
pub async fn gather(
    deps: &ConversationDeps,
    message: &UserMessage,
    need_history: bool,
    need_profile: bool,
    timings: &mut Timings,
) -> Gathered {
    let providers: Vec<_> = deps
        .providers
        .iter()
        .filter(|p| match p.kind() {
            PieceKind::History => need_history,
            PieceKind::Profile => need_profile,
            PieceKind::Section | PieceKind::Route => true,
        })
        .cloned()
        .collect();
    let embedding = match &deps.embedder {
        Some(embedder) => {
            let (embedder, text) = (embedder.clone(), message.text.clone());
            async move {
                match embedder.embed(vec![text]).await {
                    Ok(mut vectors) => vectors.pop(),
                    Err(error) => {
                        warn!(%error, "embedding failed; classifier and memory search are skipped");
                        None
                    }
                }
            }
            .instrument(info_span!("embed"))
            .boxed()
            .shared()
        }
        None => no_embedding(),
    };
    let request = ContextRequest {
        key: message.key.clone(),
        scope: message.scope.clone(),
        channel: message.channel,
        message_id: message.message_id,
        text: message.text.clone(),
        embedding: embedding.clone(),
    };
    let deadlines = deps.deadlines.get();
    let answered = ask_providers(&providers, &request, &deadlines)
        .instrument(info_span!("context"))
        .await;
    timings.context = answered.elapsed;
    timings.degraded = answered.degraded();
    if !timings.degraded.is_empty() {
        deps.stats.pipeline.degraded_context.inc();
    }
    // Images need the full path: the fast model may not read them, and they are worth a memory.
    let fast = answered.is_fast() && message.images.is_empty();
    let mut gathered = Gathered {
        embedding,
        sections: Vec::new(),
        loaded_history: None,
        loaded_profile: None,
        fast,
    };
    if let Some(verdict) = &answered.verdict {
        timings.route = Some(verdict.route);
        timings.intent.clone_from(&verdict.intent);
    }
    for piece in answered.pieces {
        match piece {
            ContextPiece::History(turns) => gathered.loaded_history = Some(turns),
            ContextPiece::Profile(profile) => gathered.loaded_profile = Some(profile),
            // The fast track answers from persona and recent history only.
            ContextPiece::Section(section) if !fast => gathered.sections.push(section),
            ContextPiece::Section(_) | ContextPiece::Route(_) => {}
        }
    }
    gathered
}

/// The model settings for this message: the fast model on the fast track, if one is set.
pub fn model_params(character: &Character, fast: bool) -> &ModelParams {
    match (&character.fast_model, fast) {
        (Some(fast_model), true) => fast_model,
        _ => &character.model,
    }
}

/// The prompt: persona, what was gathered, as much history as fits the token budget.
pub fn build_prompt(
    deps: &ConversationDeps,
    character: &Character,
    fast: bool,
    sections: &[Section],
    history: &[Turn],
    profile: Option<&Profile>,
    message: &UserMessage,
) -> ChatRequest {
    let _prompt = info_span!("prompt").entered();
    let settings = deps.settings.load();
    let built = prompt::build(PromptInput {
        character,
        params: model_params(character, fast),
        profile,
        sections,
        history,
        message: &message.text,
        images: &message.images,
        image_tokens: settings.image_tokens,
        token_budget: settings.token_budget,
        now_ms: deps.clock.now_ms(),
    });
    debug!(
        history_turns = built.history_turns_used,
        tokens = built.estimated_tokens,
        "prompt ready"
    );
    built.request
}
