//! Statistics and output: the tables, the ratios and the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cpu::CpuUse;
use crate::in_process::InProcess;
use crate::runs::{Client, Run, Target};
use crate::settings::Settings;
use crate::{IN_PROCESS_SECONDS, Key};

/// The `p`th percentile of sorted values (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

/// The median of each metric over repeats; errors are summed.
pub(crate) fn combine(runs: &[Run]) -> Run {
    Run {
        req_per_s: median(runs.iter().map(|r| r.req_per_s)),
        p50: median(runs.iter().map(|r| r.p50)),
        p90: median(runs.iter().map(|r| r.p90)),
        p99: median(runs.iter().map(|r| r.p99)),
        max: median(runs.iter().map(|r| r.max)),
        errors: runs.iter().map(|r| r.errors).sum(),
        first_error: runs.iter().find_map(|r| r.first_error.clone()),
        cpu: CpuUse {
            server: median(runs.iter().map(|r| r.cpu.server)),
            client: median(runs.iter().map(|r| r.cpu.client)),
            other: median(runs.iter().map(|r| r.cpu.other)),
        },
        rows_per_run: runs
            .iter()
            .any(|r| r.rows_per_run.is_some())
            .then(|| median(runs.iter().filter_map(|r| r.rows_per_run))),
    }
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("nproc {cores}, {cpu}")
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "-".to_string()
    }
}
/// The batch size to compare with in-process: the mean formed, rounded, at least 1.
pub(crate) fn formed_size(rows_per_run: f64) -> usize {
    (rows_per_run.round() as usize).max(1)
}

