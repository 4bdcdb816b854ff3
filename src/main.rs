//! The `msys-milter` command: run the daemon, explain a message, check a configuration.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use msys_milter::Daemon;
use msys_milter::config::{Config, SocketSpec};
use msys_milter::events::EventType;
use msys_milter::events::sink::Sinks;
use msys_milter::explain::explain;
use msys_milter::ids::IdGenerator;
use msys_milter::milter::BoundSocket;
use msys_milter::store::{Store, SuppressionFilter, SuppressionType};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// SparkPost's X-MSYS-API SMTP-injection features for Postfix and Sendmail, as a milter.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); without it the built-in defaults apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen here instead of the configured socket: `inet:HOST:PORT` or `unix:/path`.
    #[arg(long, value_name = "SPEC")]
    socket: Option<SocketSpec>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the milter would do with a message read from standard input: the exact
    /// SMTP reply (exit status 1) or the plan as JSON (exit status 0).
    Explain {
        /// MAIL FROM address (default: the From: header's address).
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
        /// RCPT TO address; repeat for several (default: the To: header's addresses).
        #[arg(long, value_name = "ADDR")]
        rcpt: Vec<String>,
        /// SMTP AUTH user, e.g. `SMTP_Injection:X-MSYS-SUBACCOUNT=123`.
        #[arg(long, value_name = "USER")]
        auth_user: Option<String>,
    },
    /// Check a configuration file and exit: 0 when valid, 1 with the problem otherwise.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// The suppression list (works while the daemon runs).
    Suppression {
        #[command(subcommand)]
        action: SuppressionCmd,
    },
    /// Stored events.
    Events {
        #[command(subcommand)]
        action: EventsCmd,
    },
    /// Webhook (and JSONL file) delivery.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksCmd,
    },
    /// Write the manual pages (roff, section 8: this command and each subcommand),
    /// generated from the options, into a directory.
    #[command(hide = true)]
    Manpage {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Make a DKIM key: write the private key (PEM, mode 0600) and print the DNS TXT
    /// record to publish and the [[dkim_key]] table to add.
    DkimKeygen {
        /// The signing domain (`d=`).
        #[arg(long)]
        domain: String,
        /// The selector (`s=`).
        #[arg(long)]
        selector: String,
        /// Ed25519 instead of RSA-2048 (RFC 8463; not every verifier knows it yet).
        #[arg(long)]
        ed25519: bool,
        /// Where to write the key (default: `<selector>.<domain>.pem` here). An existing
        /// file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Keys for the REST API ([api]).
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyAction,
    },
}

#[derive(Subcommand)]
enum ApiKeyAction {
    /// Make a key: print it once, and the [[api_key]] table to add (which holds only its
    /// SHA-256).
    New {
        /// A name for the key (who uses it), unique in the configuration.
        #[arg(long)]
        name: String,
        /// Comma-separated grants: suppression_lists/manage, suppression_lists/view,
        /// message_events/view, metrics/view, webhooks/view, webhooks/modify.
        #[arg(long, value_delimiter = ',', required = true, value_parser = parse_grant)]
        grants: Vec<msys_milter::config::Grant>,
        /// Limit the key to this subaccount.
        #[arg(long, value_name = "ID")]
        subaccount: Option<u64>,
    },
}

fn parse_grant(s: &str) -> Result<msys_milter::config::Grant, String> {
    msys_milter::config::Grant::try_from(s.to_owned())
}

