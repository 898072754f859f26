//! `rollout datasets list`, `rollout cache ls|clean`, `rollout tasks init`.

use crate::cli::{CacheCommand, InitArgs};
use crate::error::{CliError, CliResult};
use crate::exit;
use rollout_sources::git::GitCache;
use rollout_sources::registry::Registry;

pub fn datasets_list(registry: &str, json: bool) -> CliResult {
    let reg = Registry::load(registry).map_err(CliError::usage)?;
    if json {
        let datasets: Vec<_> = reg
            .datasets
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name, "version": d.version, "description": d.description,
                    "n_tasks": d.tasks.len(), "tasks": d.tasks, "metrics": d.metrics,
                })
            })
            .collect();
        crate::print_json(&serde_json::json!({ "registry": registry, "datasets": datasets }));
        return Ok(exit::OK);
    }
    let width = reg
        .datasets
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<10}  {:>5}  description",
        "name", "version", "tasks"
    );
    for d in &reg.datasets {
        println!(
            "{:<width$}  {:<10}  {:>5}  {}",
            d.name,
            d.version,
            d.tasks.len(),
            d.description
        );
    }
    Ok(exit::OK)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn cache(cmd: CacheCommand) -> CliResult {
    let root = rollout_core::cache_root();
    let git = GitCache::new(GitCache::default_root());
    let others = ["archives", "jsonl", "code-agents"];
    match cmd {
        CacheCommand::Ls { json } => {
            let entries = git.list().map_err(CliError::failed)?;
            let dirs = others.map(|d| {
                let dir = root.join(d);
                let n = std::fs::read_dir(&dir).map(|r| r.count()).unwrap_or(0);
                (d, dir.clone(), n, rollout_core::digest::tree_bytes(&dir))
            });
            if json {
                let dirs: Vec<_> = dirs
                    .iter()
                    .map(|(name, dir, n, bytes)| {
                        serde_json::json!({
                            "name": name, "dir": dir, "entries": n, "bytes": bytes,
                        })
                    })
                    .collect();
                crate::print_json(
                    &serde_json::json!({ "root": root, "git": entries, "dirs": dirs }),
                );
                return Ok(exit::OK);
            }
            println!("cache: {}", root.display());
            for e in &entries {
                println!("git       {}  {}  {}", e.url, e.commit, mib(e.bytes));
            }
            println!("git: {} checkout(s)", entries.len());
            for (d, _, n, bytes) in dirs {
                println!(
                    "{d}: {n} entr{}, {}",
                    if n == 1 { "y" } else { "ies" },
                    mib(bytes)
                );
            }
            Ok(exit::OK)
        }
        CacheCommand::Clean => {
            let mut freed = git.clean().map_err(CliError::failed)?;
            for d in others {
                let dir = root.join(d);
                freed += rollout_core::digest::tree_bytes(&dir);
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CliError::failed(format!("removing {}: {e}", dir.display())))
                    }
                    _ => {}
                }
            }
            println!("freed {}", mib(freed));
            Ok(exit::OK)
        }
    }
}

pub fn tasks_init(args: InitArgs) -> CliResult {
    let dir = args.dir.join(&args.name);
    if dir.exists() {
        return Err(CliError::usage(format!("{} already exists", dir.display())));
    }
    let files: [(&str, String, bool); 5] = [
        ("instruction.md", format!("# {}\n\nDescribe the task for the agent here.\n", args.name), false),
        (
            "task.toml",
            String::from(
                "version = \"1.0\"\n\n[metadata]\nauthor_name = \"\"\ndifficulty = \"easy\"\ncategory = \"\"\ntags = []\n\n\
                 [verifier]\ntimeout_sec = 120.0\n\n[agent]\ntimeout_sec = 600.0\n\n\
                 [environment]\nbuild_timeout_sec = 600.0\ncpus = 1\nmemory_mb = 2048\nstorage_mb = 10240\n# network_mode = \"no-network\"\n# workdir = \"/app\"\n"
            ),
            false,
        ),
        ("environment/Dockerfile", "FROM debian:bookworm-slim\nWORKDIR /app\n".into(), false),
        ("solution/solve.sh", "#!/bin/bash\n# The reference solution: the oracle agent runs this.\nset -euo pipefail\n".into(), true),
        (
            "tests/test.sh",
            "#!/bin/bash\n# Runs after the agent. Write the reward (1 = solved) to /logs/verifier/reward.txt\n\
             # (or named numbers to /logs/verifier/reward.json).\nif false; then echo 1; else echo 0; fi > /logs/verifier/reward.txt\n"
                .into(),
            true,
        ),
    ];
    for (rel, content, exec) in files {
        let path = dir.join(rel);
        let res = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&path, content))
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt;
                let mode = if exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            });
        res.map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    }
    println!("created {}: edit instruction.md, solution/solve.sh and tests/test.sh, then `rollout tasks check {}`", dir.display(), dir.display());
    Ok(exit::OK)
}
