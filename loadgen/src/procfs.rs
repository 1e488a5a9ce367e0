//! What `/proc` and `getrlimit` say about a process: CPU time, memory, the fd limit.

use std::fs;
use std::io;

/// One reading of a process's CPU time and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`), KiB.
    pub hwm_kib: u64,
}

/// Reads `/proc/{pid}/stat` and `/proc/{pid}/status`; `pid` `None` means this process.
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let cpu_ticks = parse_cpu_ticks(&stat).ok_or_else(|| bad_data("stat"))?;
    Ok(ProcSample {
        cpu_s: cpu_ticks as f64 / clock_ticks_per_second(),
        rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: parse_status_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

fn bad_data(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected /proc {what} format"),
    )
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may hold spaces, so the fields are
/// counted from the last `)`: utime and stime are fields 14 and 15, i.e. the 12th and 13th
/// after the name.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line such as `VmRSS:   1234 kB` from the text of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `sysconf(_SC_CLK_TCK)`: the unit of the CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        // Linux has reported 100 on every architecture since 2.6.
        100.0
    }
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub fn fd_limits() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on Linux.
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 1 0 12345 1000000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn kib_lines_from_status() {
        let status = "Name:\tcorelay\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
        let (soft, hard) = fd_limits().unwrap();
        assert!(soft <= hard);
    }
}
