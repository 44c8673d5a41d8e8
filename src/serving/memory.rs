//! What a model load may cost in memory, and whether the process can afford it: a load that
//! would cross the memory limit fails cleanly instead of getting the pod OOM-killed.

use std::path::Path;

/// Memory a load takes at its peak per byte of model file, for each plan the model gets (the
/// plan for any batch size, plus one per fixed batch size). Measured by tests/reload_memory.rs
/// on a 32 MiB model with two plans: +101 MiB at the peak of a load, 1.6 per byte per plan
/// (docs/PERFORMANCE.md, "Memory during a reload"); rounded up.
pub const BYTES_PER_FILE_BYTE_PER_PLAN: u64 = 2;
/// What any load costs beyond its weights: threads, plans' scratch, the engine's tables.
pub const BASE_BYTES: u64 = 8 << 20;

/// The memory a model opened from `file_bytes` with `plans` plans is expected to take.
pub fn estimate(file_bytes: u64, plans: usize) -> u64 {
    BASE_BYTES + file_bytes.saturating_mul(BYTES_PER_FILE_BYTE_PER_PLAN * plans.max(1) as u64)
}

/// The process's resident memory now, if the platform says (Linux: `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kilobytes(&status, "VmRSS:")
}

fn kilobytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The memory limit of this process's cgroup (v2's `memory.max`, else v1's
/// `memory.limit_in_bytes`), if one is set.
pub fn cgroup_limit() -> Option<u64> {
    let v2 = read_limit(Path::new("/sys/fs/cgroup/memory.max"));
    v2.or_else(|| read_limit(Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes")))
}

fn read_limit(path: &Path) -> Option<u64> {
    parse_limit(&std::fs::read_to_string(path).ok()?)
}

/// A cgroup limit file's value: "max", or v1's page-rounded `i64::MAX`, mean no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 62).then_some(value)
}

/// Hands memory the allocator holds free back to the system. glibc's malloc keeps what a freed
/// model occupied in its per-thread arenas, so without this the process stays as large as it
/// was at its largest (measured: see docs/PERFORMANCE.md, "Memory across reloads").
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc malloc's parameters for a server whose runs allocate and free tens of MB each
/// time, each one unless the environment sets it (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_`, or the same in `GLIBC_TUNABLES`). Call before any thread starts.
///
/// - Arenas: one per core. glibc gives each thread that allocates while another holds an arena
///   its own, up to eight per core, and each keeps the memory its runs freed: with five deep
///   models served to four callers for six minutes, the process held 590-643 MiB, and
///   489-539 MiB with two arenas on two cores; the calls answered differed by less than between
///   two runs of either (docs/PERFORMANCE.md, "Across a long served run").
/// - Blocks of up to [`HEAP_BLOCKS_UP_TO`] come from the heap, and the heap keeps that much free
///   at its top. glibc's own thresholds moved with what was freed last: a BERT encoder at 512
///   tokens (12 MB of attention scores per layer) gave its heap back after each layer and
///   faulted it in again, zeroed, in the next, 358-370 ms a run against 271-278 ms with both set
///   (one thread). Either one alone did not help.
pub fn tune_allocator(cores: usize) {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let unset = |variable: &str, tunable: &str| {
        !set_by_environment(
            std::env::var_os(variable).is_some(),
            tunables.as_deref(),
            tunable,
        )
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a malloc parameter; each value is in its parameter's range.
    unsafe {
        if unset("MALLOC_ARENA_MAX", "glibc.malloc.arena_max") {
            libc::mallopt(libc::M_ARENA_MAX, cores.clamp(1, 1 << 16) as libc::c_int);
        }
        if unset("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO);
        }
        if unset("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_BLOCKS_UP_TO);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (cores, unset);
}

/// glibc's largest mmap threshold on 64-bit targets, which its own adjustment stops at.
const HEAP_BLOCKS_UP_TO: i32 = 32 << 20;

/// Whether the environment sets a glibc malloc parameter: its variable is set, or
/// `GLIBC_TUNABLES` (`name=value` pairs joined by `:`) names its tunable.
fn set_by_environment(variable: bool, tunables: Option<&str>, tunable: &str) -> bool {
    variable
        || tunables.is_some_and(|t| {
            t.split(':')
                .any(|pair| pair.split('=').next() == Some(tunable))
        })
}

/// Why a load was not attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "loading it needs about {} MiB and the process holds {} MiB of its {} MiB limit{}; \
     free memory (unload a model), raise the limit, or set reload = \"unload-first\" in its config.toml",
    .needed >> 20, .resident >> 20, .limit >> 20,
    if *.from_cgroup { " (from the cgroup)" } else { "" }
)]
pub struct OverBudget {
    /// The estimate for the load.
    pub needed: u64,
    /// Resident memory before it.
    pub resident: u64,
    /// The limit.
    pub limit: u64,
    /// Whether the limit is the cgroup's rather than `--memory-limit`.
    pub from_cgroup: bool,
}

/// The memory limit loads are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// `--memory-limit`, which wins over the cgroup's.
    pub configured: Option<u64>,
}

impl Budget {
    /// Checks that `needed` more bytes fit under the limit, if one is known.
    pub fn check(&self, needed: u64) -> Result<(), OverBudget> {
        let (limit, from_cgroup) = match self.configured {
            Some(limit) => (limit, false),
            None => match cgroup_limit() {
                Some(limit) => (limit, true),
                None => return Ok(()),
            },
        };
        let resident = resident_bytes().unwrap_or(0);
        if resident.saturating_add(needed) > limit {
            return Err(OverBudget {
                needed,
                resident,
                limit,
                from_cgroup,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_without_a_limit_mean_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
    }

    #[test]
    fn the_environments_malloc_settings_win() {
        let arenas = "glibc.malloc.arena_max";
        assert!(!set_by_environment(false, None, arenas));
        assert!(set_by_environment(true, None, arenas));
        assert!(set_by_environment(
            false,
            Some("glibc.malloc.arena_max=4"),
            arenas
        ));
        let two = "glibc.malloc.trim_threshold=0:glibc.malloc.arena_max=1";
        assert!(set_by_environment(false, Some(two), arenas));
        assert!(set_by_environment(
            false,
            Some(two),
            "glibc.malloc.trim_threshold"
        ));
        assert!(!set_by_environment(
            false,
            Some(two),
            "glibc.malloc.mmap_threshold"
        ));
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kilobytes(status, "VmRSS:"), Some(1 << 20));
        assert_eq!(kilobytes(status, "VmHWM:"), Some(2 << 20));
    }

    #[test]
    fn a_load_past_the_configured_limit_is_refused() {
        let tight = Budget {
            configured: Some(1),
        };
        let err = tight.check(10 << 20).expect_err("over the limit");
        assert!(err.to_string().contains("unload-first"), "{err}");
        let roomy = Budget {
            configured: Some(u64::MAX),
        };
        assert_eq!(roomy.check(10 << 20), Ok(()));
    }
}
