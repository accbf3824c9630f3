//! The settings file: `kodomasu config init` writes a commented TOML file with every option;
//! `--config PATH` / `KODOMASU_CONFIG` reads one.
//!
//! A key is the option's environment variable in lower case without the `KODOMASU_` prefix
//! (`lease_ttl` ↔ `KODOMASU_LEASE_TTL` ↔ `--lease-ttl`; `database_url` ↔ `DATABASE_URL`;
//! dashes are accepted for underscores). `[sections]` only group keys for the reader; the key
//! names are what count. Values are TOML strings, numbers or booleans (arrays are joined with
//! commas). Precedence: command-line flag > environment variable > file > built-in default: the
//! file's values become clap's defaults, so clap applies the rest of the order itself.
//!
//! ```toml
//! [worker]
//! lease_ttl = "60s"
//! slots = 64
//! ```

use super::{ConfigCommand, Profile};
use crate::settings::{Cli, Command as CliCommand};
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why the settings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the settings file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the settings file {path} has an unknown key `{key}`{suggestion}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: String,
    },
    #[error("the settings file {path} sets `{key}` twice")]
    Duplicate { path: PathBuf, key: String },
    #[error("the settings file {path}: `{key}` {message}")]
    InvalidValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path} exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no settings file: pass a path, --config PATH or KODOMASU_CONFIG")]
    NoFile,
    /// Command-line errors (and `--help`, `--version`), printed and exited by clap.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// The key of an option, from its environment variable.
fn key_of(env: &std::ffi::OsStr) -> String {
    let env = env.to_string_lossy().to_ascii_lowercase();
    env.strip_prefix("kodomasu_").unwrap_or(&env).to_owned()
}

/// Keys that configure the file itself, never read from it.
const NOT_IN_FILE: &[&str] = &["config"];

/// Every option that has an environment variable, by key, with the first argument that
/// declares it (options shared by several commands have one key).
fn known_options(cmd: &Command) -> BTreeMap<String, Arg> {
    fn walk(cmd: &Command, out: &mut BTreeMap<String, Arg>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                let key = key_of(env);
                if !NOT_IN_FILE.contains(&key.as_str()) {
                    out.entry(key).or_insert_with(|| arg.clone());
                }
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(cmd, &mut out);
    out
}

/// A loaded settings file: each key's value as the string clap parses.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub values: BTreeMap<String, String>,
}

impl ConfigFile {
    /// Reads and checks `path` against the options of `cmd`: every key known, every value
    /// accepted by the option's parser.
    ///
    /// # Errors
    /// See [`ConfigError`]; each names the file and, where it applies, the key.
    pub fn load(path: &Path, cmd: &Command) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, cmd)
    }

    fn parse(path: &Path, text: &str, cmd: &Command) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        let options = known_options(cmd);
        let mut values = BTreeMap::new();
        let mut add = |shown: String, name: &str, value: &toml::Value| -> Result<(), ConfigError> {
            let key = name.replace('-', "_").to_ascii_lowercase();
            let Some(arg) = options.get(&key) else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    suggestion: suggest(&key, options.keys()),
                    key: shown,
                });
            };
            let invalid = |message: String| ConfigError::InvalidValue {
                path: path.to_owned(),
                key: shown.clone(),
                message,
            };
            let value = scalar(value).map_err(invalid)?;
            check_value(arg, &value).map_err(invalid)?;
            if values.insert(key.clone(), value).is_some() {
                return Err(ConfigError::Duplicate {
                    path: path.to_owned(),
                    key,
                });
            }
            Ok(())
        };
        for (name, value) in &table {
            match value {
                toml::Value::Table(section) => {
                    for (inner, value) in section {
                        if value.is_table() {
                            return Err(ConfigError::InvalidValue {
                                path: path.to_owned(),
                                key: format!("{name}.{inner}"),
                                message: "is a table; sections hold keys only".to_owned(),
                            });
                        }
                        add(format!("{name}.{inner}"), inner, value)?;
                    }
                }
                value => add(name.clone(), name, value)?,
            }
        }
        Ok(Self {
            path: path.to_owned(),
            values,
        })
    }

    /// `cmd` with the file's values as the defaults of the options they name.
    pub fn apply(&self, cmd: Command) -> Command {
        fn walk(cmd: Command, values: &BTreeMap<String, String>) -> Command {
            cmd.mut_args(|arg| {
                let Some(value) = arg.get_env().map(key_of).and_then(|k| values.get(&k)) else {
                    return arg;
                };
                let secret = arg.is_hide_env_values_set();
                let arg = arg.default_value(value.clone());
                // A secret from the file must not show up in `--help`.
                if secret {
                    arg.hide_default_value(true)
                } else {
                    arg
                }
            })
            .mut_subcommands(|sub| walk(sub, values))
        }
        walk(cmd, &self.values)
    }
}