pub(crate) fn report(
    settings: &Settings,
    in_proc: &BTreeMap<String, Vec<InProcess>>,
    workers: &BTreeMap<String, usize>,
    results: &BTreeMap<Key, Vec<Run>>,
) -> String {
    let mut out = String::new();
    let combined: BTreeMap<&Key, Run> = results.iter().map(|(k, v)| (k, combine(v))).collect();
    let get = |name: &String, conc: usize, target: Target, client: Client| {
        combined.get(&(name.clone(), conc, target, client))
    };
    let repeats = if settings.repeats > 1 {
        format!(", median of {} repeats", settings.repeats)
    } else {
        String::new()
    };

    let _ = writeln!(
        out,
        "\n== in-process: the engine alone, no RPC ({IN_PROCESS_SECONDS} s each) =="
    );
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>7} {:>11} {:>12}",
        "model", "batch", "threads", "rows/s", "call p50 µs"
    );
    for (name, runs) in in_proc {
        for r in runs {
            let _ = writeln!(
                out,
                "{:<16} {:>5} {:>7} {:>11.0} {:>12.1}",
                name, r.rows, r.threads, r.rows_per_s, r.call_us
            );
        }
    }

    let _ = writeln!(
        out,
        "\n== load: batch-1 Predict, raw FP32, closed loop, {} s per run{repeats} ==",
        settings.seconds
    );
    let _ = writeln!(
        out,
        "mode: served = predictd, batching on (defaults); nobatch = predictd, max_batch_size 0; \
         bare = tonic returning a fixed reply"
    );
    let _ = writeln!(
        out,
        "rows/run: mean rows per model run the scheduler formed during the run (warm-up \
         included), from the model's counters"
    );
    let _ = writeln!(
        out,
        "cpu srv/gen/other: % of one core (both = 200%) used by the server under test, by the \
         load generator, and by everything else on the machine (noise)"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:<7} {:<7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6}  cpu srv/gen/other",
        "model",
        "conc",
        "mode",
        "client",
        "req/s",
        "rows/s",
        "rows/run",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "errors",
    );
    for ((name, conc, target, client), r) in &combined {
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:<7} {:<7} {:>8.0} {:>8.0} {:>8} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>6}  {:.0}/{:.0}/{:.0}",
            name,
            conc,
            target.label(),
            client.label(),
            r.req_per_s,
            // Every request is one row.
            r.req_per_s,
            r.rows_per_run
                .map_or("-".to_string(), |v| format!("{v:.1}")),
            r.p50,
            r.p90,
            r.p99,
            r.max,
            r.errors,
            r.cpu.server,
            r.cpu.client,
            r.cpu.other
        );
    }
    for ((name, conc, target, client), r) in &combined {
        if let Some(e) = &r.first_error {
            let _ = writeln!(
                out,
                "ERRORS {name} c={conc} {} via {}: {} (first: {e})",
                target.label(),
                client.label(),
                r.errors
            );
        }
    }
    let noisy: Vec<String> = combined
        .iter()
        .filter(|(_, r)| r.cpu.other > 15.0)
        .map(|((n, c, t, cl), r)| {
            format!(
                "{n} c={c} {} {}: {:.0}%",
                t.label(),
                cl.label(),
                r.cpu.other
            )
        })
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: other processes used CPU during {} run(s); those numbers are noisy: {}",
            noisy.len(),
            noisy.join(", ")
        );
    }

    let _ = writeln!(out, "\n== ratios ==");
    let clients = [Client::Rust, Client::Tonic, Client::H2load];
    // For the targets: the worst batching on ÷ off (ratio, concurrency, model), and served ÷
    // in-process at the formed batch for each (model, concurrency) (ratio, formed size).
    let mut worst_on_off: Option<(f64, usize, &String)> = None;
    let mut vs_formed: BTreeMap<(&String, usize), (f64, usize)> = BTreeMap::new();
    for name in &settings.models {
        let _ = writeln!(out, "{name}:");
        for client in clients {
            let parts: Vec<String> = combined
                .keys()
                .filter(|(n, _, t, c)| n == name && *t == Target::Served && *c == client)
                .filter_map(|(_, conc, _, _)| {
                    let s = get(name, *conc, Target::Served, client)?;
                    let b = get(name, *conc, Target::Bare, client)?;
                    Some(format!("c={conc} {}", ratio(s.req_per_s, b.req_per_s)))
                })
                .collect();
            if !parts.is_empty() {
                let _ = writeln!(
                    out,
                    "  served ÷ bare req/s via {}: {}",
                    client.label(),
                    parts.join(", ")
                );
            }
        }
        let on_off: Vec<String> = combined
            .iter()
            .filter(|((n, _, t, c), _)| n == name && *t == Target::Served && *c == Client::Rust)
            .filter_map(|((_, conc, _, _), on)| {
                let off = get(name, *conc, Target::NoBatch, Client::Rust)?;
                let value = on.req_per_s / off.req_per_s;
                if value.is_finite() && worst_on_off.is_none_or(|(worst, _, _)| value < worst) {
                    worst_on_off = Some((value, *conc, name));
                }
                Some(format!("c={conc} {}", ratio(on.req_per_s, off.req_per_s)))
            })
            .collect();
        if !on_off.is_empty() {
            let _ = writeln!(
                out,
                "  batching on ÷ off req/s via rust-h2: {}",
                on_off.join(", ")
            );
        }
        let scraped: Vec<String> = combined
            .iter()
            .filter(|((n, _, t, c), _)| n == name && *t == Target::Scraped && *c == Client::Rust)
            .filter_map(|((_, conc, _, _), on)| {
                let off = get(name, *conc, Target::Served, Client::Rust)?;
                Some(format!("c={conc} {}", ratio(on.req_per_s, off.req_per_s)))
            })
            .collect();
        if !scraped.is_empty() {
            let _ = writeln!(
                out,
                "  scraped every 100 ms ÷ not scraped req/s via rust-h2: {}",
                scraped.join(", ")
            );
        }
        let traced: Vec<String> = combined
            .iter()
            .filter(|((n, _, t, c), _)| n == name && *t == Target::Traced && *c == Client::Rust)
            .filter_map(|((_, conc, _, _), on)| {
                let off = get(name, *conc, Target::Served, Client::Rust)?;
                Some(format!("c={conc} {}", ratio(on.req_per_s, off.req_per_s)))
            })
            .collect();
        if !traced.is_empty() {
            let _ = writeln!(
                out,
                "  tracing 1% of calls ÷ no tracing req/s via rust-h2: {}",
                traced.join(", ")
            );
        }
        let inproc = &in_proc[name];
        let find = |rows: usize, threads: usize| {
            inproc
                .iter()
                .find(|r| r.rows == rows && r.threads == threads)
        };
        if let Some(&threads) = workers.get(name) {
            for ((_, conc, _, _), s) in combined
                .iter()
                .filter(|((n, _, t, c), _)| n == name && *t == Target::Served && *c == Client::Rust)
            {
                let Some(formed) = s.rows_per_run else {
                    continue;
                };
                let rows = formed_size(formed);
                let Some(base) = find(rows, threads) else {
                    continue;
                };
                let value = s.req_per_s / base.rows_per_s;
                vs_formed.insert((name, *conc), (value, rows));
                let _ = writeln!(
                    out,
                    "  c={conc} via rust-h2: formed {formed:.1} rows/run; served {:.0} rows/s ÷ \
                     in-process batch {rows} on {threads} threads {:.0} rows/s = {}",
                    s.req_per_s,
                    base.rows_per_s,
                    ratio(s.req_per_s, base.rows_per_s)
                );
            }
        }
        for client in clients {
            let best = combined
                .iter()
                .filter(|((n, _, t, c), _)| n == name && *t == Target::Served && *c == client)
                .max_by(|a, b| a.1.req_per_s.total_cmp(&b.1.req_per_s));
            if let Some(((_, conc, _, _), s)) = best {
                let vs = |rows, threads| {
                    find(rows, threads)
                        .map_or("-".to_string(), |r| ratio(s.req_per_s, r.rows_per_s))
                };
                let _ = writeln!(
                    out,
                    "  served rows/s via {} (best, {:.0} at c={conc}) ÷ in-process rows/s: \
                     batch 1: {} (1 thread), {} (2 threads); batch 32: {} (2 threads)",
                    client.label(),
                    s.req_per_s,
                    vs(1, 1),
                    vs(1, 2),
                    vs(32, 2)
                );
            }
        }
        if let Some(one) = find(1, 1) {
            for client in clients {
                if let (Some(s), Some(b)) = (
                    get(name, 1, Target::Served, client),
                    get(name, 1, Target::Bare, client),
                ) {
                    let nobatch = get(name, 1, Target::NoBatch, client)
                        .map_or(String::new(), |n| format!("; nobatch p50 {:.0} µs", n.p50));
                    let _ = writeln!(
                        out,
                        "  p50 added at c=1 via {}: served {:.0} µs − in-process batch-1 {:.1} µs \
                         = {:.0} µs; bare tonic p50 {:.0} µs, served − bare {:.0} µs{nobatch}",
                        client.label(),
                        s.p50,
                        one.call_us,
                        s.p50 - one.call_us,
                        b.p50,
                        s.p50 - b.p50
                    );
                }
            }
        }
    }

    let _ = writeln!(
        out,
        "\n== targets (rust-h2 unless said; on this 2-core VM the generator shares the cores) =="
    );
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let cnn = "digits_cnn".to_string();
    match vs_formed.get(&(&cnn, 16)) {
        Some(&(value, rows)) => {
            let _ = writeln!(
                out,
                "target digits_cnn c=16: served ÷ in-process at formed batch {rows} = {value:.2} \
                 (target ≥ 0.85): {}",
                verdict(value >= 0.85)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "target digits_cnn c=16: served ÷ in-process at formed batch: not measured \
                 (needs digits_cnn in LOAD_MODELS and 16 in LOAD_CONCURRENCY)"
            );
        }
    }
    let mlp = "digits_mlp".to_string();
    if let (Some(on), Some(off)) = (
        get(&mlp, 64, Target::Scraped, Client::Rust),
        get(&mlp, 64, Target::Served, Client::Rust),
    ) {
        let value = on.req_per_s / off.req_per_s;
        let _ = writeln!(
            out,
            "target digits_mlp c=64: scraped ÷ not scraped = {value:.3} (target ≥ 0.97): {}",
            verdict(value >= 0.97)
        );
    }
    for client in clients {
        if let (Some(s), Some(b)) = (
            get(&mlp, 64, Target::Served, client),
            get(&mlp, 64, Target::Bare, client),
        ) {
            let value = s.req_per_s / b.req_per_s;
            let _ = writeln!(
                out,
                "target digits_mlp c=64: served ÷ bare via {} = {value:.2} (target ≥ 0.6): {}",
                client.label(),
                verdict(value >= 0.6)
            );
        }
    }
    for name in &settings.models {
        let one = in_proc[name].iter().find(|r| r.rows == 1 && r.threads == 1);
        if let (Some(one), Some(s)) = (one, get(name, 1, Target::Served, Client::Rust)) {
            let added = s.p50 - one.call_us;
            let _ = writeln!(
                out,
                "target {name} c=1: p50 added over in-process = {added:.0} µs (target ≤ 100 µs): \
                 {}",
                verdict(added <= 100.0)
            );
        }
    }
    match worst_on_off {
        Some((value, conc, name)) => {
            let _ = writeln!(
                out,
                "target batching never slower: worst on÷off = {value:.2} at c={conc} ({name}) \
                 (target ≥ 1.00; run to run noise is a few %): {}",
                verdict(value >= 1.0)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "target batching never slower: not measured (no rust-h2 runs)"
            );
        }
    }

    let mut generators = Vec::new();
    for ((name, conc, target, client), r) in &combined {
        if *target == Target::Bare {
            generators.push(format!(
                "  {name} c={conc} {:<7} {:>6.0} req/s, generator {:>3.0}% cpu ({:.1} µs of cpu \
                 per request), bare server {:>3.0}%",
                client.label(),
                r.req_per_s,
                r.cpu.client,
                r.cpu.client / 100.0 / r.req_per_s.max(1.0) * 1e6,
                r.cpu.server
            ));
        }
    }
    let _ = writeln!(out, "\nload generators against the bare tonic server:");
    for line in generators {
        let _ = writeln!(out, "{line}");
    }
    out
}
