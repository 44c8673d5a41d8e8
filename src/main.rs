//! The `predictd` command: parse flags, build, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use predictd::config::{Cli, Command, LogFormat, ServeArgs};
use predictd::model::Model;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Inspect { path } => inspect(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("predictd: {e:#}");
            ExitCode::FAILURE
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
        tracing::info!(
            grpc = %grpc.local_addr().unwrap_or(args.grpc_addr),
            http = %http.local_addr().unwrap_or(args.http_addr),
            models = %config.models.display(),
            "predictd listening"
        );
        predictd::server::App::new(config)?
            .with_http(http)
            .serve(grpc, shutdown_signal())
            .await?;
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

fn inspect(path: &std::path::Path) -> anyhow::Result<()> {
    let name = path
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("model");
    let model = Model::load(name, 1, path, &[])?;
    let signature = model.signature();
    let print = |role: &str, specs: &[predictd::signature::TensorSpec]| {
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
