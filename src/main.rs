//! The `predictd` command: parse flags, build, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use predictd::batch::BatchError;
use predictd::config::{BatchArgs, Cli, Command, LogFormat, Progress, ServeArgs};
use predictd::engine::open::{OpenDefaults, open_file};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    predictd::serving::memory::tune_allocator(predictd::engine::threads::cores());
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Batch(args) => batch(&args),
        Command::Inspect { path } => inspect(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("predictd: {e:#}");
            match e.downcast_ref::<BatchError>() {
                // What a shell reports for a process ended by Ctrl-C.
                Some(BatchError::Interrupted) => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PREDICTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Bad flags fail before a port is bound.
    let config = args.to_config()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))
        };
        let grpc = bind(args.grpc_addr).await?;
        let http = bind(args.http_addr).await?;
        let metrics = match args.metrics_addr.filter(|_| args.metrics) {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        tracing::info!(
            grpc = %grpc.local_addr().unwrap_or(args.grpc_addr),
            http = %http.local_addr().unwrap_or(args.http_addr),
            models = %config.models.display(),
            "predictd listening"
        );
        let mut app = predictd::server::App::new(config)?.with_http(http);
        if let Some(metrics) = metrics {
            app = app.with_metrics(metrics);
        }
        app.serve(grpc, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn batch(args: &BatchArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let options = args.to_options()?;
    // Ctrl-C or SIGTERM asks the run to stop and remove its partial output; a second Ctrl-C
    // ends the process at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let started = std::time::Instant::now();
    let summary = predictd::batch::Job::prepare(&options).and_then(|job| {
        let progress = ProgressReport::new(args.progress, job.total_rows());
        let summary = predictd::batch::run(job, &stop, &|rows| progress.update(rows));
        progress.finish();
        summary
    });
    if let Some(path) = &args.metrics_file {
        use predictd::batch::textfile;
        let outcome = textfile::Outcome {
            rows: summary.as_ref().map_or(0, |s| s.rows),
            seconds: summary
                .as_ref()
                .map_or(started.elapsed().as_secs_f64(), |s| s.seconds),
            failed: summary.is_err(),
            ended: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        if let Err(e) = textfile::write(path, &options.model, &outcome) {
            // The run's own outcome matters more: report this, then that.
            eprintln!(
                "predictd batch: cannot write --metrics-file {}: {e}",
                path.display()
            );
        }
    }
    let summary = summary?;
    println!(
        "predictd batch: {} rows in {:.2} s ({:.0} rows/s) -> {}",
        summary.rows,
        summary.seconds,
        summary.rows as f64 / summary.seconds.max(1e-9),
        summary.output.display()
    );
    Ok(())
}

/// Rows done of the total (when the files say), rows/s and time left, on stderr: a bar on a
/// terminal, or with `--progress always` and no terminal, a line every few seconds.
enum ProgressReport {
    Bar(indicatif::ProgressBar),
    Lines {
        total: Option<u64>,
        started: std::time::Instant,
        last: std::sync::Mutex<std::time::Instant>,
    },
    Off,
}

impl ProgressReport {
    fn new(when: Progress, total: Option<u64>) -> ProgressReport {
        use indicatif::{ProgressBar, ProgressStyle};
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        match (when, terminal) {
            (Progress::Never, _) | (Progress::Auto, false) => ProgressReport::Off,
            (_, true) => {
                let (bar, template) = match total {
                    Some(total) => (
                        ProgressBar::new(total),
                        "{wide_bar} {human_pos}/{human_len} rows, {rate}, {eta} left",
                    ),
                    None => (
                        ProgressBar::no_length(),
                        "{spinner} {human_pos} rows, {rate}",
                    ),
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.with_key(
                        "rate",
                        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.0} rows/s", state.per_sec());
                        },
                    ));
                }
                ProgressReport::Bar(bar)
            }
            (Progress::Always, false) => ProgressReport::Lines {
                total,
                started: std::time::Instant::now(),
                last: std::sync::Mutex::new(std::time::Instant::now()),
            },
        }
    }

    fn update(&self, rows: u64) {
        match self {
            ProgressReport::Bar(bar) => bar.set_position(rows),
            ProgressReport::Lines {
                total,
                started,
                last,
            } => {
                let Ok(mut last) = last.lock() else { return };
                if last.elapsed() < std::time::Duration::from_secs(5) {
                    return;
                }
                *last = std::time::Instant::now();
                let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
                match total {
                    Some(total) => eprintln!(
                        "predictd batch: {rows}/{total} rows, {rate:.0} rows/s, {:.0} s left",
                        total.saturating_sub(rows) as f64 / rate.max(1e-9)
                    ),
                    None => eprintln!("predictd batch: {rows} rows, {rate:.0} rows/s"),
                }
            }
            ProgressReport::Off => {}
        }
    }

    fn finish(&self) {
        if let ProgressReport::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn inspect(path: &std::path::Path) -> anyhow::Result<()> {
    let model = open_file(path, &OpenDefaults::default())?.model;
    let signature = model.signature();
    let print = |role: &str, specs: &[predictd::engine::signature::TensorSpec]| {
        for spec in specs {
            let dims: Vec<String> = spec.shape.iter().map(|d| d.to_string()).collect();
            println!(
                "{role:<7} {:<24} {:<6} [{}]",
                spec.name,
                spec.dtype,
                dims.join(", ")
            );
        }
    };
    print("input", &signature.inputs);
    print("output", &signature.outputs);
    match &signature.batch_symbol {
        Some(symbol) => println!("batchable: yes (batch dimension '{symbol}')"),
        None => println!("batchable: no"),
    }
    Ok(())
}
