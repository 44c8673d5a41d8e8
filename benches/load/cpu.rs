//! CPU accounting from /proc.

use std::collections::HashSet;

use crate::runs::Target;
use crate::{BARE_THREADS, CLIENT_THREADS, NOBATCH_THREADS, TRACED_THREADS};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// ns of CPU by thread group: the batching-off instance (its runtime and model workers);
    /// every other thread but the main one and the clients' (the batching-on instance's runtime
    /// and model workers); and the bare server's runtime.
    served: u64,
    nobatch: u64,
    traced: u64,
    bare: u64,
    /// Clock ticks of this process (all threads) and of its waited-for children (h2load).
    self_ticks: u64,
    children_ticks: u64,
    /// Clock ticks the whole machine was busy, and stolen by the hypervisor.
    machine_busy: u64,
    machine_steal: u64,
}

/// Linux's USER_HZ, the unit of /proc/*/stat and /proc/stat times.
const TICKS_PER_S: f64 = 100.0;

/// CPU time, in ns, of this process's live threads whose id and name pass `pick`.
pub(crate) fn threads_cpu_ns(pick: impl Fn(u64, &str) -> bool) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let dir = task.path();
            let tid = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if pick(tid, comm.trim_end()) {
                total += std::fs::read_to_string(dir.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// `nobatch_workers`, `traced_workers`: the model worker threads of the batching-off and the
/// tracing instances.
pub(crate) fn cpu_now(nobatch_workers: &HashSet<u64>, traced_workers: &HashSet<u64>) -> Cpu {
    let main_tid = std::process::id();
    let main_comm =
        std::fs::read_to_string(format!("/proc/self/task/{main_tid}/comm")).unwrap_or_default();
    let main_comm = main_comm.trim_end();
    let nobatch =
        |tid: u64, comm: &str| comm.starts_with(NOBATCH_THREADS) || nobatch_workers.contains(&tid);
    let traced =
        |tid: u64, comm: &str| comm.starts_with(TRACED_THREADS) || traced_workers.contains(&tid);
    let mut cpu = Cpu {
        bare: threads_cpu_ns(|_, comm| comm.starts_with(BARE_THREADS)),
        nobatch: threads_cpu_ns(nobatch),
        traced: threads_cpu_ns(traced),
        // The served runtime and the model workers (named after their models).
        served: threads_cpu_ns(|tid, comm| {
            !comm.starts_with(BARE_THREADS)
                && !comm.starts_with(CLIENT_THREADS)
                && !nobatch(tid, comm)
                && !traced(tid, comm)
                && comm != main_comm
        }),
        ..Cpu::default()
    };
    // /proc/self/stat: after the ")" come fields 3...; utime, stime, cutime, cstime are 14-17.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        cpu.self_ticks = field(14) + field(15);
        cpu.children_ticks = field(16) + field(17);
    }
    // /proc/stat: "cpu user nice system idle iowait irq softirq steal ..."
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = stat.lines().next()
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        cpu.machine_busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        cpu.machine_steal = at(7);
    }
    cpu
}

/// CPU between two snapshots, in % of one core.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// The server under test.
    pub(crate) server: f64,
    /// The load generator.
    pub(crate) client: f64,
    /// Every other process on the machine, and the hypervisor's steal: noise.
    pub(crate) other: f64,
}

/// `client_ns`: the Rust client's CPU; `None` for h2load, which is measured as a child.
pub(crate) fn cpu_used(
    before: Cpu,
    after: Cpu,
    target: Target,
    client_ns: Option<u64>,
    wall: f64,
) -> CpuUse {
    let pct = |ns: u64| ns as f64 / 1e9 / wall * 100.0;
    let ticks = |t: u64| t as f64 / TICKS_PER_S / wall * 100.0;
    let server = match target {
        Target::Served | Target::Scraped => after.served.saturating_sub(before.served),
        Target::NoBatch => after.nobatch.saturating_sub(before.nobatch),
        Target::Traced => after.traced.saturating_sub(before.traced),
        Target::Bare => after.bare.saturating_sub(before.bare),
    };
    let ours =
        (after.self_ticks - before.self_ticks) + (after.children_ticks - before.children_ticks);
    let busy = after.machine_busy - before.machine_busy;
    CpuUse {
        server: pct(server),
        client: match client_ns {
            Some(ns) => pct(ns),
            None => ticks(after.children_ticks - before.children_ticks),
        },
        other: ticks(busy.saturating_sub(ours)),
    }
}
