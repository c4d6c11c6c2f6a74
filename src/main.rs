//! The `whisperengine` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use whisperengine::app::App;
use whisperengine::config::{self, Overrides, Settings};
use whisperengine::status;
use whisperengine::telemetry::{self, LogTarget};
use whisperengine::transport::console::{self, ChatOptions};
use whisperengine::transport::discord;

#[derive(Parser)]
#[command(
    name = "whisperengine",
    version,
    about = "An actor-system runtime for AI chatbots with long-term memory"
)]
struct Cli {
    /// Configuration file layered over the built-in defaults [default: config/default.toml if present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (overrides storage.data_dir and WHISPER__STORAGE__DATA_DIR)
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Discord bots in discord.tokens; without any, chat on the terminal
    Run {
        /// Character for the terminal chat [default: characters.default]
        #[arg(long)]
        character: Option<String>,
        /// Your user id for the terminal chat [default: $USER]
        #[arg(long)]
        user: Option<String>,
    },
    /// Run the Discord bots in discord.tokens until Ctrl-C or SIGTERM
    Discord,
    /// Chat with a character on the terminal (one reply per line when stdin is not a terminal)
    Chat {
        /// Character id (a file in characters.dir) [default: characters.default]
        #[arg(long)]
        character: Option<String>,
        /// Your user id [default: $USER]
        #[arg(long)]
        user: Option<String>,
    },
    /// Delete everything stored about a user (history, profile, memories) in every store
    Forget {
        /// Full user id, e.g. console:sam or discord:80351110224678912
        #[arg(long)]
        user: String,
    },
    /// Show the running bot's shards, conversations, pools, queues and restarts
    Status,
    /// Make the running bot re-read its configuration and character files and apply what
    /// changed (SIGHUP does the same); prints what changed and what needs a restart
    Reload,
    /// Back up every store in use into DIR (default backups/<UTC time>), with a manifest
    Backup { dir: Option<std::path::PathBuf> },
    /// Restore a backup into the stores configured now (any backend); verified first
    Restore { dir: std::path::PathBuf },
    /// Configuration commands
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (secrets redacted); exit non-zero on any error
    Check,
    /// Print the cargo features the configuration needs, one per line (`server` for any server
    /// store or cluster role; nothing for the embedded default); `./bot.sh run` builds with them
    Features,
}

fn main() -> ExitCode {
    whisperengine::heap::tune();
    whisperengine::tls::install_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration layers this invocation reads (a reload re-reads the same ones).
fn overrides(cli: &Cli) -> Overrides {
    Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        ignore_environment: false,
    }
}

