//! `whisperengine chat`: the terminal transport.
//!
//! On a terminal it is interactive: a prompt, and the reply printed as it grows (each update
//! from the runtime prints the new text since the last one). When standard input is not a
//! terminal it reads one message per line and writes each complete reply on one line of
//! standard output (a reply's own line breaks become spaces), which is what scripts, tests and
//! benchmarks use. Logs never go to standard output.

use std::io::Write;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use whisper_actors::messages::{ReplyStatus, ReplyUpdate};
use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, Scope, UserMessage};

use crate::app::App;

#[derive(Clone, Debug)]
pub struct ChatOptions {
    pub character: String,
    pub user: String,
    pub display_name: String,
    pub interactive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Route(#[from] whisper_actors::RouteError),
    #[error("cannot read standard input: {0}")]
    Stdin(std::io::Error),
    #[error("cannot write standard output: {0}")]
    Stdout(std::io::Error),
    #[error("the runtime stopped before replying")]
    NoReply,
}

/// Runs the chat loop until end of input, `/quit` or Ctrl-C.
pub async fn run(app: &App, options: ChatOptions) -> Result<(), ChatError> {
    let router = app.router();
    let (sink, mut updates) = ChannelSink::start();
    let key = ConversationKey::new(
        options.character.as_str(),
        format!("console:{}", options.user),
    );
    let character_name = router
        .characters()
        .get(&options.character)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = std::io::stdout();
    let mut next_id = 0u64;

    if options.interactive {
        println!(
            "Chatting with {character_name} as {} (/quit to leave).",
            options.user
        );
    }
    loop {
        if options.interactive {
            print!("\nyou> ");
            stdout.flush().map_err(ChatError::Stdout)?;
        }
        let line = tokio::select! {
            line = lines.next_line() => line.map_err(ChatError::Stdin)?,
            _ = super::shutdown_signal() => None,
        };
        let Some(line) = line else { break };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if options.interactive && text == "/quit" {
            break;
        }
        if let Some(output) = command(app, &key, text).await {
            println!("{output}");
            continue;
        }
        next_id += 1;
        router.route(UserMessage {
            key: key.clone(),
            scope: Scope::Console,
            channel: None,
            display_name: options.display_name.clone(),
            text: text.to_owned(),
            message_id: next_id,
            received_at: Instant::now(),
            reply_to: sink.clone(),
            settled: None,
            images: Vec::new(),
        })?;
        if options.interactive {
            print!("{character_name}> ");
            stdout.flush().map_err(ChatError::Stdout)?;
        }
        let reply = tokio::select! {
            reply = await_reply(&mut updates, next_id, options.interactive, &mut stdout) => reply?,
            // Ctrl-C while a reply streams: stop reading; shutdown still lets it finish and be stored.
            _ = super::shutdown_signal() => break,
        };
        if !options.interactive {
            let one_line = reply.split_whitespace().collect::<Vec<_>>().join(" ");
            writeln!(stdout, "{one_line}").map_err(ChatError::Stdout)?;
            stdout.flush().map_err(ChatError::Stdout)?;
        }
    }
    if options.interactive {
        println!();
    }
    Ok(())
}

/// `/memories`, `/facts` and `/forget`: the user's control over what the bot keeps about them.
async fn command(app: &App, key: &ConversationKey, text: &str) -> Option<String> {
    match text {
        "/memories" => Some(match app.user_data().memories(key, 20).await {
            Ok(list) if list.is_empty() => "(no memories)".to_owned(),
            Ok(list) => list
                .iter()
                .map(|m| format!("- [{}] {}", m.kind.as_str(), m.text))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error: {e:#}"),
        }),
        "/facts" => Some(match app.user_data().facts(&key.user).await {
            Ok(facts) if facts.is_empty() => "(no facts)".to_owned(),
            Ok(facts) => facts
                .iter()
                .map(|f| {
                    format!(
                        "- {} {} {} ({:.0}%)",
                        f.subject,
                        f.predicate.replace('_', " "),
                        f.object,
                        f.confidence * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error: {e:#}"),
        }),
        "/forget" => Some(match app.forget(&key.user).await {
            Ok(report) => report.to_string(),
            Err(e) => format!("error: {e:#}"),
        }),
        _ => None,
    }
}

/// Consumes updates for `message_id` until its final one; prints deltas when interactive.
async fn await_reply(
    updates: &mut mpsc::UnboundedReceiver<ReplyUpdate>,
    message_id: u64,
    interactive: bool,
    stdout: &mut std::io::Stdout,
) -> Result<String, ChatError> {
    let mut printed = String::new();
    while let Some(update) = updates.recv().await {
        if update.message_id != message_id {
            continue;
        }
        if interactive {
            if let Some(delta) = update.text.strip_prefix(printed.as_str()) {
                print!("{delta}");
            } else {
                // The final text is not a continuation (an apology after a failure): new line.
                print!("\n{}", update.text);
            }
            stdout.flush().map_err(ChatError::Stdout)?;
            printed.clone_from(&update.text);
        }
        if !matches!(update.status, ReplyStatus::Streaming) {
            return Ok(update.text);
        }
    }
    Err(ChatError::NoReply)
}