/// `api-key new`: the key on standard output's first line, then the TOML to add.
fn api_key_new(
    name: &str,
    grants: &[msys_milter::config::Grant],
    subaccount: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let (key, hash) =
        msys_milter::rest::auth::new_key().context("cannot read random bytes from /dev/urandom")?;
    let grants: Vec<String> = grants
        .iter()
        .map(|g| format!("\"{}\"", g.as_str()))
        .collect();
    println!("{key}");
    eprintln!(
        "The key above is shown once; msys-milter keeps only its SHA-256. Add this to the configuration and reload (SIGHUP):"
    );
    println!();
    println!("[[api_key]]");
    println!("name = {}", toml::Value::String(name.to_owned()));
    println!("key_sha256 = \"{hash}\"");
    println!("grants = [{}]", grants.join(", "));
    if let Some(id) = subaccount {
        println!("subaccount = {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Which entries a suppression verb works on.
#[derive(clap::Args)]
struct Scope {
    /// `transactional` or `non_transactional`.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    kind: Option<SuppressionType>,
    /// A subaccount id; without it the main account.
    #[arg(long, value_name = "ID")]
    subaccount: Option<u64>,
}

fn parse_type(s: &str) -> Result<SuppressionType, String> {
    SuppressionType::parse(s)
        .ok_or_else(|| format!("`{s}`: use `transactional` or `non_transactional`"))
}

#[derive(Subcommand)]
enum SuppressionCmd {
    /// List entries (tab-separated).
    List {
        #[command(flatten)]
        scope: Scope,
        /// Every account, not only the main one (or --subaccount).
        #[arg(long)]
        all_accounts: bool,
    },
    /// Add recipients (`--type` is required).
    Add {
        #[arg(required = true, value_name = "RECIPIENT")]
        recipients: Vec<String>,
        #[command(flatten)]
        scope: Scope,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Remove a recipient (both types unless --type).
    Remove {
        recipient: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Import SparkPost's CSV (`recipient,type,description`; `-` reads standard input).
    Import {
        file: PathBuf,
        /// The type of rows that name none.
        #[command(flatten)]
        scope: Scope,
    },
    /// Export as SparkPost's CSV on standard output.
    Export {
        #[command(flatten)]
        scope: Scope,
        #[arg(long)]
        all_accounts: bool,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Print the last events as JSON lines (SparkPost batch items).
    Tail {
        /// Keep printing new events.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this event type (e.g. `click`).
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_event_type)]
        kind: Option<EventType>,
        /// How many past events to print first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
    },
    /// Queue stored events again for delivery (failed batches included).
    Replay {
        /// From when: Unix seconds, `2026-12-01T14:00:00Z`, or an age like `2h`.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// Only this configured webhook URL (default: every sink).
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
    },
}

fn parse_event_type(s: &str) -> Result<EventType, String> {
    EventType::parse(s).ok_or_else(|| {
        let names: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        format!("unknown event type `{s}`; known: {}", names.join(", "))
    })
}

#[derive(Subcommand)]
enum WebhooksCmd {
    /// Per webhook: pending events, failing since, last error.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_daemon(cli.config.as_deref(), cli.socket),
        Some(Command::Explain {
            from,
            rcpt,
            auth_user,
        }) => run_explain(
            cli.config.as_deref(),
            from.as_deref(),
            &rcpt,
            auth_user.as_deref(),
        ),
        Some(Command::CheckConfig { file }) => Config::read(&file)
            .map(|_| {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
        Some(Command::Manpage { out_dir }) => write_manpages(&out_dir),
        Some(Command::DkimKeygen {
            domain,
            selector,
            ed25519,
            out,
        }) => dkim_keygen(&domain, &selector, ed25519, out),
        Some(Command::ApiKey {
            action:
                ApiKeyAction::New {
                    name,
                    grants,
                    subaccount,
                },
        }) => api_key_new(&name, &grants, subaccount),
        Some(admin) => run_admin(cli.config.as_deref(), admin),
    };
    result.unwrap_or_else(|e| {
        eprintln!("msys-milter: {e:#}");
        ExitCode::FAILURE
    })
}

/// msys-milter(8) and msys-milter-<subcommand>(8) pages, so they never drift from the
/// options.
fn write_manpages(dir: &Path) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            write(sub, dir)?;
        }
        clap_mangen::Man::new(cmd)
            .section("8")
            .generate_to(dir)
            .map(|_| ())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write(cmd, dir).with_context(|| format!("cannot write the pages to {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// `msys-milter dkim-keygen`.
fn dkim_keygen(
    domain: &str,
    selector: &str,
    ed25519: bool,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{selector}.{domain}.pem")));
    let pem = msys_milter::dkim::generate_pem(ed25519)
        .map_err(|e| anyhow::anyhow!("cannot make the key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot create {} (it is never overwritten: remove it or pass --out)",
                path.display()
            )
        })?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let key = msys_milter::dkim::read_key(&path)?;
    let full = std::fs::canonicalize(&path).unwrap_or(path);
    // A TXT string holds at most 255 characters: longer records are split.
    let chunks: Vec<String> = key
        .txt
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    println!(
        "# Publish in DNS:\n{selector}._domainkey.{domain}. IN TXT ( {} )",
        chunks.join(" ")
    );
    println!(
        "\n# Add to msys-milter.toml:\n[[dkim_key]]\nname = \"{selector}.{domain}\"\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"",
        full.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::read(path)?),
        None => Ok(Config::default()),
    }
}

/// The admin verbs, on the configured store.
fn run_admin(config_path: Option<&Path>, command: Command) -> anyhow::Result<ExitCode> {
    use msys_milter::admin;
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = msys_milter::open_admin_store(&config, &host_name())?;
        let store: &dyn Store = store.as_ref();
        let mut stdout = std::io::stdout().lock();
        let filter = |scope: &Scope, all: bool| SuppressionFilter {
            kind: scope.kind,
            account: (!all || scope.subaccount.is_some()).then_some(scope.subaccount),
            recipient: None,
        };
        match command {
            Command::Suppression { action } => match action {
                SuppressionCmd::List {
                    scope,
                    all_accounts,
                } => {
                    let n =
                        admin::suppression_list(store, filter(&scope, all_accounts), &mut stdout)
                            .await?;
                    eprintln!("{n} entries");
                }
                SuppressionCmd::Add {
                    recipients,
                    scope,
                    description,
                } => {
                    let kind = scope.kind.context(
                        "say which list: --type transactional or --type non_transactional",
                    )?;
                    let n = admin::suppression_add(
                        store,
                        &recipients,
                        kind,
                        scope.subaccount,
                        &description,
                    )
                    .await?;
                    eprintln!("{n} added");
                }
                SuppressionCmd::Remove { recipient, scope } => {
                    let mut f = filter(&scope, false);
                    f.recipient = Some(recipient.clone());
                    let n = store.suppression_remove(f).await?;
                    if n == 0 {
                        eprintln!("{recipient} was not on the list");
                        return Ok(ExitCode::FAILURE);
                    }
                    eprintln!("{n} removed");
                }
                SuppressionCmd::Import { file, scope } => {
                    let input: Box<dyn std::io::Read + Send> = if file.as_os_str() == "-" {
                        Box::new(std::io::stdin())
                    } else {
                        Box::new(
                            std::fs::File::open(&file)
                                .with_context(|| format!("cannot open {}", file.display()))?,
                        )
                    };
                    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                        let bar = indicatif::ProgressBar::new_spinner();
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "{spinner} {pos} entries imported ({per_sec})",
                            )
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                        );
                        bar.enable_steady_tick(std::time::Duration::from_millis(200));
                        bar
                    } else {
                        indicatif::ProgressBar::hidden()
                    };
                    let started = std::time::Instant::now();
                    let n = admin::suppression_import(
                        store,
                        std::io::BufReader::new(input),
                        scope.kind,
                        scope.subaccount,
                        &bar,
                    )
                    .await
                    .with_context(|| format!("{}", file.display()))?;
                    bar.finish_and_clear();
                    eprintln!(
                        "{n} entries imported in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                SuppressionCmd::Export {
                    scope,
                    all_accounts,
                } => {
                    let n =
                        admin::suppression_export(store, filter(&scope, all_accounts), &mut stdout)
                            .await?;
                    eprintln!("{n} entries exported");
                }
            },
            Command::Events { action } => match action {
                EventsCmd::Tail {
                    follow,
                    kind,
                    lines,
                } => {
                    admin::events_tail(store, kind, lines, follow, &mut stdout).await?;
                }
                EventsCmd::Replay { since, webhook } => {
                    let now = msys_milter::ids::unix_secs();
                    let since = admin::parse_time(&since, now)
                        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
                    let sinks: Vec<String> = match &webhook {
                        Some(url) => {
                            let hook = config
                                .webhooks
                                .iter()
                                .find(|h| {
                                    &h.url == url || h.sink_name() == format!("webhook:{url}")
                                })
                                .with_context(|| {
                                    format!("no [[webhook]] with url `{url}` in the configuration")
                                })?;
                            vec![hook.sink_name()]
                        }
                        None => msys_milter::events::sink::all(&config, store)
                            .await?
                            .into_iter()
                            .map(|s| s.spec.name)
                            .collect(),
                    };
                    anyhow::ensure!(
                        !sinks.is_empty(),
                        "no [[webhook]] or [events] jsonl configured: nothing to replay to"
                    );
                    let n = store.replay(since, &sinks).await?;
                    eprintln!("{n} events queued again for {}", sinks.join(", "));
                }
            },
            Command::Webhooks {
                action: WebhooksCmd::Status,
            } => {
                store.set_sinks(
                    msys_milter::events::sink::all(&config, store)
                        .await?
                        .into_iter()
                        .map(|s| s.spec)
                        .collect(),
                );
                admin::webhooks_status(store, &mut stdout).await?;
            }
            Command::Explain { .. }
            | Command::CheckConfig { .. }
            | Command::DkimKeygen { .. }
            | Command::ApiKey { .. }
            | Command::Manpage { .. } => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn run_explain(
    config: Option<&Path>,
    from: Option<&str>,
    rcpts: &[String],
    auth_user: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let mut message = Vec::new();
    std::io::stdin()
        .read_to_end(&mut message)
        .context("cannot read the message from standard input")?;
    if message.iter().all(u8::is_ascii_whitespace) {
        anyhow::bail!(
            "no message on standard input: pipe one in, e.g. `msys-milter explain < message.eml`"
        );
    }
    Ok(match explain(&message, from, rcpts, auth_user, &config) {
        Err(reply) => {
            println!("{reply}");
            ExitCode::FAILURE
        }
        Ok(plan) => {
            println!("{}", serde_json::to_string_pretty(&plan)?);
            ExitCode::SUCCESS
        }
    })
}

fn run_daemon(config_path: Option<&Path>, socket: Option<SocketSpec>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, never in journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = load_config(config_path)?;
    if let Some(socket) = &socket {
        config.socket = socket.clone();
    }
    let config_path = config_path.map(|p| (p.to_owned(), socket));
    fit_to_descriptors(&mut config);
    if config.envelope.rewrite && config.bounce_domains().next().is_none() {
        tracing::warn!(
            "no bounce domain configured ([envelope] bounce_domain or a sending domain's \
             bounce_domain): MAIL FROM is left unchanged"
        );
    }
    // One worker by default (see `worker_threads`): heavy work leaves it through
    // `blocking::heavy`, which needs the multi-thread runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.0)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let socket = match BoundSocket::bind(&config.socket).await {
            Ok(socket) => socket,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(anyhow::Error::from(e)
                    .context("is another milter running? pick another socket with --socket"));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(socket = %config.socket, "msys-milter {} listening", env!("CARGO_PKG_VERSION"));
        let (listener, _socket_file) = socket.into_parts();
        let store = msys_milter::open_daemon_store(&config, &host_name()).await?;
        let ids = Arc::new(IdGenerator::new(config.node_id.0));
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = start_http(&config, &store, &ids, http_stopped).await?;
        let sinks = Arc::new(tokio::sync::Mutex::new(
            start_sinks(&config, &store, &ids).await?,
        ));
        if let Some(path) = &config.feedback.mta_log {
            let follower = msys_milter::feedback::follow::Follower::new(
                path.clone(),
                Arc::clone(&store),
                Arc::clone(&ids),
                Arc::new(config.clone()),
            );
            tokio::spawn(follower.run(std::future::pending()));
        }
        let (stop_lmtp, lmtp_stopped) = tokio::sync::oneshot::channel::<()>();
        let lmtp = start_lmtp(&config, &store, &ids, lmtp_stopped).await?;
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api = start_api(&config, &store, api_stopped).await?;
        let daemon = Arc::new(Daemon::with_store(config, Arc::clone(&store), Arc::clone(&ids))?);
        tokio::spawn(prune_forever(Arc::clone(&store), Arc::clone(&daemon)));
        let api_reload = api.as_ref().map(|a| (Arc::clone(&a.state), a.certificate.clone()));
        if let Some(api) = &api {
            tokio::spawn(restart_sinks_on_change(
                Arc::clone(&api.state.webhooks_changed),
                Arc::clone(&daemon),
                (Arc::clone(&store), Arc::clone(&ids), Arc::clone(&sinks)),
            ));
        }
        if let Some(path) = config_path {
            tokio::spawn(reload_on_sighup(
                Arc::clone(&daemon),
                path,
                (Arc::clone(&store), Arc::clone(&ids), sinks),
                api_reload,
            ));
        }
        // Everything is up: tell systemd (Type=notify), when it is watching.
        notify_ready();
        daemon.run(listener, shutdown).await?;
        let _ = stop_http.send(());
        let _ = stop_lmtp.send(());
        let _ = stop_api.send(());
        if let Some(api) = api {
            let _ = api.task.await;
        }
        if let Some(lmtp) = lmtp {
            let _ = lmtp.await;
        }
        if let Some(http) = http {
            let _ = http.await;
        }
        tracing::info!("msys-milter stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Raise the descriptor limit to the hard limit and lower the listeners' caps to fit
/// it, with room for the store, webhooks and re-injection: a flood of clients on one
/// listener then meets that listener's cap, never the process's limit (which would
/// make the milter's own accepts fail). Never refuses to start for it.
fn fit_to_descriptors(config: &mut Config) {
    use msys_milter::connlimit::{Caps, fit, raise_nofile, reserve};
    let limit = match raise_nofile() {
        Ok(n) => {
            tracing::info!(
                soft = n.soft,
                hard = n.hard,
                soft_at_start = n.before,
                "descriptor limit (RLIMIT_NOFILE)"
            );
            n.soft
        }
        Err(e) => {
            tracing::warn!("cannot read the descriptor limit: {e}; assuming 1024");
            1024
        }
    };
    let lmtp = if config.feedback.lmtp.is_some() {
        config.feedback.max_connections.0
    } else {
        0
    };
    let wanted = Caps {
        milter: config.max_connections,
        http: config.http.max_connections.0,
        lmtp,
    };
    // The API's connections are few and its own cap holds them.
    let api = config
        .api
        .listen
        .as_ref()
        .map_or(0, |_| config.api.max_connections.0);
    let kept = reserve(config.reinject.concurrency, config.webhooks.len()) + api as u64;
    let caps = fit(wanted, limit, kept);
    if caps != wanted {
        tracing::warn!(
            descriptor_limit = limit,
            reserved = kept,
            milter = caps.milter,
            http = caps.http,
            lmtp = caps.lmtp,
            "the descriptor limit cannot hold the configured connection caps (milter {}, http {}, \
             lmtp {}): lowered to fit; raise LimitNOFILE (systemd) or `ulimit -n` to keep them",
            wanted.milter,
            wanted.http,
            wanted.lmtp
        );
    }
    config.max_connections = caps.milter;
    config.http.max_connections.0 = caps.http;
    if lmtp > 0 {
        config.feedback.max_connections.0 = caps.lmtp;
    }
}

/// Start the HTTP endpoint: tracking links when `[tracking] base_url` is configured,
/// and always /metrics and /healthz. Without tracking, a port already in use is only
/// a warning.
async fn start_http(
    config: &Config,
    store: &Arc<dyn Store>,
    ids: &Arc<IdGenerator>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let keys = config
        .tracking
        .base_url
        .as_ref()
        .and_then(|_| msys_milter::tracking::Keys::new(&config.tracking.secrets));
    let listen = &config.http.listen;
    let listener = match tokio::net::TcpListener::bind(listen.as_str()).await {
        Ok(l) => l,
        Err(e) if keys.is_none() => {
            tracing::warn!(listen = %listen, "no /metrics endpoint: cannot listen on {listen} ([http] listen): {e}");
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot listen on {listen} ([http] listen)"));
        }
    };
    match &config.tracking.base_url {
        Some(base_url) => {
            tracing::info!(listen = %listen, base_url = %base_url, "tracking endpoint listening")
        }
        None => {
            tracing::info!(listen = %listen, "metrics endpoint listening (no [tracking] base_url: no tracking links)")
        }
    }
    let state = Arc::new(msys_milter::http::HttpState {
        keys,
        sink: Arc::new(msys_milter::http::StoreSink {
            store: Arc::clone(store),
            ids: Arc::clone(ids),
        }),
        store: Some(Arc::clone(store)),
        metrics_from: config.http.metrics_from.clone(),
    });
    let shutdown = async {
        let _ = stopped.await;
    };
    let limits = msys_milter::http::Limits::from_config(&config.http);
    Ok(Some(tokio::spawn(msys_milter::http::serve(
        listener, state, limits, shutdown,
    ))))
}

/// The REST API's listener, and what a SIGHUP reloads of it.
struct ApiServer {
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: Arc<msys_milter::rest::ApiState>,
    certificate: Option<Arc<msys_milter::rest::tls::Certificate>>,
}

/// Start the REST API when `[api] listen` is set: HTTPS with the configured certificate
/// (plain HTTP only with `tls = false`).
async fn start_api(
    config: &Config,
    store: &Arc<dyn Store>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<ApiServer>> {
    use msys_milter::rest::{ApiState, router, tls::Certificate};
    let Some(listen) = &config.api.listen else {
        return Ok(None);
    };
    let certificate = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) if config.api.tls => Some(
            Certificate::load(cert, key)
                .context("cannot start the API ([api] tls_cert, tls_key)")?,
        ),
        _ => None,
    };
    let tls = certificate.as_ref().map(|c| c.acceptor()).transpose()?;
    let listener = tokio::net::TcpListener::bind(listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {listen} ([api] listen)"))?;
    if config.api_keys.is_empty() {
        tracing::warn!(
            "[api] listen is set but no [[api_key]] is configured: every request gets 401; make one with `msys-milter api-key new`"
        );
    }
    tracing::info!(listen = %listen, https = certificate.is_some(), keys = config.api_keys.len(), "REST API listening");
    let state = Arc::new(ApiState::new(config, Arc::clone(store)));
    let limits = msys_milter::http::Limits {
        max_connections: config.api.max_connections.0,
        max_body_bytes: config.api.max_body_bytes.0,
        ..msys_milter::http::Limits::from_config(&config.http)
    };
    let shutdown = async {
        let _ = stopped.await;
    };
    let task = tokio::spawn(msys_milter::http::serve_router(
        listener,
        router(Arc::clone(&state)),
        limits,
        tls,
        "api",
        shutdown,
    ));
    Ok(Some(ApiServer {
        task,
        state,
        certificate,
    }))
}

/// `READY=1` to `$NOTIFY_SOCKET` (systemd's sd_notify protocol: one datagram; a name
/// starting with `@` is in the abstract namespace). Without the variable: nothing.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(b"READY=1", &address)
    });
    if let Err(e) = sent {
        tracing::warn!(notify_socket = %path, "cannot tell systemd we are ready: {e}");
    }
}

/// Start the LMTP listener for the bounce domains' mail when `[feedback] lmtp` is set.
async fn start_lmtp(
    config: &Config,
    store: &Arc<dyn Store>,
    ids: &Arc<IdGenerator>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use msys_milter::feedback::inbound::{Inbound, Keep, serve};
    let Some(spec) = &config.feedback.lmtp else {
        return Ok(None);
    };
    let socket = BoundSocket::bind_as(&spec.0, "lmtp")
        .await
        .with_context(|| "cannot start the LMTP listener ([feedback] lmtp)")?;
    let hostname = host_name();
    let our_mtas = if config.feedback.reporting_mta.is_empty() {
        vec![hostname.clone()]
    } else {
        config.feedback.reporting_mta.clone()
    };
    let keep_dir = config.feedback.keep_dir.clone().unwrap_or_else(|| {
        let store_path = config
            .store
            .path
            .clone()
            .unwrap_or_else(|| msys_milter::store::default_path().0);
        store_path.parent().map_or_else(
            || PathBuf::from("feedback-unread"),
            |d| d.join("feedback-unread"),
        )
    });
    if config.bounce_domains().next().is_none() {
        tracing::warn!(
            "[feedback] lmtp is set but no bounce domain is configured: every recipient will be refused"
        );
    }
    let learnt = msys_milter::feedback::stored_mta_names(store.as_ref())
        .await
        .unwrap_or_default();
    tracing::info!(lmtp = %spec.0, reporting_mta = ?our_mtas, learnt_from_the_mta = ?learnt, keep_dir = %keep_dir.display(), "feedback LMTP listener running: DSNs from these names are in-band bounces (the MTA's own name is learnt from its first message)");
    let inbound = Arc::new(Inbound {
        config: Arc::new(config.clone()),
        store: Arc::clone(store),
        ids: Arc::clone(ids),
        our_mtas,
        keep: Keep {
            dir: keep_dir,
            max: config.feedback.keep_max,
        },
        log_reports_delays: config.feedback.mta_log.is_some(),
    });
    let stop = async {
        let _ = stopped.await;
    };
    Ok(Some(tokio::spawn(serve(
        socket,
        inbound,
        hostname,
        config.max_message_size,
        config.feedback.max_connections.0,
        stop,
    ))))
}

/// This machine's host name (what an MTA on it calls itself by default).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Forget delivered events after `[events] retention_days` and transmissions once their
/// links have expired; hourly.
async fn prune_forever(store: Arc<dyn Store>, daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let config = daemon.config();
        let now = msys_milter::ids::unix_secs();
        let events_before = now.saturating_sub(u64::from(config.events.retention_days) * 86_400);
        let transmissions_before =
            now.saturating_sub((u64::from(config.tracking.link_expiry_days) + 1) * 86_400);
        let counters_before =
            now.saturating_sub(config.api.metrics_retention_days.0 as u64 * 86_400);
        if let Err(e) = store.prune_counters(counters_before).await {
            tracing::error!("pruning the deliverability counters failed: {e}");
        }
        let ledger_before =
            now.saturating_sub(u64::from(config.reinject.dedupe_hours.max(1)) * 3600);
        if let Err(e) = store.prune_ledger(ledger_before).await {
            tracing::error!("pruning the ledger of copies failed: {e}");
        }
        match store.prune(events_before, transmissions_before).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "store pruned"),
            Ok(_) => {}
            Err(e) => tracing::error!("store pruning failed: {e}"),
        }
    }
}