/// A TOML value as the string an option's parser takes.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err("must be a list of plain values".to_owned())
                }
                other => scalar(other),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        toml::Value::Datetime(_) => {
            Err("is a TOML date; write durations and times as strings".to_owned())
        }
        toml::Value::Table(_) => Err("is a table".to_owned()),
    }
}

/// Runs `value` through the option's own parser, in a one-option command (so nothing else
/// from the environment or the real command line is involved).
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("must be true or false, not `{value}`")),
        };
    }
    let mut probe_arg = Arg::new(arg.get_id().clone())
        .long("value")
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone())
        .default_value(value.to_owned());
    if let Some(n) = arg.get_num_args() {
        probe_arg = probe_arg.num_args(n);
    }
    if let Some(d) = arg.get_value_delimiter() {
        probe_arg = probe_arg.value_delimiter(d);
    }
    let probe = Command::new("kodomasu")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(probe_arg);
    match probe.try_get_matches_from(Vec::<OsString>::new()) {
        Ok(_) => Ok(()),
        Err(e) => {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let reason = first.strip_prefix("error: ").unwrap_or(first);
            // clap names the probe's flag; say what the value was instead.
            Err(match reason.split_once("for '--value") {
                Some((head, tail)) => {
                    let detail = tail.split_once("': ").map(|(_, d)| d).unwrap_or_default();
                    if detail.is_empty() {
                        head.trim_end().to_owned()
                    } else {
                        format!("{}: {detail}", head.trim_end())
                    }
                }
                None => reason.to_owned(),
            })
        }
    }
}

