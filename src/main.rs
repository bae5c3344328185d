//! The `cradle` binary: `cradle server` runs a node; every other subcommand
//! is a client of a node's API.

use clap::Parser as _;
use cradle::cli::{Cli, Command};
use cradle::config::{LogFormat, ServerSettings};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) | Command::Init(args) => serve(args.into_settings()).await,
            Command::Join(args) => {
                init_logging(args.settings.log_format);
                cradle::tls::install_crypto_provider();
                // A port conflict is found before the join spends the token.
                let bound = cradle::server::Bound::bind(&args.settings).await?;
                cradle::cluster::join::join(
                    &args.settings,
                    &args.join_token,
                    &args.ca_hash,
                    &args.url,
                )
                .await?;
                serve_logged(args.settings, Some(bound)).await
            }
            other => cradle::cli::run(other, cli.client).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: ServerSettings) -> anyhow::Result<()> {
    init_logging(settings.log_format);
    serve_logged(settings, None).await
}

/// Runs a node until SIGTERM or Ctrl-C (then exits 0 once it has stopped),
/// or until one of its services fails (then stops it and exits non-zero with
/// the reason). A start that fails has already stopped what it started.
async fn serve_logged(
    settings: ServerSettings,
    bound: Option<cradle::server::Bound>,
) -> anyhow::Result<()> {
    let mut running = match bound {
        Some(bound) => cradle::server::start_bound(settings, bound).await?,
        None => cradle::server::start(settings).await?,
    };
    if let Some(password) = &running.generated_admin_password {
        // Printed once, on the first start only; it is not stored in clear.
        println!("Created user `admin` with password: {password}");
    }
    println!("CA fingerprint: {}", running.ca_fingerprint);
    println!(
        "Log in with: cradle login https://{} --user admin --ca-hash {}",
        running.api_addr, running.ca_fingerprint
    );
    let failed = tokio::select! {
        () = wait_for_signal() => None,
        failure = running.failed() => Some(failure),
    };
    tracing::info!("shutting down");
    running.shutdown().await;
    match failed {
        None => Ok(()),
        Some(failure) => Err(anyhow::anyhow!(
            "the {} service stopped: {}",
            failure.name,
            failure.error
        )),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CRADLE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let colour = cradle::config::use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second call (join, then serve) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