/// The configured webhooks, those made through the REST API and the JSONL file as
/// sinks, delivering from now on.
async fn start_sinks(
    config: &Config,
    store: &Arc<dyn Store>,
    ids: &Arc<IdGenerator>,
) -> anyhow::Result<Sinks> {
    let sinks = msys_milter::events::sink::all(config, store.as_ref()).await?;
    for s in &sinks {
        tracing::info!(sink = %s.spec.name, "event sink");
    }
    Ok(Sinks::start(store, ids, sinks))
}

/// The running sinks, replaced when the webhooks change.
type SharedSinks = Arc<tokio::sync::Mutex<Sinks>>;

/// Start the sinks `config` and the stored webhooks ask for in place of the running
/// ones (a batch in flight is sent again under its id); on failure the old ones stay.
async fn restart_sinks(
    config: &Config,
    (store, ids, sinks): (&Arc<dyn Store>, &Arc<IdGenerator>, &SharedSinks),
    why: &str,
) {
    match start_sinks(config, store, ids).await {
        Ok(new) => {
            let mut running = sinks.lock().await;
            running.stop();
            *running = new;
        }
        Err(e) => tracing::error!("{why}: keeping the running sinks: {e:#}"),
    }
}

/// Restart the sinks whenever a webhook is made, changed or removed through the API.
async fn restart_sinks_on_change(
    changed: Arc<tokio::sync::Notify>,
    daemon: Arc<Daemon>,
    (store, ids, sinks): (Arc<dyn Store>, Arc<IdGenerator>, SharedSinks),
) {
    loop {
        changed.notified().await;
        restart_sinks(&daemon.config(), (&store, &ids, &sinks), "webhooks changed").await;
    }
}