/// ` (did you mean `x`?)` when a known key is close.
fn suggest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|k| (levenshtein(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses the command line, reading the settings file named by `--config` / `KODOMASU_CONFIG`.
///
/// # Errors
/// [`ConfigError::Clap`] for command-line errors (call `exit()` on it), others for the file.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(&args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    // `config init` writes the file; it must work before the file exists.
    if matches!(cli.command, CliCommand::Config(ConfigCommand::Init { .. })) {
        return Ok(cli);
    }
    let Some(path) = cli.config_file.clone() else {
        return Ok(cli);
    };
    let file = ConfigFile::load(&path, &cmd)?;
    let matches = file.apply(cmd).try_get_matches_from(&args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// [`parse_from`] on the process's arguments; prints the error and exits on failure.
pub fn parse_or_exit() -> Cli {
    match parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

/// Runs `kodomasu config …`. `config_file` is the file named by `--config` / `KODOMASU_CONFIG`.
///
/// # Errors
/// When the file cannot be written (or exists without `--force`), or does not check.
pub fn run(command: ConfigCommand, config_file: Option<&Path>) -> Result<(), ConfigError> {
    match command {
        ConfigCommand::Init {
            profile,
            output,
            force,
        } => {
            let text = render(profile);
            if output.as_os_str() == "-" {
                print!("{text}");
                return Ok(());
            }
            write_new(&output, &text, force)?;
            let profile_name = match profile {
                Profile::Development => "development",
                Profile::Production => "production",
            };
            println!(
                "wrote {} ({profile_name} profile); use it with `kodomasu --config {} <command>` or KODOMASU_CONFIG",
                output.display(),
                output.display()
            );
            Ok(())
        }
        ConfigCommand::Check { path } => {
            let path = path.as_deref().or(config_file).ok_or(ConfigError::NoFile)?;
            let file = ConfigFile::load(path, &Cli::command())?;
            let keys: Vec<&str> = file.values.keys().map(String::as_str).collect();
            println!(
                "{}: ok, {} setting(s): {}",
                path.display(),
                keys.len(),
                keys.join(", ")
            );
            Ok(())
        }
    }
}

/// Writes `text` to a new file (mode 0600 on Unix: it may hold secrets).
fn write_new(path: &Path, text: &str, force: bool) -> Result<(), ConfigError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            ConfigError::Exists {
                path: path.to_owned(),
            }
        } else {
            ConfigError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    file.write_all(text.as_bytes())
        .map_err(|source| ConfigError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Where an option goes in the generated file and the unit of its value.
struct Doc {
    key: &'static str,
    section: &'static str,
    unit: &'static str,
    /// Shown (commented) when the option has no default.
    example: Option<&'static str>,
}

const fn doc(
    key: &'static str,
    section: &'static str,
    unit: &'static str,
    example: Option<&'static str>,
) -> Doc {
    Doc {
        key,
        section,
        unit,
        example,
    }
}

const DURATION: &str = "duration";

/// The options in the order of the generated file. Options not listed here still appear, in
/// the section `other`, with their help text and default.
const DOCS: &[Doc] = &[
    doc(
        "database_url",
        "database",
        "URL",
        Some("postgres://kodomasu:PASSWORD@db.example:5432/kodomasu"),
    ),
    doc("data_dir", "database", "directory path", None),
    doc("max_connections", "database", "connections", None),
    doc("skip_migrate", "database", "true/false", None),
    doc("listen", "server", "address host:port", None),
    doc("slots", "worker", "workflows", None),
    doc("lease_ttl", "worker", DURATION, None),
    doc("heartbeat_interval", "worker", DURATION, Some("10s")),
    doc("poll_interval", "worker", DURATION, None),
    doc("claim_batch", "worker", "workflows per query", None),
    doc("drain_timeout", "worker", DURATION, None),
    doc(
        "masumi_url",
        "services",
        "URL",
        Some("https://payments.example/api/v1"),
    ),
    doc("masumi_token", "services", "secret", Some("…")),
    doc(
        "kodosumi_url",
        "services",
        "URL",
        Some("http://kodosumi.example:3370"),
    ),
    doc("kodosumi_user", "services", "user name", None),
    doc("kodosumi_password", "services", "secret", Some("…")),
    doc(
        "flows_file",
        "services",
        "file path",
        Some("/etc/kodomasu/flows.toml"),
    ),
    doc(
        "agent_identifier",
        "services",
        "Masumi agent identifier",
        Some("…"),
    ),
    doc("network", "services", "Preprod or Mainnet", None),
    doc("pay_by", "services", DURATION, None),
    doc("submit_result_within", "services", DURATION, None),
    doc("flow_sync_interval", "services", DURATION, None),
    doc("start_job_timeout", "services", DURATION, None),
    doc("service_timeout", "services", DURATION, None),
    doc("result_fetch_timeout", "services", DURATION, None),
    doc("bootstrap_token", "access", "secret", None),
    doc(
        "rate_limit_per_minute",
        "access",
        "requests per minute per client IP",
        None,
    ),
    doc("trust_forwarded_for", "access", "true/false", None),
    doc(
        "cors_origins",
        "access",
        "list of origins",
        Some(r#"["https://ops.example"]"#),
    ),
    doc(
        "metrics_listen",
        "metrics",
        "address host:port",
        Some("0.0.0.0:9464"),
    ),
    doc(
        "otel_exporter_otlp_endpoint",
        "log",
        "URL",
        Some("http://collector:4318"),
    ),
    doc("log_format", "log", "", None),
    doc("server", "client", "URL", None),
    doc("token", "client", "secret", Some("kdm_…")),
    doc("masumi_sim_listen", "simulators", "address host:port", None),
    doc(
        "kodosumi_sim_listen",
        "simulators",
        "address host:port",
        None,
    ),
];

/// Sections in file order, with what they say before their options.
const SECTIONS: &[(&str, &str)] = &[
    (
        "database",
        "The journal (`kodomasu migrate`, `server`, `worker`, `dev`).",
    ),
    ("server", "The HTTP server (`kodomasu server`, `dev`)."),
    ("worker", "The worker pool (`kodomasu worker`, `dev`)."),
    (
        "services",
        "Masumi and Kodosumi (`kodomasu server`, `worker`, `dev`). Without both URLs paid jobs are off;\n`kodomasu dev` then runs its own simulators of both.",
    ),
    (
        "access",
        "Who may call what (`kodomasu server`, `dev`): admin tokens, the MIP-003 rate limit, CORS.",
    ),
    (
        "metrics",
        "Prometheus metrics of a separate `kodomasu worker` (the server serves /metrics on its own port).",
    ),
    ("log", "Logs and traces (every command)."),
    (
        "client",
        "The operators' commands (`kodomasu workflows …`): which server and which token.",
    ),
    (
        "simulators",
        "`kodomasu sim masumi` and `kodomasu sim kodosumi`.",
    ),
    ("other", "Further options."),
];

/// Values a profile sets (TOML literals), with why.
fn profile_values(profile: Profile) -> &'static [(&'static str, &'static str, &'static str)] {
    match profile {
        Profile::Development => &[
            (
                "data_dir",
                "\"kodomasu-data\"",
                "embedded SQLite journal in this directory (no database_url)",
            ),
            ("listen", "\"127.0.0.1:8080\"", "this machine only"),
            (
                "lease_ttl",
                "\"10s\"",
                "a stopped worker's workflows move on quickly while developing",
            ),
            ("poll_interval", "\"1s\"", "short fallback poll"),
            ("log_format", "\"text\"", "readable logs"),
            ("server", "\"http://127.0.0.1:8080\"", "the local server"),
        ],
        Profile::Production => &[
            (
                "database_url",
                "\"postgres://kodomasu:CHANGE_ME@db.example.internal:5432/kodomasu\"",
                "PostgreSQL; better set DATABASE_URL from your secret store and delete this line",
            ),
            ("max_connections", "32", "per process"),
            (
                "listen",
                "\"0.0.0.0:8080\"",
                "all interfaces; put a TLS proxy in front",
            ),
            (
                "lease_ttl",
                "\"60s\"",
                "tolerates GC pauses and network blips before another worker takes over",
            ),
            ("heartbeat_interval", "\"20s\"", "a third of the lease"),
            (
                "drain_timeout",
                "\"60s\"",
                "lets running steps finish on deploys",
            ),
            ("log_format", "\"json\"", "for log shippers"),
        ],
    }
}

/// What the generated file says about one option, read from the command's own arguments.
struct OptionInfo {
    key: String,
    env: String,
    flag: Option<String>,
    help: String,
    default: Option<String>,
    choices: Vec<String>,
    bool_flag: bool,
    secret: bool,
}

fn option_infos(cmd: &Command) -> BTreeMap<String, OptionInfo> {
    known_options(cmd)
        .into_iter()
        .map(|(key, arg)| {
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let bool_flag = matches!(arg.get_action(), ArgAction::SetTrue);
            let info = OptionInfo {
                env: arg
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                flag: arg.get_long().map(|l| format!("--{l}")),
                help: arg.get_help().map(ToString::to_string).unwrap_or_default(),
                // A flag's implicit `false` is only added when clap builds the command.
                default: match (defaults.is_empty(), bool_flag) {
                    (false, _) => Some(defaults.join(",")),
                    (true, true) => Some("false".to_owned()),
                    (true, false) => None,
                },
                choices: arg
                    .get_possible_values()
                    .iter()
                    .filter(|p| !p.is_hide_set())
                    .map(|p| p.get_name().to_owned())
                    .filter(|_| !bool_flag)
                    .collect(),
                bool_flag,
                secret: arg.is_hide_env_values_set(),
                key: key.clone(),
            };
            (key, info)
        })
        .collect()
}

/// A default as a TOML literal: numbers and booleans bare, the rest quoted.
fn literal(value: &str, bool_flag: bool) -> String {
    if bool_flag && (value == "true" || value == "false") {
        return value.to_owned();
    }
    if value.parse::<i64>().is_ok() || value.parse::<f64>().is_ok_and(f64::is_finite) {
        return value.to_owned();
    }
    toml::Value::String(value.to_owned()).to_string()
}

/// `# ` + text wrapped at 96 columns.
fn comment(out: &mut String, text: &str) {
    for paragraph in text.lines() {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() > 1 && line.len() + 1 + word.len() > 96 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// The settings file of `profile`, listing every option of the binary.
pub fn render(profile: Profile) -> String {
    let infos = option_infos(&Cli::command());
    let values = profile_values(profile);
    let profile_name = match profile {
        Profile::Development => "development",
        Profile::Production => "production",
    };
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "kodomasu settings, profile `{profile_name}` (written by `kodomasu config init`).\n\
             Use it with `kodomasu --config FILE <command>` or KODOMASU_CONFIG=FILE; check it with `kodomasu config check FILE`.\n\
             Precedence: command-line flag > environment variable > this file > built-in default.\n\
             Keys are the environment variables in lower case without the KODOMASU_ prefix (lease_ttl is KODOMASU_LEASE_TTL and --lease-ttl); [sections] only group them. Unknown keys are an error.\n\
             Durations are humantime strings: 500ms, 30s, 5m, 12h. A line `# key = value` shows the built-in default: remove the `#` to change it.\n\
             Secrets (tokens, passwords, database_url with a password) are better kept in environment variables."
        ),
    );
    let mut placed: Vec<&str> = Vec::new();
    for (section, intro) in SECTIONS {
        let mut keys: Vec<(&str, &str, Option<&str>)> = DOCS
            .iter()
            .filter(|d| d.section == *section && infos.contains_key(d.key))
            .map(|d| (d.key, d.unit, d.example))
            .collect();
        if *section == "other" {
            keys = infos
                .keys()
                .filter(|k| !DOCS.iter().any(|d| d.key == k.as_str()))
                .map(|k| (k.as_str(), "", None))
                .collect();
        }
        if keys.is_empty() {
            continue;
        }
        out.push('\n');
        out.push_str(&format!("[{section}]\n"));
        comment(&mut out, intro);
        for (key, unit, example) in keys {
            let Some(info) = infos.get(key) else { continue };
            placed.push(key);
            out.push('\n');
            render_option(&mut out, info, unit, example, values);
        }
    }
    out
}

fn render_option(
    out: &mut String,
    info: &OptionInfo,
    unit: &str,
    example: Option<&str>,
    values: &[(&str, &str, &str)],
) {
    if !info.help.is_empty() {
        comment(out, &info.help);
    }
    let mut facts = Vec::new();
    if !unit.is_empty() {
        facts.push(format!("unit: {unit}"));
    } else if info.bool_flag {
        facts.push("unit: true/false".to_owned());
    }
    if !info.choices.is_empty() {
        facts.push(format!("one of: {}", info.choices.join(", ")));
    }
    facts.push(match &info.default {
        Some(d) if !info.secret => format!("default: {d}"),
        Some(_) => "default: (hidden)".to_owned(),
        None => "default: none".to_owned(),
    });
    comment(out, &facts.join(" · "));
    let mut names = vec![format!("env {}", info.env)];
    if let Some(flag) = &info.flag {
        names.push(format!("flag {flag}"));
    }
    if info.secret {
        names.push("secret: better set through the environment".to_owned());
    }
    comment(out, &names.join(" · "));
    match values.iter().find(|(k, _, _)| *k == info.key) {
        Some((key, value, why)) => {
            out.push_str(&format!("{key} = {value}   # {why}\n"));
        }
        None => {
            let shown = match (&info.default, example) {
                (Some(d), _) if !info.secret => literal(d, info.bool_flag),
                // An example that is already a TOML array stays as it is.
                (_, Some(example)) if example.starts_with('[') => example.to_owned(),
                (_, Some(example)) => literal(example, false),
                _ => "\"\"".to_owned(),
            };
            out.push_str(&format!("# {} = {shown}\n", info.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Command as C;

    fn file(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(Path::new("test.toml"), text, &Cli::command())
    }

    fn parse_with(text: &str, args: &[&str]) -> Cli {
        let file = file(text).expect("file loads");
        let matches = file
            .apply(Cli::command())
            .try_get_matches_from(args)
            .expect("args parse");
        Cli::from_arg_matches(&matches).expect("cli")
    }

    #[test]
    fn both_profiles_load_back_and_list_every_option() {
        let all = known_options(&Cli::command());
        for profile in [Profile::Development, Profile::Production] {
            let text = render(profile);
            let loaded = file(&text).unwrap_or_else(|e| panic!("{profile:?}: {e}\n{text}"));
            assert!(!loaded.values.is_empty(), "{profile:?} sets values");
            for key in all.keys() {
                let active = format!("\n{key} = ");
                let commented = format!("\n# {key} = ");
                assert!(
                    text.contains(&active) || text.contains(&commented),
                    "{profile:?} lacks `{key}`:\n{text}"
                );
            }
            // Uncommenting every default or example still loads (`""` marks an option that is
            // unset by default and has no example: it stays commented).
            let uncommented: String = text
                .lines()
                .map(|l| {
                    let rest = l.strip_prefix("# ").unwrap_or(l);
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, v)| all.contains_key(k) && v != "\"\"")
                    {
                        rest.to_owned()
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            file(&uncommented).unwrap_or_else(|e| panic!("{profile:?} uncommented: {e}"));
        }
        let prod = render(Profile::Production);
        assert!(prod.contains("database_url = \"postgres://"), "{prod}");
        assert!(prod.contains("log_format = \"json\""), "{prod}");
        let dev = render(Profile::Development);
        assert!(dev.contains("data_dir = \"kodomasu-data\""), "{dev}");
        assert!(dev.contains("unit: duration"), "{dev}");
        assert!(dev.contains("default: 30s"), "{dev}");
    }

    #[test]
    fn file_values_are_defaults_that_flags_override() {
        let text = "[worker]\nslots = 7\nlease-ttl = \"45s\"\n[log]\nlog_format = \"json\"\n";
        let cli = parse_with(text, &["kodomasu", "worker"]);
        let C::Worker { worker, .. } = &cli.command else {
            panic!("worker")
        };
        assert_eq!(worker.slots, 7);
        assert_eq!(worker.lease_ttl, std::time::Duration::from_secs(45));
        assert_eq!(cli.log.log_format, crate::settings::LogFormat::Json);
        let cli = parse_with(text, &["kodomasu", "worker", "--slots", "9"]);
        let C::Worker { worker, .. } = &cli.command else {
            panic!("worker")
        };
        assert_eq!(worker.slots, 9);
    }

    #[test]
    fn booleans_and_top_level_keys_work() {
        let cli = parse_with(
            "skip_migrate = true\nlisten = \"127.0.0.1:9\"",
            &["kodomasu", "server"],
        );
        let C::Server { db, server, .. } = &cli.command else {
            panic!("server")
        };
        assert!(db.skip_migrate);
        assert_eq!(server.listen.port(), 9);
        let cli = parse_with("skip_migrate = false", &["kodomasu", "server"]);
        let C::Server { db, .. } = &cli.command else {
            panic!("server")
        };
        assert!(!db.skip_migrate);
        let e = file("skip_migrate = \"yes\"").expect_err("not a bool");
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn arrays_become_lists() {
        let cli = parse_with(
            "[access]\ncors_origins = [\"https://a.example\", \"https://b.example\"]",
            &["kodomasu", "server"],
        );
        let C::Server { server, .. } = &cli.command else {
            panic!("server")
        };
        assert_eq!(
            server.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        let cli = parse_with(
            "cors_origins = [\"https://a.example\"]",
            &["kodomasu", "server", "--cors-origin", "https://c.example"],
        );
        let C::Server { server, .. } = &cli.command else {
            panic!("server")
        };
        assert_eq!(server.cors_origins, ["https://c.example"]);
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = file("[worker]\nlease_tll = \"1s\"").expect_err("unknown key");
        let msg = e.to_string();
        assert!(
            msg.contains("`worker.lease_tll`") && msg.contains("did you mean `lease_ttl`"),
            "{msg}"
        );
        let e = file("[worker]\nslots = \"many\"").expect_err("bad value");
        assert!(
            e.to_string()
                .contains("`worker.slots` invalid value 'many'"),
            "{e}"
        );
        let e = file("lease_ttl = \"soon\"").expect_err("bad duration");
        assert!(e.to_string().contains("`lease_ttl`"), "{e}");
        let e = file("log_format = \"xml\"").expect_err("bad choice");
        assert!(e.to_string().contains("`log_format`"), "{e}");
        let e = file("slots = 1\n[worker]\nslots = 2").expect_err("twice");
        assert!(matches!(e, ConfigError::Duplicate { .. }), "{e}");
        let e = file("config = \"x\"").expect_err("config is not a key");
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e}");
        let e = file("slots = ").expect_err("syntax");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = file("[a.b]\nc = 1").expect_err("nested");
        assert!(e.to_string().contains("`a.b`"), "{e}");
    }

    #[test]
    fn secrets_from_the_file_stay_out_of_help() {
        let file = file("masumi_token = \"hunter2\"").expect("loads");
        let mut cmd = file.apply(Cli::command());
        let help = cmd
            .find_subcommand_mut("server")
            .expect("server")
            .render_help()
            .to_string();
        assert!(!help.contains("hunter2"), "{help}");
    }
}
