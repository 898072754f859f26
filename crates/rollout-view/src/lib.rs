//! `rollout view` (a local web UI over job directories) and `rollout report` (one self-contained
//! HTML file for a job). Both read job directories tolerantly: rollout's own `result.json`, the
//! Harbor fields added to it, and Harbor's own job directories.

pub mod assets;
pub mod detail;
pub mod fsguard;
pub mod index;
pub mod model;
pub mod report;
pub mod server;
pub mod stats;
pub mod synth;

use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

/// `rollout view`.
#[derive(Args, Debug, Clone)]
pub struct ViewArgs {
    /// Job directories, or directories holding job directories (default: `jobs`).
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Address to listen on. Only loopback by default: the viewer has no authentication.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
}

/// `rollout report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The job directory.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// The HTML file to write.
    #[arg(short = 'o', long = "output", default_value = "report.html")]
    pub output: PathBuf,
}

/// Run `rollout view` until interrupted; returns the exit status.
pub fn view_main(args: ViewArgs) -> u8 {
    let dirs = if args.dirs.is_empty() {
        vec![PathBuf::from("jobs")]
    } else {
        args.dirs
    };
    for d in &dirs {
        if !d.is_dir() {
            eprintln!(
                "error: {} is not a directory: give job directories or a directory of jobs (rollout run writes them under ./jobs by default)",
                d.display()
            );
            return 2;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: cannot listen on {addr}: {e}; pick another --port (0 picks a free one)"
                );
                return 2;
            }
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
        let catalog = Arc::new(index::Catalog::new(dirs));
        let n = catalog.jobs().len();
        println!("rollout view: {n} job(s) at http://{local}/ (Ctrl-C to stop)");
        let app = server::router(catalog);
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        match res {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: serving: {e}");
                1
            }
        }
    })
}

/// Write the report of one job; returns the exit status.
pub fn report_main(args: ReportArgs) -> u8 {
    if !index::is_job_dir(&args.job_dir) {
        eprintln!(
            "error: {} is not a job directory (no result.json, run_control.json or job.log)",
            args.job_dir.display()
        );
        return 2;
    }
    match report::write_report(&args.job_dir, &args.output) {
        Ok(r) => {
            println!(
                "wrote {} ({} trials, {} with logs and trajectory, {} bytes)",
                args.output.display(),
                r.trials,
                r.detailed,
                r.bytes
            );
            0
        }
        Err(e) => {
            eprintln!("error: writing {}: {e}", args.output.display());
            1
        }
    }
}