fn load(cli: &Cli) -> anyhow::Result<(Settings, whisper_actors::CharacterSet)> {
    let settings = config::load(&overrides(cli))?.settings;
    let characters = config::characters::load_dir(&settings.characters.dir)?;
    if characters.get(&settings.characters.default).is_none() {
        anyhow::bail!(
            "key `characters.default`: no character {:?} in {} (have: {})",
            settings.characters.default,
            settings.characters.dir.display(),
            characters.ids().collect::<Vec<_>>().join(", ")
        );
    }
    Ok((settings, characters))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Config {
            command: ConfigCommand::Features,
        } => {
            for feature in config::needed_features(&overrides(&cli))? {
                println!("{feature}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let (settings, characters) = load(&cli)?;
            print!("{}", settings.to_toml());
            println!(
                "\n# characters: {}",
                characters.ids().collect::<Vec<_>>().join(", ")
            );
            eprintln!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { dir } => {
            let (settings, _) = load(&cli)?;
            refuse_if_running(&settings, "back up")?;
            let dir = dir.clone().unwrap_or_else(|| {
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(':', "");
                std::path::PathBuf::from("backups").join(stamp)
            });
            actix::System::new().block_on(async move {
                let manifest =
                    whisperengine::backup::backup(&settings, &dir, |line| eprintln!("  {line}"))
                        .await?;
                println!(
                    "backup written to {} ({} files, format {})",
                    dir.display(),
                    manifest.files.len(),
                    manifest.format_version
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Restore { dir } => {
            let (settings, _) = load(&cli)?;
            refuse_if_running(&settings, "restore")?;
            let dir = dir.clone();
            actix::System::new().block_on(async move {
                let manifest =
                    whisperengine::backup::restore(&settings, &dir, |line| eprintln!("  {line}"))
                        .await?;
                println!("restored {} (taken {})", dir.display(), manifest.created_at);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Forget { user } => {
            let (settings, _) = load(&cli)?;
            if let Some((file, true)) = status::read(&settings.storage.data_dir) {
                eprintln!(
                    "warning: whisperengine pid {} is running on this data directory; use /forget in its chat (its caches are per process)",
                    file.pid
                );
            }
            let system = actix::System::new();
            let user = user.clone();
            system.block_on(async move {
                let report = whisperengine::app::open_user_data(&settings)
                    .await?
                    .forget(&user)
                    .await?;
                println!("{user}: {report}");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Status => {
            let (settings, _) = load(&cli)?;
            let dir = &settings.storage.data_dir;
            match status::read(dir) {
                Some((file, alive)) => {
                    print!("{}", status::render(&file, alive));
                    Ok(if alive {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    })
                }
                None => {
                    println!(
                        "no running whisperengine reports to {} (configured: {} shards, history pool {}, LLM concurrency {}, LLM queue {})",
                        dir.display(),
                        settings.runtime.shards,
                        settings.pools.history,
                        settings.llm_concurrency(),
                        settings.pools.llm_queue
                    );
                    Ok(ExitCode::from(3))
                }
            }
        }
        Command::Reload => reload(&cli),
        Command::Run { character, user } => {
            let (settings, _) = load(&cli)?;
            match settings.cluster.role {
                whisperengine::config::ClusterRole::Gateway => return discord(&cli),
                whisperengine::config::ClusterRole::Worker
                | whisperengine::config::ClusterRole::Jobs => return cluster_member(&cli),
                whisperengine::config::ClusterRole::All => {}
            }
            if settings.discord.tokens.is_empty() {
                chat(&cli, character.clone(), user.clone())
            } else {
                discord(&cli)
            }
        }
        Command::Discord => discord(&cli),
        Command::Chat { character, user } => chat(&cli, character.clone(), user.clone()),
    }
}

/// Backup and restore work on a stopped bot: its caches would not see a restore, and a backup
/// taken while it writes could catch a turn without its memories.
fn refuse_if_running(settings: &Settings, what: &str) -> anyhow::Result<()> {
    if let Some((file, true)) = status::read(&settings.storage.data_dir) {
        anyhow::bail!(
            "whisperengine pid {} is running on {}; stop it before you {what}",
            file.pid,
            settings.storage.data_dir.display()
        );
    }
    Ok(())
}

fn actix_system() -> actix::SystemRunner {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn discord(cli: &Cli) -> anyhow::Result<ExitCode> {
    let (settings, characters) = load(cli)?;
    if settings.discord.tokens.is_empty() {
        anyhow::bail!(
            "no Discord bot configured: set discord.tokens.<character> (e.g. WHISPER__DISCORD__TOKENS__ARIA)"
        );
    }
    telemetry::init(&settings.logging, LogTarget::Stderr).context("setting up logging")?;
    actix_system().block_on(async move {
        let app = App::start(settings.clone(), characters).await?;
        let bots = match discord::start(&app, &settings).await {
            Ok(bots) => bots,
            Err(error) => {
                app.shutdown().await;
                return Err(error.into());
            }
        };
        tokio::select! {
            () = whisperengine::transport::wait_for_shutdown() => {}
            () = reload_on_sighup(&app, overrides(cli)) => {}
        }
        bots.shutdown().await;
        app.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn chat(cli: &Cli, character: Option<String>, user: Option<String>) -> anyhow::Result<ExitCode> {
    let (settings, characters) = load(cli)?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let log_file = settings.storage.data_dir.join("whisperengine.log");
    let target = if interactive {
        LogTarget::File(&log_file)
    } else {
        LogTarget::Stderr
    };
    telemetry::init(&settings.logging, target).context("setting up logging")?;
    let character = character
        .clone()
        .unwrap_or_else(|| settings.characters.default.clone());
    if characters.get(&character).is_none() {
        anyhow::bail!(
            "unknown character {character:?} (have: {})",
            characters.ids().collect::<Vec<_>>().join(", ")
        );
    }
    let user = user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "local".to_owned());
    let options = ChatOptions {
        character,
        display_name: user.clone(),
        user,
        interactive,
    };
    if interactive {
        eprintln!("starting… (logs: {})", log_file.display());
    }
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    system.block_on(async move {
        let app = App::start(settings, characters).await?;
        let result = tokio::select! {
            result = console::run(&app, options) => result,
            () = reload_on_sighup(&app, overrides(cli)) => Ok(()),
        };
        app.shutdown().await;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Applies a reload on every SIGHUP, for as long as the bot runs (never returns unless the
/// signal cannot be listened for).
async fn reload_on_sighup(app: &App, source: Overrides) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; `whisperengine reload` will not work");
        return std::future::pending().await;
    };
    while hup.recv().await.is_some() {
        app.reload(&source).await;
    }
    std::future::pending().await
}

/// `whisperengine reload`: validates here first (a broken file never reaches the bot), then
/// signals the running process and prints the outcome it writes.
fn reload(cli: &Cli) -> anyhow::Result<ExitCode> {
    use whisperengine::app::reload::ReloadOutcome;
    let settings = match config::load(&overrides(cli)) {
        Ok(loaded) => loaded.settings,
        Err(error) => {
            println!("reload rejected, nothing changed: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let dir = &settings.storage.data_dir;
    let Some((file, true)) = status::read(dir) else {
        anyhow::bail!("no running whisperengine reports to {}", dir.display());
    };
    let before = ReloadOutcome::read(dir).map(|o| (o.attempt, o.at_ms));
    // SAFETY: kill(2) with a pid from the status file and a signal number; no memory involved.
    if unsafe { libc::kill(file.pid as libc::pid_t, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal pid {}: {}",
            file.pid,
            std::io::Error::last_os_error()
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Some(outcome) = ReloadOutcome::read(dir)
            && Some((outcome.attempt, outcome.at_ms)) != before
        {
            print!("{outcome}");
            if !outcome.to_string().ends_with('\n') {
                println!();
            }
            return Ok(if outcome.applied {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("pid {} did not answer the reload within 60 s", file.pid)
}

/// A cluster worker (consumes its partitions and answers them) or jobs member (background jobs
/// only): no transport of its own, until Ctrl-C or SIGTERM; a worker hands its partitions over
/// before it stops.
#[cfg(not(feature = "server"))]
fn cluster_member(cli: &Cli) -> anyhow::Result<ExitCode> {
    // `config::load` refuses `cluster.role` in this build before we get here.
    load(cli)?;
    anyhow::bail!("cluster.role needs the server backends, which this build leaves out")
}

#[cfg(feature = "server")]
fn cluster_member(cli: &Cli) -> anyhow::Result<ExitCode> {
    let (settings, characters) = load(cli)?;
    telemetry::init(&settings.logging, LogTarget::Stderr).context("setting up logging")?;
    actix_system().block_on(async move {
        let app = App::start(settings.clone(), characters).await?;
        let node = whisperengine::cluster::node_id(&settings.cluster.node_id);
        let worker = if settings.cluster.role == whisperengine::config::ClusterRole::Worker {
            let pool = whisperengine::store::redis::jobs::pool(
                settings.storage.redis_url.expose(),
                settings.pools.redis,
                settings.storage.connect_timeout,
            )
            .await?;
            let membership = whisperengine::cluster::membership::Membership::new(
                pool,
                &settings.storage.redis_prefix,
                &node,
                settings.cluster.member_ttl,
            );
            Some(
                whisperengine::cluster::worker::start(
                    whisperengine::cluster::worker::Runtime {
                        router: app.router(),
                        control: app.control(),
                        max_turns: settings.worker_turns(),
                    },
                    &settings.cluster,
                    membership,
                    node.clone(),
                    &settings.storage.redis_prefix,
                    app.cluster_status(),
                )
                .await?,
            )
        } else {
            None
        };
        tracing::info!(node, role = ?settings.cluster.role, "cluster member running");
        tokio::select! {
            () = whisperengine::transport::wait_for_shutdown() => {}
            () = reload_on_sighup(&app, overrides(cli)) => {}
        }
        if let Some(worker) = worker {
            worker.leave().await;
        }
        app.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
