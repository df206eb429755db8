//! `cedargate keys ...` (the embedded issuer's signing keys) and `cedargate dynamodb ...`
//! (the distributed stores' tables).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use token_proxy::cache::dynamodb::{DynamoStore, TableCreation};

use crate::config::Config;
use crate::serve;

/// A retired key is kept this much longer than the longest token lifetime (clock skew,
/// tokens minted just before the rotation).
const RETIRE_GRACE: Duration = Duration::from_secs(300);

/// Where the keys are.
#[derive(Args)]
pub struct KeyArgs {
    /// Configuration file [default: config/cedargate.toml, or the built-in copy without it]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (its `keys/` holds the signing keys).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key (it signs from now on; a running gateway picks it up within
    /// seconds). Earlier keys stay published until every token they signed has expired,
    /// then this command removes them.
    Rotate(KeyArgs),
    /// List the published keys, the signer first.
    List(KeyArgs),
}

#[derive(Subcommand)]
pub enum DynamoDbCommand {
    /// Create the token cache table and the backend's table (on-demand capacity, TTL clean-up
    /// on `ttl`) unless they exist. Safe to run again.
    CreateTables {
        /// Configuration file (its `[dynamodb]` section).
        #[arg(long, default_value = crate::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Run a `keys` command against the data dir's key directory.
pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let (KeysCommand::Rotate(args) | KeysCommand::List(args)) = &command;
    let data_dir = args.data_dir.as_path();
    let (cfg, _) = crate::config::embedded::resolve(args.config.as_deref(), data_dir)?;
    serve::prepare_data_dir(data_dir)?;
    let issuer = serve::required_issuer(&cfg, args.config.as_deref(), data_dir)?;
    match command {
        KeysCommand::List(_) => {
            for (i, kid) in issuer.kids().iter().enumerate() {
                println!("{kid}{}", if i == 0 { "  (signing)" } else { "" });
            }
        }
        KeysCommand::Rotate(_) => {
            let old = issuer.current_kid();
            issuer.rotate_key().map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("signing key: {} (was {old})", issuer.current_kid());
            let keep = Duration::from_secs(issuer.max_token_ttl_seconds()) + RETIRE_GRACE;
            let removed = issuer
                .prune_retired_keys(keep)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for file in &removed {
                println!("removed retired key {file} (all its tokens have expired)");
            }
            println!(
                "published keys: {} (retired keys stay {} s after their successor)",
                issuer.kids().len(),
                keep.as_secs()
            );
        }
    }
    Ok(())
}

/// Run a `dynamodb` command against the config's `[dynamodb]` settings.
pub fn dynamodb(command: DynamoDbCommand) -> anyhow::Result<()> {
    match command {
        DynamoDbCommand::CreateTables { config } => {
            let cfg = Config::load(&config)?;
            let settings = cfg.dynamodb.token_store();
            let store = DynamoStore::connect(&settings)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let outcome = runtime.block_on(store.create_table())?;
            let what = match outcome {
                TableCreation::Created => "created",
                TableCreation::AlreadyExisted => "already existed",
            };
            println!(
                "token cache table {}: {what}; TTL clean-up on `ttl`",
                settings.table
            );
            let settings = cfg.dynamodb.backend_store();
            let client = token_proxy::cache::dynamodb::client(&settings)?;
            runtime
                .block_on(backend::create_table(&client, &settings.table))
                .map_err(|e| anyhow::anyhow!("backend table {}: {e}", settings.table))?;
            println!(
                "backend table {}: ready (key pk + sk); TTL clean-up on `ttl`",
                settings.table
            );
        }
    }
    Ok(())
}
