//! `cedargate policy ...`: offline policy tools (validate, format, authorize, test, replay).
//! Nothing here needs a running gateway; every decision goes through the gateway's own
//! route table, request mapping and `authz::decide`, so what an admin checks offline is what
//! production decides.
//!
//! Exit codes (the same for every subcommand):
//! - 0: ok (valid, formatted, allowed, every case passed, no decision changed);
//! - 1: the command could not do its job (unreadable input, invalid policies, bad JSON);
//! - 2: command-line usage error (from clap);
//! - 3: the command ran and the answer is "no": validation errors, files that need
//!   formatting, a request that is not allowed, failing cases (or uncovered policies with
//!   `--fail-on-uncovered`), decisions that a replay changes.

/// `println!` that ignores a closed stdout (`cedargate policy test | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod authorize;
mod cases;
mod format;
mod replay;
mod runtests;
mod simulate;
mod test;
mod validate;

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use crate::authz::PolicyBundle;

/// Exit code of a command that ran and answered "no" (see the module docs).
pub const EXIT_NO: u8 = 3;

/// A command's outcome that is not an error but must leave a non-zero exit code; what it
/// means has already been printed.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

const DEFAULT_DIR: &str = "policies";

/// `cedargate policy <command>`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate a policy directory: syntax, strict schema validation, and the
    /// route table against the schema's actions. Errors print as `file:line:col: message`.
    Validate {
        /// Policy directory (schema.cedarschema, routes.toml, *.cedar).
        #[arg(default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Format every *.cedar file with Cedar's own formatter.
    Format {
        /// Write nothing; list the files that would change and exit 3 if there are any.
        #[arg(long)]
        check: bool,
        /// Directory searched (recursively) for *.cedar files.
        #[arg(default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Explain one decision: an HTTP request plus token claims (through the gateway's
    /// mapping), or a raw Cedar request. Exit 0 if allowed, 3 if not.
    Authorize(authorize::Args),
    /// Run the test cases in <DIR>/tests (HTTP-level cases and Cedar `run-tests` files) and
    /// report coverage: the policies that never determined a decision.
    Test(test::Args),
    /// Re-decide the requests of an audit log with a candidate policy set and list every
    /// decision that would change. Exit 0 if none would, 3 if some would.
    Replay(replay::Args),
}

/// Run one `policy` subcommand. A negative answer is returned as an [`Exit`] error.
pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
    let ok = match command {
        PolicyCommand::Validate { dir, format } => validate::run(&dir, format)?,
        PolicyCommand::Format { check, dir } => format::run(&dir, check)?,
        PolicyCommand::Authorize(args) => authorize::run(&args)?,
        PolicyCommand::Test(args) => test::run(&args)?,
        PolicyCommand::Replay(args) => replay::run(&args)?,
    };
    if ok {
        Ok(())
    } else {
        Err(Exit(EXIT_NO).into())
    }
}

/// Load a policy directory for a command that needs a valid one.
fn load_bundle(dir: &Path) -> anyhow::Result<PolicyBundle> {
    PolicyBundle::load(dir).map_err(|errors| {
        anyhow::anyhow!(
            "{} is not a valid policy directory (run `cedargate policy validate {}`):\n{}",
            dir.display(),
            dir.display(),
            errors.join("\n")
        )
    })
}

/// Print a JSON document on stdout.
fn print_json(value: &serde_json::Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
