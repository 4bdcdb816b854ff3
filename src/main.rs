//! The `msys-milter` command: run the daemon, explain a message, check a configuration.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use msys_milter::Daemon;
use msys_milter::config::{Config, SocketSpec};
use msys_milter::explain::explain;
use msys_milter::milter::BoundSocket;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    };
    result.unwrap_or_else(|e| {
        eprintln!("msys-milter: {e:#}");
        ExitCode::FAILURE
    })
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::read(path)?),
        None => Ok(Config::default()),
    }
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
    if config.envelope.rewrite && config.bounce_domains().next().is_none() {
        tracing::warn!(
            "no bounce domain configured ([envelope] bounce_domain or a sending domain's \
             bounce_domain): MAIL FROM is left unchanged"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let socket = BoundSocket::bind(&config.socket)
            .await
            .with_context(|| "is another milter running? pick another socket with --socket")?;
        tracing::info!(socket = %config.socket, "msys-milter {} listening", env!("CARGO_PKG_VERSION"));
        let (listener, _socket_file) = socket.into_parts();
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = start_http(&config, http_stopped).await?;
        let daemon = std::sync::Arc::new(Daemon::new(config)?);
        if let Some(path) = config_path {
            tokio::spawn(reload_on_sighup(std::sync::Arc::clone(&daemon), path));
        }
        daemon.run(listener, shutdown_signal()).await?;
        let _ = stop_http.send(());
        if let Some(http) = http {
            let _ = http.await;
        }
        tracing::info!("msys-milter stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Start the tracking endpoint when `[tracking] base_url` is configured.
async fn start_http(
    config: &Config,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let (Some(base_url), Some(keys)) = (
        &config.tracking.base_url,
        msys_milter::tracking::Keys::new(&config.tracking.secrets),
    ) else {
        return Ok(None);
    };
    let listen = &config.http.listen;
    let listener = tokio::net::TcpListener::bind(listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {listen} ([http] listen)"))?;
    tracing::info!(listen = %listen, base_url = %base_url, "tracking endpoint listening");
    let state = std::sync::Arc::new(msys_milter::http::HttpState {
        keys,
        sink: std::sync::Arc::new(msys_milter::http::LogSink),
    });
    let shutdown = async {
        let _ = stopped.await;
    };
    Ok(Some(tokio::spawn(msys_milter::http::serve(
        listener, state, shutdown,
    ))))
}

/// Re-read the configuration file on SIGHUP; a bad file is logged and the running
/// configuration stays.
async fn reload_on_sighup(
    daemon: std::sync::Arc<Daemon>,
    (path, socket): (PathBuf, Option<SocketSpec>),
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
                daemon.reload(config);
                tracing::info!(file = %path.display(), "configuration reloaded");
            }
            Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight messages"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight messages"),
    }
}
