//! CPU time and memory of a process, from `/proc`.

/// User plus system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Measures a process's CPU use between two points.
#[derive(Debug)]
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> Self {
        CpuMeter { pid, ticks: cpu_ticks(pid), at: std::time::Instant::now() }
    }

    /// CPU used since the start, percent of one core.
    pub fn percent(&self) -> f64 {
        let used =
            cpu_ticks(self.pid).saturating_sub(self.ticks) as f64 / ticks_per_second() as f64;
        100.0 * used / self.at.elapsed().as_secs_f64()
    }
}
