//! The `chatgate` command: parse the command line, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chatgate::app::Options;
use chatgate::config::Config;
use chatgate::{check, logging, server, tls};

/// Exit codes of SPEC section 2.
const EXIT_CHECK_FAILED: u8 = 1;
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "chatgate",
    version,
    about = "Signs Supabase dashboard users in to LibreChat"
)]
struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        env = "CHATGATE_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and try every dependency; exit 1 if one fails.
    Check,
    /// Verify or mint a chatgate token (troubleshooting).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write a self-signed development certificate and key.
    GenCert {
        /// Folder for cert.pem and key.pem.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names or IP addresses the certificate covers (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Verify a token minted by chatgate and print its claims or why it is invalid.
    Verify {
        /// The token (a JWT).
        jwt: String,
    },
    /// Mint a token with `librechat.jwt_secret`.
    Mint {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        email: String,
        #[arg(long = "org-domain")]
        org_domain: String,
        #[arg(long = "org-id", default_value = "")]
        org_id: String,
        #[arg(long = "org-name", default_value = "")]
        org_name: String,
        #[arg(long = "plan-type")]
        plan_type: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "user")]
        role: String,
    },
}

/// jemalloc: in a same-run A/B (wrk, 64 connections) 5 % less CPU per
/// request than glibc malloc and the same memory per idle connection;
/// mimalloc was as fast but held 30 % more per idle connection.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the
/// environment still overrides them): memory freed by parked connections
/// goes back to the system after about a second (default 10 s), and with
/// `MADV_DONTNEED` rather than `MADV_FREE`, whose pages stay counted in the
/// RSS until the kernel is short of memory.
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: &u8 = &b"dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::GenCert { out, hosts }) = &cli.command {
        return gen_cert(out, hosts);
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("chatgate: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // Single-threaded: `server::start` adds one more such runtime per CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The access lines a serving thread deferred (`proxy::log`).
        .on_thread_park(chatgate::proxy::flush_deferred)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => runtime.block_on(run_check(&config, &cli.config)),
        Some(Command::Token(command)) => token(&config, command),
        _ => runtime.block_on(run_proxy(config, cli.config.clone())),
    }
}

fn token(config: &Config, command: TokenCommand) -> ExitCode {
    use chatgate::librechat::token::{
        default_avatar, now, TokenClaims, TokenIssuer, TokenOrganization,
    };
    let issuer = TokenIssuer::new(
        config.librechat.jwt_secret.as_ref().map(|s| s.expose()),
        config.librechat.token_ttl,
    );
    match command {
        TokenCommand::Verify { jwt } => match issuer.verify(&jwt) {
            Ok(claims) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&claims).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("chatgate: {error}");
                ExitCode::from(EXIT_CHECK_FAILED)
            }
        },
        TokenCommand::Mint {
            sub,
            email,
            org_domain,
            org_id,
            org_name,
            plan_type,
            name,
            role,
        } => {
            let local = email.split('@').next().unwrap_or_default().to_owned();
            let name = name.unwrap_or_else(|| local.clone());
            let iat = now();
            let claims = TokenClaims {
                id: sub.clone(),
                sub,
                email,
                avatar: default_avatar(&name),
                name,
                username: local,
                role,
                provider: "supabase".to_owned(),
                organization: TokenOrganization {
                    id: org_id,
                    name: org_name,
                    domain: org_domain,
                    plan_type,
                    librechat_config: None,
                },
                iat,
                exp: iat + config.librechat.token_ttl.as_secs() as i64,
            };
            match issuer.sign(&claims) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("chatgate: {error}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
    }
}

async fn run_check(config: &Config, path: &std::path::Path) -> ExitCode {
    let lines = check::run(config, path).await;
    for line in &lines {
        println!("{line}");
    }
    if lines.iter().all(|l| l.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHECK_FAILED)
    }
}

async fn run_proxy(config: Config, path: PathBuf) -> ExitCode {
    let _flush_logs_at_exit = logging::init(&config.log);
    if let Some(endpoint) = chatgate::trace::export::init_from_env() {
        tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let options = Options {
        config_path: Some(path),
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Options::default()
    };
    let running = match server::start(config, options).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("chatgate: {error}");
            return ExitCode::from(match error {
                server::StartError::Bind { .. } => EXIT_CHECK_FAILED,
                _ => EXIT_BAD_CONFIG,
            });
        }
    };
    let result = server::run_until_signalled(running).await;
    // Before the log's flush at exit: the lines this thread deferred.
    chatgate::proxy::stop_deferring();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatgate: {error}");
            ExitCode::FAILURE
        }
    }
}

fn gen_cert(out: &std::path::Path, hosts: &[String]) -> ExitCode {
    tls::install_crypto_provider();
    let hosts: Vec<String> = if hosts.is_empty() {
        tls::DEV_HOSTS.iter().map(|h| (*h).to_owned()).collect()
    } else {
        hosts.to_vec()
    };
    let cert = out.join("cert.pem");
    let key = out.join("key.pem");
    match tls::write_self_signed(&cert, &key, &hosts) {
        Ok(()) => {
            println!(
                "wrote {} and {} for {}",
                cert.display(),
                key.display(),
                hosts.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("chatgate: {error}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}
