//! The process's own figures, under the names Prometheus client libraries use: CPU time,
//! resident memory, open file descriptors, start time (Linux `/proc`).

/// What `/proc/self` says now; a figure the platform does not give is `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The most file descriptors it may open.
    pub max_fds: Option<u64>,
    /// When it started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads the process's figures.
pub fn read() -> Process {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat, starttime 22 (1-based, counting the pid
    // and the command): 11, 12 and 19 after the command.
    let cpu_seconds = ticks.and_then(|t| Some((field(11)? + field(12)?) / t));
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start_time_seconds = ticks.and_then(|t| Some(boot? + field(19)? / t));
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        });
    Process {
        cpu_seconds,
        resident_bytes: crate::serving::memory::resident_bytes(),
        open_fds,
        max_fds,
        start_time_seconds,
    }
}

fn clock_ticks() -> Option<f64> {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[cfg(not(target_os = "linux"))]
    let ticks = -1;
    (ticks > 0).then_some(ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_descriptors() {
        let p = read();
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|b| b > 1 << 20), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(
            p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap_or(0)),
            "{p:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        assert!(
            p.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0 * 365.0),
            "{p:?}"
        );
    }
}
