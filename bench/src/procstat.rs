//! CPU time and memory of other processes from /proc: the proxy under test (and its
//! worker processes) is measured over exactly the window the load generator measures.

use std::collections::BTreeSet;
use std::fs;

/// The given pids and their direct children (nginx and haproxy workers).
pub fn with_children(pids: &[u32]) -> Vec<u32> {
    let mut all: BTreeSet<u32> = pids.iter().copied().collect();
    if pids.is_empty() {
        return Vec::new();
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
            {
                if pids.contains(&ppid) {
                    all.insert(pid);
                }
            }
        }
    }
    all.into_iter().collect()
}

/// The fields of /proc/PID/stat after the command name: index 0 is the state, 1 the
/// parent pid, 11 utime, 12 stime (in clock ticks).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that fails).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of `pids` (all their threads), summed.
pub fn cpu_seconds(pids: &[u32], ticks: f64) -> f64 {
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        .filter_map(|f| {
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / ticks)
        })
        .sum()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`), summed over `pids`.
pub fn status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| {
                    l[field.len() + 1..]
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
        })
        .sum()
}

/// CPU seconds of this process.
pub fn own_cpu_seconds(ticks: f64) -> f64 {
    cpu_seconds(&[std::process::id()], ticks)
}
