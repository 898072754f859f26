//! `rollout prov <command>`: every provenance command in one group, with the store's
//! housekeeping (`init`, `config`, `env`, `pop`, `reset`) and collections.

use crate::{
    load_config, open_store, resolve_artifact, store_disabled, store_path, LineageArgs, LogArgs,
    ProvConfig, RegisterArgs, ReproduceArgs, ShowArgs, StatusArgs, TraceArgs,
};
use clap::{Args, Subcommand};
use rollout_launch::exit;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum ProvCommand {
    /// Start tracking provenance here: create the store and its settings file.
    Init(InitArgs),
    /// Run a command under the syscall tracer and record the files it read and wrote.
    Trace(TraceArgs),
    /// The jobs and artifacts upstream of an artifact, as a tree.
    Lineage(LineageArgs),
    /// Recently recorded jobs (traced commands, build steps, trials).
    Log(LogArgs),
    /// Recorded files changed since last recorded, and stale steps.
    Status(StatusArgs),
    /// What the store knows about a trial directory, a file, a hash or a job.
    Show(ShowArgs),
    /// Show how an artifact was made and, with --run, make it again and compare.
    Reproduce(ReproduceArgs),
    /// Push an artifact's lineage to a remote `rollout serve`.
    Register(RegisterArgs),
    /// Show or change a setting of .rollout/provenance.toml.
    Config(ConfigArgs),
    /// Variables set for every traced command (kept in .rollout/provenance.toml).
    #[command(subcommand)]
    Env(EnvCommand),
    /// Remove the most recently recorded job from the store.
    Pop,
    /// Delete the provenance store (every recorded job, artifact and collection).
    Reset(ResetArgs),
    /// Named groups of recorded artifacts and jobs.
    #[command(subcommand)]
    Collection(CollectionCommand),
}

