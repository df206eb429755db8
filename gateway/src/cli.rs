//! The `cedargate` command line: parses arguments and runs one command.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::{DEFAULT_CONFIG, auth_cli, bench, bench_http, bench_token, policy_cli, serve};

#[derive(Parser)]
#[command(
    name = "cedargate",
    version,
    about = "Policy-driven authorization and identity gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file [default: config/cedargate.toml, or the built-in copy without it]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (keys, embedded stores).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

impl Common {
    /// `--config`, or the default (see `config::embedded::resolve`); `true`: the embedded one.
    fn load_config(&self) -> anyhow::Result<(Config, bool)> {
        Ok(crate::config::embedded::resolve(
            self.config.as_deref(),
            &self.data_dir,
        )?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: api, auth and admin listeners (and the embedded backend).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address of the api listener (overrides listeners.api).
        #[arg(long)]
        api_addr: Option<SocketAddr>,
        /// Address of the auth listener (overrides listeners.auth).
        #[arg(long)]
        auth_addr: Option<SocketAddr>,
        /// Address of the admin listener (overrides listeners.admin).
        #[arg(long)]
        admin_addr: Option<SocketAddr>,
        /// Policy directory (overrides policies.dir).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Take over the listening sockets of a running instance (pingora graceful upgrade):
        /// start this, then send SIGQUIT to the old process (the embedded backend and its
        /// store are taken over once the old process has drained).
        #[arg(long)]
        upgrade: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Token tools.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Hash a client secret for the config (reads the secret from stdin).
    HashSecret,
    /// The embedded issuer's signing keys.
    Keys {
        #[command(subcommand)]
        command: auth_cli::KeysCommand,
    },
    /// DynamoDB tables of the distributed stores (the `[dynamodb]` config section).
    Dynamodb {
        #[command(subcommand)]
        command: auth_cli::DynamoDbCommand,
    },
    /// Offline policy tools: validate, format, authorize, test, replay.
    Policy {
        #[command(subcommand)]
        command: policy_cli::PolicyCommand,
    },
    /// Measurements for bench/ (see bench/README.md).
    #[command(hide = true)]
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Decision time: default pack, decision cache, 1,000 and 10,000 generated policies.
    Authz {
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Decisions measured per configuration.
        #[arg(long, default_value_t = 50_000)]
        iterations: usize,
    },
    /// WAF detection time per request: typical GET, 8 KB JSON body, an attack.
    Waf {
        /// Scans measured per request shape.
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
    },
    /// Token endpoint latency and requests/s over HTTP (bench/token_cache.sh).
    Token(bench_token::TokenBench),
    /// The embedded backend alone on TCP (bench/run.sh).
    Backend(bench_http::BackendArgs),
    /// The authorized GETs bench/run.sh drives wrk with: method, path, token, assertion.
    HttpMix(bench_http::MixArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and the policies it names, without serving.
    Check {
        /// Configuration file.
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an access token signed by the embedded issuer's current key.
    Mint {
        #[command(flatten)]
        common: Common,
        /// Claims as a JSON object; iss, iat, exp, jti and token_use are filled unless given.
        #[arg(long)]
        claims: String,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
}

/// JSON log lines to standard error, written in bursts off the request path (`lines`); the
/// server flushes them before it exits. `CEDARGATE_LOG`, when set, wins over `level`; either
/// can be changed at run time (`log_level`).
fn init_logging(level: &str) -> anyhow::Result<()> {
    let (filter, given) = match std::env::var("CEDARGATE_LOG") {
        Ok(env) => match tracing_subscriber::EnvFilter::try_new(&env) {
            Ok(filter) => (filter, env),
            Err(_) => (tracing_subscriber::EnvFilter::new(level), level.to_string()),
        },
        Err(_) => (tracing_subscriber::EnvFilter::new(level), level.to_string()),
    };
    let writer = crate::lines::LogWriter::stderr()
        .map_err(|e| anyhow::anyhow!("cannot start the log writer: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_writer(writer)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_ok() {
        crate::log_level::install(
            &given,
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())),
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            common,
            api_addr,
            auth_addr,
            admin_addr,
            policies,
            upgrade,
        } => {
            let (config, embedded) = common.load_config()?;
            init_logging(&config.log_level)?;
            if embedded {
                tracing::info!(
                    policies = %config.policies_dir.display(),
                    "no {DEFAULT_CONFIG} in the working directory: running with the embedded default config"
                );
            }
            serve::run(
                config,
                common.data_dir,
                serve::Overrides {
                    api_addr,
                    auth_addr,
                    admin_addr,
                    policies_dir: policies,
                    upgrade,
                },
            )
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(&file)?;
            let bundle = serve::load_policies(&config.policies_dir)?;
            println!(
                "{}: ok ({} policies, {} routes, policy version {})",
                file.display(),
                bundle.policies.policies().count(),
                bundle.routes.routes.len(),
                bundle.version
            );
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Mint {
                    common,
                    claims,
                    ttl,
                },
        } => {
            let (config, _) = common.load_config()?;
            let claims: serde_json::Value = serde_json::from_str(&claims)
                .map_err(|e| anyhow::anyhow!("--claims is not valid JSON: {e}"))?;
            let serde_json::Value::Object(claims) = claims else {
                anyhow::bail!("--claims must be a JSON object");
            };
            serve::prepare_data_dir(&common.data_dir)?;
            let issuer =
                serve::required_issuer(&config, common.config.as_deref(), &common.data_dir)?;
            println!(
                "{}",
                issuer
                    .mint(claims, ttl)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            );
            Ok(())
        }
        Command::Bench {
            command:
                BenchCommand::Authz {
                    policies,
                    iterations,
                },
        } => bench::authz(&policies, iterations.max(1)),
        Command::Bench {
            command: BenchCommand::Token(b),
        } => bench_token::run(b),
        Command::Bench {
            command: BenchCommand::Waf { iterations },
        } => crate::bench_waf::waf(iterations.max(1)),
        Command::Bench {
            command: BenchCommand::Backend(args),
        } => bench_http::backend(args),
        Command::Bench {
            command: BenchCommand::HttpMix(args),
        } => bench_http::mix(args),
        Command::Policy { command } => policy_cli::run(command),
        Command::Keys { command } => auth_cli::keys(command),
        Command::Dynamodb { command } => auth_cli::dynamodb(command),
        Command::HashSecret => {
            let mut secret = String::new();
            std::io::stdin().read_to_string(&mut secret)?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                anyhow::bail!("give the secret on stdin");
            }
            println!(
                "{}",
                token_proxy::hash_secret(secret).map_err(|e| anyhow::anyhow!("{e}"))?
            );
            Ok(())
        }
    }
}

/// Runs the command line and turns its outcome into the process exit code.
pub fn main() -> ExitCode {
    let result = run(Cli::parse());
    // Log lines still queued (a start that failed after logging began).
    crate::lines::flush_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<policy_cli::Exit>() {
            // A policy command's "no" (see policy_cli): already reported, only the code is left.
            Some(policy_cli::Exit(code)) => ExitCode::from(*code),
            None => {
                eprintln!("cedargate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