/// Re-read the configuration file on SIGHUP; a bad file is logged and the running
/// configuration stays. Sinks restart with the new list (a batch in flight is sent
/// again under its id); the JSONL file is reopened at every batch anyway.
async fn reload_on_sighup(
    daemon: Arc<Daemon>,
    (path, socket): (PathBuf, Option<SocketSpec>),
    (store, ids, sinks): (Arc<dyn Store>, Arc<IdGenerator>, SharedSinks),
    api: Option<(
        Arc<msys_milter::rest::ApiState>,
        Option<Arc<msys_milter::rest::tls::Certificate>>,
    )>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; restart to change the configuration");
        return;
    };
    while hup.recv().await.is_some() {
        match Config::read(&path) {
            Ok(mut config) => {
                if let Some(socket) = &socket {
                    config.socket = socket.clone();
                }
                restart_sinks(&config, (&store, &ids, &sinks), "SIGHUP").await;
                if let Some((state, certificate)) = &api {
                    state.reload(&config);
                    let files = config
                        .api
                        .tls_cert
                        .as_deref()
                        .zip(config.api.tls_key.as_deref());
                    if let Some(c) = certificate
                        && let Err(e) = c.reload(files)
                    {
                        tracing::error!("SIGHUP: keeping the API's certificate: {e}");
                    }
                }
                daemon.reload(config);
                tracing::info!(file = %path.display(), "configuration reloaded");
            }
            Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
        }
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed at once, so a signal that
/// comes while the daemon is still starting is not lost (nor fatal).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight messages"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight messages"),
        }
    }
}
