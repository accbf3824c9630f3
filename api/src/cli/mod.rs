//! The operators' commands of the `kodomasu` binary: `kodomasu workflows …` against a running
//! server's admin API, and `kodomasu config …` for the settings file.
//!
//! ```text
//! export KODOMASU_SERVER=http://127.0.0.1:8080 KODOMASU_TOKEN=kdm_…
//! kodomasu workflows list --status running
//! kodomasu workflows show 0193…
//! kodomasu workflows signal 0193… pause
//! kodomasu config init --profile production --output /etc/kodomasu.toml
//! ```

pub mod client;
pub mod config;
mod render;
mod workflows;

use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

pub use client::{ApiClient, CliError, Token};
pub use workflows::run as run_workflows;

/// Where the admin API is and how to authenticate; shared by every `workflows` command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the kodomasu server.
    #[arg(
        long,
        env = "KODOMASU_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Admin API token, sent as `Authorization: Bearer`; never printed.
    #[arg(long, env = "KODOMASU_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Token>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `kodomasu workflows …`.
#[derive(Debug, Args)]
pub struct WorkflowsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: WorkflowsCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// List workflows, newest first.
    List(ListArgs),
    /// Show one workflow and what it waits on.
    Show {
        /// Workflow id.
        id: String,
    },
    /// Print a workflow's journal.
    History(HistoryArgs),
    /// Send a signal: pause, resume, cancel, or a workflow's own signal.
    Signal {
        /// Workflow id.
        id: String,
        /// `pause`, `resume`, `cancel`, or the name of a custom signal.
        name: String,
        /// JSON payload of the signal, e.g. `'{"reason":"maintenance"}'`.
        #[arg(long)]
        payload: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only workflows with this status: running, paused, completed, failed, cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Only workflows of this type, e.g. `demo.chain` or `paid_job`.
    #[arg(long = "type", value_name = "TYPE")]
    pub workflow_type: Option<String>,
    /// Only paid jobs of this flow (its uid).
    #[arg(long)]
    pub flow: Option<String>,
    /// Only workflows created at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long)]
    pub created_after: Option<String>,
    /// Only workflows created before this time (RFC 3339).
    #[arg(long)]
    pub created_before: Option<String>,
    /// Key substring or id prefix.
    #[arg(long = "search", short = 'q', value_name = "TEXT")]
    pub search: Option<String>,
    /// Rows per page (1 to 500; the server's default is 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue after this workflow id (the `next` cursor a previous page printed).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Workflow id.
    pub id: String,
    /// Only events after this sequence number.
    #[arg(long)]
    pub after: Option<i64>,
    /// At most this many events.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Do not shorten the details column.
    #[arg(long)]
    pub wide: bool,
}

/// `kodomasu config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented settings file with every option, its default and unit.
    Init {
        /// Which values to start from.
        #[arg(long, value_enum, default_value_t = Profile::Development)]
        profile: Profile,
        /// Where to write the file; `-` writes to stdout.
        #[arg(long, short, default_value = "kodomasu.toml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check a settings file: every key known, every value valid. Without a path, the file
    /// given by `--config` / `KODOMASU_CONFIG`.
    Check {
        /// The file to check.
        path: Option<PathBuf>,
    },
}

/// Starting values of `config init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// One machine: embedded SQLite journal, simulators, text logs.
    Development,
    /// PostgreSQL, public listen address, longer leases, JSON logs, real services.
    Production,
}