#[derive(Args, Debug)]
pub struct InitArgs {}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// The setting (sha256, capture_packages, ignore_prefixes, redact_patterns); none: all.
    pub key: Option<String>,
    /// Its new value: true/false, or a comma-separated list.
    pub value: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// The variables and their values.
    List,
    /// Set variables (NAME=VALUE …).
    Set {
        #[arg(required = true)]
        vars: Vec<String>,
    },
    /// Remove variables.
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Really delete it (without this, only say what would be deleted).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum CollectionCommand {
    /// Create an empty collection.
    Create {
        name: String,
        /// What the collection is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Add recorded artifacts (file paths or hashes) or jobs (job ids) to a collection.
    Add {
        name: String,
        #[arg(required = true)]
        items: Vec<String>,
    },
    /// Every collection and its size.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The members of a collection.
    Show {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `rollout prov` command.
pub fn main(cmd: ProvCommand) -> u8 {
    match cmd {
        ProvCommand::Init(_) => init(),
        ProvCommand::Trace(a) => crate::trace(a),
        ProvCommand::Lineage(a) => crate::lineage(a),
        ProvCommand::Log(a) => crate::log(a),
        ProvCommand::Status(a) => crate::status(a),
        ProvCommand::Show(a) => crate::show(a),
        ProvCommand::Reproduce(a) => crate::reproduce::main(a),
        ProvCommand::Register(a) => crate::register::main(a),
        ProvCommand::Config(a) => config(a),
        ProvCommand::Env(c) => env(c),
        ProvCommand::Pop => pop(),
        ProvCommand::Reset(a) => reset(a),
        ProvCommand::Collection(c) => collection(c),
    }
}

fn settings_path(store: &Path) -> PathBuf {
    store
        .parent()
        .unwrap_or(Path::new("."))
        .join("provenance.toml")
}

const SETTINGS_TEMPLATE: &str =
    "# Provenance settings (rollout prov config KEY VALUE changes them).\n\
# sha256 = false            # also record sha256 digests of files\n\
# capture_packages = true   # record the active Python interpreter's packages with each trace\n\
# ignore_prefixes = [...]   # paths never recorded (replaces the default list)\n\
# redact_patterns = [...]   # more regular expressions `rollout prov register` redacts\n\
# [env]                     # variables set for every traced command (rollout prov env set)\n";

fn init() -> u8 {
    if store_disabled() {
        eprintln!("error: the provenance store is switched off (--store off / ROLLOUT_STORE=off)");
        return exit::USAGE;
    }
    let path = store_path();
    let existed = path.is_file();
    if let Err(c) = open_store() {
        return c;
    }
    let settings = settings_path(&path);
    if !settings.exists() {
        if let Err(e) = std::fs::write(&settings, SETTINGS_TEMPLATE) {
            eprintln!("error: writing {}: {e}", settings.display());
            return exit::USAGE;
        }
    }
    println!(
        "{} provenance store {} (settings: {})",
        if existed { "existing" } else { "created" },
        path.display(),
        settings.display()
    );
    exit::OK
}

/// The settings file as a TOML table (empty when absent).
fn read_settings(path: &Path) -> Result<toml::Table, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse::<toml::Table>()
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Write `table` after checking that it is a valid configuration.
fn write_settings(path: &Path, table: &toml::Table) -> Result<(), String> {
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    toml::from_str::<ProvConfig>(&text).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

const BOOL_KEYS: [&str; 2] = ["sha256", "capture_packages"];
const LIST_KEYS: [&str; 2] = ["ignore_prefixes", "redact_patterns"];

fn config(args: ConfigArgs) -> u8 {
    let path = settings_path(&store_path());
    let mut table = match read_settings(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let effective = match load_config(&store_path()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let show = |key: &str| -> String {
        match key {
            "sha256" => effective.sha256.to_string(),
            "capture_packages" => effective.capture_packages.to_string(),
            "ignore_prefixes" => match &effective.ignore_prefixes {
                Some(v) => v.join(","),
                None => "(default)".into(),
            },
            _ => effective.redact_patterns.join(","),
        }
    };
    let Some(key) = args.key else {
        for k in BOOL_KEYS.into_iter().chain(LIST_KEYS) {
            println!("{k} = {}", show(k));
        }
        return exit::OK;
    };
    if !BOOL_KEYS.contains(&key.as_str()) && !LIST_KEYS.contains(&key.as_str()) {
        eprintln!(
            "error: unknown setting {key:?} (known: {}, {})",
            BOOL_KEYS.join(", "),
            LIST_KEYS.join(", ")
        );
        return exit::USAGE;
    }
    let Some(value) = args.value else {
        println!("{}", show(&key));
        return exit::OK;
    };
    let v = if BOOL_KEYS.contains(&key.as_str()) {
        match value.as_str() {
            "true" | "yes" | "on" | "1" => toml::Value::Boolean(true),
            "false" | "no" | "off" | "0" => toml::Value::Boolean(false),
            _ => {
                eprintln!("error: {key} takes true or false, not {value:?}");
                return exit::USAGE;
            }
        }
    } else {
        toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        )
    };
    table.insert(key.clone(), v);
    if let Err(e) = write_settings(&path, &table) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    println!("{key} set in {}", path.display());
    exit::OK
}

fn env(cmd: EnvCommand) -> u8 {
    let path = settings_path(&store_path());
    let mut table = match read_settings(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut vars = match table.remove("env") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            eprintln!("error: {}: `env` must be a table", path.display());
            return exit::USAGE;
        }
        None => toml::Table::new(),
    };
    match cmd {
        EnvCommand::List => {
            for (k, v) in &vars {
                println!("{k}={}", v.as_str().unwrap_or_default());
            }
            return exit::OK;
        }
        EnvCommand::Set { vars: given } => {
            for kv in given {
                let Some((k, v)) = kv.split_once('=').filter(|(k, _)| valid_name(k)) else {
                    eprintln!("error: {kv:?} is not NAME=VALUE (a name of letters, digits and _)");
                    return exit::USAGE;
                };
                vars.insert(k.into(), toml::Value::String(v.into()));
            }
        }
        EnvCommand::Unset { names } => {
            for n in names {
                if vars.remove(&n).is_none() {
                    eprintln!("note: {n} was not set");
                }
            }
        }
    }
    table.insert("env".into(), toml::Value::Table(vars));
    if let Err(e) = write_settings(&path, &table) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    exit::OK
}

fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn pop() -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    match store.pop_job() {
        Ok(Some(j)) => {
            println!(
                "removed job {} {} `{}` ({})",
                &j.uid[..8.min(j.uid.len())],
                j.kind.as_str(),
                j.command,
                j.started_at
            );
            exit::OK
        }
        Ok(None) => {
            eprintln!("error: the store {} holds no job", store.path().display());
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

fn reset(args: ResetArgs) -> u8 {
    if store_disabled() {
        eprintln!("error: the provenance store is switched off (--store off / ROLLOUT_STORE=off)");
        return exit::USAGE;
    }
    let path = store_path();
    let files: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", path.display())))
        .filter(|p| p.exists())
        .collect();
    if files.is_empty() {
        println!("no provenance store at {}", path.display());
        return exit::OK;
    }
    if !args.yes {
        eprintln!(
            "would delete the provenance store {} (every recorded job, artifact and collection; settings are kept): run again with --yes",
            path.display()
        );
        return exit::USAGE;
    }
    // The package-listing cache goes with the store (it is rebuilt by the next trace).
    let _ = std::fs::remove_file(crate::packages_cache_path(&path));
    for f in &files {
        if let Err(e) = std::fs::remove_file(f) {
            eprintln!("error: deleting {}: {e}", f.display());
            return exit::USAGE;
        }
    }
    println!("deleted the provenance store {}", path.display());
    exit::OK
}

fn collection(cmd: CollectionCommand) -> u8 {
    let mut store = match open_store() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let fail = |e: String| {
        eprintln!("error: {e}");
        exit::USAGE
    };
    match cmd {
        CollectionCommand::Create { name, description } => {
            if name.trim().is_empty() {
                return fail("a collection needs a name".into());
            }
            match store.create_collection(&name, description.as_deref()) {
                Ok(()) => {
                    println!("created collection {name}");
                    exit::OK
                }
                Err(e) => fail(e.to_string()),
            }
        }
        CollectionCommand::Add { name, items } => {
            // Every item is resolved before any is added.
            let mut members = Vec::new();
            for item in &items {
                let m = match resolve_artifact(&mut store, item) {
                    Ok(h) => ("artifact", h),
                    Err(artifact_err) => match store.job(item) {
                        Ok(j) => ("job", j.uid),
                        Err(_) => {
                            return fail(format!(
                                "{item} is neither a recorded artifact nor a job id: {artifact_err}"
                            ))
                        }
                    },
                };
                members.push(m);
            }
            for (kind, r) in members {
                match store.add_to_collection(&name, kind, &r) {
                    Ok(true) => println!("added {kind} {r}"),
                    Ok(false) => println!("{kind} {r} is already in {name}"),
                    Err(e) => return fail(e.to_string()),
                }
            }
            exit::OK
        }
        CollectionCommand::List { json } => match store.collections() {
            Ok(list) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
                exit::OK
            }
            Ok(list) => {
                for c in list {
                    println!(
                        "{}\t{} member(s)\t{}{}",
                        c.name,
                        c.members,
                        c.created_at,
                        c.description.map(|d| format!("\t{d}")).unwrap_or_default()
                    );
                }
                exit::OK
            }
            Err(e) => fail(e.to_string()),
        },
        CollectionCommand::Show { name, json } => match store.collection_members(&name) {
            Ok(m) if json => {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
                exit::OK
            }
            Ok(m) => {
                for x in m {
                    println!("{}\t{}\t{}", x.kind, x.reference, x.added_at);
                }
                exit::OK
            }
            Err(e) => fail(e.to_string()),
        },
    }
}
