//! `corelay tune`: does this host let corelay do its job?
//!
//! corelay keeps tens of thousands of mostly idle WebSocket connections per node, one shard
//! per core on io_uring. A handful of kernel and process settings decide whether that holds
//! up: file descriptors, locked memory for io_uring, accept backlogs, TCP buffer memory,
//! interrupt placement. This module reads them from the running host and compares each with
//! the value recommended in `tuning/` (a sysctl drop-in, a limits file and a systemd unit);
//! `tuning/README.md` explains every knob, what it costs when unmet and how to apply it.
//!
//! Reading and judging are kept apart, as in a sans-IO decoder: [`inspect`] reads `/proc`,
//! `/sys` and `getrlimit(2)` into raw text, and a pure function turns each raw reading into
//! a [`Check`], so the comparisons are unit-tested without depending on the host. One table
//! (`KNOBS`) holds every recommended value; the unit tests parse `tuning/sysctl.conf`,
//! `tuning/limits.conf` and `tuning/corelay.service` and fail if they and the table disagree.
//!
//! Nothing here changes the host: applying a setting is the operator's decision.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};

/// How a host setting compares with corelay's recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The setting is at least as good as recommended. Nothing to do.
    Ok,
    /// The setting falls short. [`Check::why`] says what that costs; `tuning/README.md`
    /// says how to change it.
    Unmet,
    /// The setting could not be read or parsed; [`Check::current`] says why. Look at it by
    /// hand (this usually means a restricted container or an unusual kernel).
    Unknown,
}

/// One inspected host setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The setting's name: a sysctl key (`net.core.somaxconn`), an rlimit
    /// (`RLIMIT_NOFILE`) or a short label (`irqbalance`).
    pub name: &'static str,
    /// What the host has now, as text (whitespace normalised, rlimits as soft and hard).
    pub current: String,
    /// What corelay recommends, with the comparison that decides [`Check::status`]
    /// (for example `>= 65535`).
    pub recommended: String,
    /// Whether [`Check::current`] satisfies [`Check::recommended`].
    pub status: Status,
    /// Why the setting matters for corelay, in one or two sentences.
    pub why: &'static str,
}

impl Check {
    /// True when the setting is known to satisfy the recommendation.
    #[must_use]
    pub fn is_met(&self) -> bool {
        self.status == Status::Ok
    }
}

/// Reads every setting corelay cares about from the running host.
///
/// Never fails: a setting that cannot be read becomes a [`Status::Unknown`] check, and a
/// setting this kernel does not have is judged by what its absence means (no
/// `kernel.io_uring_disabled` means io_uring cannot be disabled, for example).
#[must_use]
pub fn inspect() -> Vec<Check> {
    KNOBS
        .iter()
        .map(|knob| evaluate(knob, read(knob)))
        .collect()
}

/// Renders checks as an aligned text table, followed by the reasons for every check that
/// is not met.
#[must_use]
pub fn render(checks: &[Check]) -> String {
    const HEADER: [&str; 4] = ["SETTING", "CURRENT", "RECOMMENDED", "STATUS"];
    let width = |column: usize, cell: fn(&Check) -> &str| {
        checks
            .iter()
            .map(|check| cell(check).chars().count())
            .chain([HEADER[column].len()])
            .max()
            .unwrap_or(0)
    };
    let widths = [
        width(0, |c| c.name),
        width(1, |c| &c.current),
        width(2, |c| &c.recommended),
    ];
    let unmet = checks.iter().filter(|c| c.status == Status::Unmet).count();
    let unknown = checks
        .iter()
        .filter(|c| c.status == Status::Unknown)
        .count();

    let mut out = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(
        out,
        "corelay tune: {} checks, {} ok, {} unmet, {} unknown\n",
        checks.len(),
        checks.len() - unmet - unknown,
        unmet,
        unknown
    );
    let mut row = |cells: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
    };
    row(HEADER);
    for check in checks {
        row([
            check.name,
            &check.current,
            &check.recommended,
            status_label(check.status),
        ]);
    }
    let mut notes = checks.iter().filter(|c| !c.is_met()).peekable();
    if notes.peek().is_some() {
        out.push_str("\nWhy it matters:\n");
        for check in notes {
            let _ = writeln!(out, "  {}: {}", check.name, check.why);
        }
    }
    out.push_str("\nHow to apply each setting: tuning/README.md\n");
    out
}

/// True when every check is [`Status::Ok`]. An [`Status::Unknown`] check counts as not met:
/// `corelay tune --strict` cannot vouch for a setting it could not read.
#[must_use]
pub fn all_met(checks: &[Check]) -> bool {
    checks.iter().all(Check::is_met)
}

/// Runs `corelay tune`: inspects the host and prints the table to standard output.
///
/// Returns whether the command succeeded: always in normal mode (the table is advice), and
/// in `strict` mode only when [`all_met`] holds, so that a provisioning script can refuse a
/// host that is not tuned.
///
/// # Errors
///
/// Only when standard output cannot be written (a closed pipe, for example).
pub fn run(strict: bool) -> io::Result<bool> {
    let checks = inspect();
    let mut stdout = io::stdout().lock();
    stdout.write_all(render(&checks).as_bytes())?;
    stdout.flush()?;
    Ok(!strict || all_met(&checks))
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Unmet => "UNMET",
        Status::Unknown => "unknown",
    }
}

/// One setting: where to read it, how to judge it, and why it matters.
struct Knob {
    /// Sysctl key, rlimit name or label; also the [`Check::name`].
    name: &'static str,
    source: Source,
    rule: Rule,
    /// What [`Check::current`] says when the host does not have the setting at all, if
    /// its absence is fine. `None` makes absence [`Status::Unknown`].
    absent: Option<&'static str>,
    why: &'static str,
}

#[derive(Clone, Copy)]
enum Source {
    /// `/proc/sys/` + the knob's name with dots turned into slashes.
    Sysctl,
    /// `getrlimit(2)` of this process, read as "soft hard".
    Rlimit(Limit),
    /// CPUs this process may run on (affinity and cgroup quota applied).
    Cpus,
    /// Whether an irqbalance process runs, and whether it is told to avoid some CPUs.
    Irqbalance,
    /// cpu0's cpufreq scaling governor.
    Governor,
    /// The running kernel's release (`/proc/sys/kernel/osrelease`).
    Kernel,
}

#[derive(Clone, Copy)]
enum Limit {
    NoFile,
    MemLock,
}

enum Rule {
    /// One integer, at least this.
    AtLeast(u64),
    /// One integer, exactly this.
    Equal(u64),
    /// "low high": at least as many ports as `low..=high`.
    PortRange { low: u64, high: u64 },
    /// Three integers, each with its own bound (`tcp_mem`, `tcp_rmem`, `tcp_wmem`).
    Triple([Bound; 3]),
    /// "soft hard" rlimit; the soft limit (what the process gets) must be at least `min`.
    /// `memlock` shows values in bytes and flags one below glommio's minimum.
    Rlimit { min: u64, memlock: bool },
    /// Shown for information, always [`Status::Ok`]; the text is the advice.
    Report(&'static str),
    /// Exactly this word.
    Word(&'static str),
    /// irqbalance stopped, or running with banned CPUs.
    Irqbalance,
    /// A kernel release of at least `recommended` (major, minor); below `required` the
    /// check says that shards cannot start.
    Kernel {
        required: (u64, u64),
        recommended: (u64, u64),
    },
}

#[derive(Clone, Copy)]
enum Bound {
    AtLeast(u64),
    AtMost(u64),
}

impl Bound {
    fn admits(self, value: u64) -> bool {
        match self {
            Bound::AtLeast(min) => value >= min,
            Bound::AtMost(max) => value <= max,
        }
    }

    #[cfg(test)]
    fn value(self) -> u64 {
        match self {
            Bound::AtLeast(v) | Bound::AtMost(v) => v,
        }
    }
}

/// What reading one setting produced.
#[derive(Debug)]
enum Reading {
    /// The raw text, as the kernel wrote it (tabs, trailing newline and all).
    Value(String),
    /// This host does not have the setting (no such file).
    Absent,
    /// Reading failed for another reason.
    Unreadable(String),
}

/// glommio needs this much locked memory to start a shard at all (`MIN_MEMLOCK_LIMIT` in
/// glommio 0.9's `sys/uring.rs`); a lower `RLIMIT_MEMLOCK` is called out in the table.
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

const GOVERNOR_PATH: &str = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor";

/// Where distributions keep irqbalance's environment (Debian/Ubuntu, then Fedora/RHEL).
const IRQBALANCE_ENV: [&str; 2] = ["/etc/default/irqbalance", "/etc/sysconfig/irqbalance"];

/// Every setting `corelay tune` checks, in the order it prints them: hard requirements
/// first, then the kernel's network and file settings, then CPU placement. The values must
/// match `tuning/` (the tests check it).
const KNOBS: &[Knob] = &[
    Knob {
        name: "RLIMIT_NOFILE",
        source: Source::Rlimit(Limit::NoFile),
        rule: Rule::Rlimit {
            min: 1_048_576,
            memlock: false,
        },
        absent: None,
        why: "Descriptors this process may open: one per connection, plus listeners, rings and \
              eventfds per shard. At the limit accept fails with EMFILE and new players are \
              refused (counted in stats).",
    },
    Knob {
        name: "RLIMIT_MEMLOCK",
        source: Source::Rlimit(Limit::MemLock),
        rule: Rule::Rlimit {
            min: u64::MAX,
            memlock: true,
        },
        absent: None,
        why: "Locked memory: glommio refuses to start a shard below 512 KiB; corelay asks it \
              for 256 KiB per shard (its own rings and receive buffers are charged to the \
              memory cgroup instead). io_uring charges locked memory to the user, so run \
              corelay under its own user.",
    },
    Knob {
        name: "kernel.io_uring_disabled",
        source: Source::Sysctl,
        rule: Rule::Equal(0),
        absent: Some("absent (kernel < 6.6: io_uring always on)"),
        why: "1 allows io_uring only to kernel.io_uring_group, 2 forbids it to everyone; \
              corelay's shards run on io_uring and cannot start without it.",
    },
    Knob {
        name: "kernel",
        source: Source::Kernel,
        rule: Rule::Kernel {
            required: (6, 1),
            recommended: (6, 12),
        },
        absent: None,
        why: "Each shard's io_uring is single-issuer with deferred task work (Linux 6.1, \
              below which shards do not start); from 6.12 receives fill shared buffers \
              incrementally and a shard can wait for a batch of arrivals (batch_wait_us), \
              which cuts its CPU per delivery by a fifth to a half at game rates.",
    },
    Knob {
        name: "net.core.somaxconn",
        source: Source::Sysctl,
        rule: Rule::AtLeast(65_535),
        absent: None,
        why: "Caps every listen backlog: each shard's SO_REUSEPORT listener queues at most \
              this many completed handshakes. A reconnect storm (deploy, network blip) \
              overflows a short queue and clients wait for SYN retries (1 s, 3 s, ...).",
    },
    Knob {
        name: "net.ipv4.tcp_max_syn_backlog",
        source: Source::Sysctl,
        rule: Rule::AtLeast(65_535),
        absent: None,
        why: "Half-open handshakes kept per listener during a connect burst; beyond it the \
              kernel answers with SYN cookies or drops SYNs.",
    },
    Knob {
        name: "net.core.netdev_max_backlog",
        source: Source::Sysctl,
        rule: Rule::AtLeast(16_384),
        absent: None,
        why: "Packets queued per CPU between the NIC and TCP. A broadcast to many players \
              arrives as bursts of small packets; past the queue they are dropped and \
              retransmitted (second column of /proc/net/softnet_stat).",
    },
    Knob {
        name: "net.ipv4.tcp_mem",
        source: Source::Sysctl,
        rule: Rule::Triple([
            Bound::AtLeast(786_432),
            Bound::AtLeast(1_048_576),
            Bound::AtLeast(1_572_864),
        ]),
        absent: None,
        why: "Pages (4 KiB) all TCP sockets may hold: low, pressure, hard cap. Idle sockets \
              hold none; one unread small message holds about 4 KiB, so a burst towards \
              100k slow readers needs ~400 MiB. Values for a 16 GiB host; scale with RAM.",
    },
    Knob {
        name: "net.ipv4.tcp_rmem",
        source: Source::Sysctl,
        rule: Rule::Triple([
            Bound::AtMost(4096),
            Bound::AtMost(16_384),
            Bound::AtLeast(4_194_304),
        ]),
        absent: None,
        why: "Receive buffer per socket (min, default, max bytes). A small default bounds \
              what each of tens of thousands of sockets can queue while its shard is busy; \
              autotuning still grows busy sockets up to the max.",
    },
    Knob {
        name: "net.ipv4.tcp_wmem",
        source: Source::Sysctl,
        rule: Rule::Triple([
            Bound::AtMost(4096),
            Bound::AtMost(16_384),
            Bound::AtLeast(4_194_304),
        ]),
        absent: None,
        why: "Send buffer per socket (min, default, max bytes). corelay's bounded outbound \
              queue detects slow consumers; a large kernel buffer in front of it hides them \
              longer and holds memory per connection.",
    },
    Knob {
        name: "net.ipv4.tcp_slow_start_after_idle",
        source: Source::Sysctl,
        rule: Rule::Equal(0),
        absent: None,
        why: "With 1, a connection quiet for one retransmission timeout restarts from the \
              initial congestion window, so the first burst after a lull in a game can take \
              extra round trips.",
    },
    Knob {
        name: "net.ipv4.ip_local_port_range",
        source: Source::Sysctl,
        rule: Rule::PortRange {
            low: 10_240,
            high: 65_535,
        },
        absent: None,
        why: "Source ports for outgoing connections: a load generator needs one per \
              connection to one server address (the default allows ~28k), and so will the \
              Redis links of a cluster.",
    },
    Knob {
        name: "net.ipv4.tcp_tw_reuse",
        source: Source::Sysctl,
        rule: Rule::Equal(1),
        absent: None,
        why: "Lets outgoing connections reuse ports in TIME_WAIT, for load generators that \
              churn connections; 2 (the default) allows it on loopback only.",
    },
    Knob {
        name: "fs.file-max",
        source: Source::Sysctl,
        rule: Rule::AtLeast(2_097_152),
        absent: None,
        why: "Open files on the whole host; every WebSocket is one, on top of RLIMIT_NOFILE.",
    },
    Knob {
        name: "fs.nr_open",
        source: Source::Sysctl,
        rule: Rule::AtLeast(1_048_576),
        absent: None,
        why: "Ceiling for any process's RLIMIT_NOFILE: a LimitNOFILE above it makes the \
              service fail to start.",
    },
    Knob {
        name: "net.core.busy_poll",
        source: Source::Sysctl,
        rule: Rule::Report("0 (off unless measured)"),
        absent: None,
        why: "Microseconds poll/epoll spin on the NIC queue instead of sleeping. corelay \
              waits in io_uring, not epoll, so this rarely helps; see tuning/README.md.",
    },
    Knob {
        name: "net.core.busy_read",
        source: Source::Sysctl,
        rule: Rule::Report("0 (off unless measured)"),
        absent: None,
        why: "Microseconds a blocking socket read spins on the NIC queue. Needs a NAPI \
              driver and a spare core, does nothing on loopback; see tuning/README.md.",
    },
    Knob {
        name: "vm.max_map_count",
        source: Source::Sysctl,
        rule: Rule::Report("65530 (default is enough)"),
        absent: None,
        why: "Memory mappings per process. corelay maps memory per shard (allocator \
              segments, io_uring rings), not per connection, far below the default.",
    },
    Knob {
        name: "CPUs",
        source: Source::Cpus,
        rule: Rule::AtLeast(2),
        absent: None,
        why: "corelay runs one shard per CPU it may use. On one CPU the shard shares it \
              with interrupts and everything else, and so does any load generator.",
    },
    Knob {
        name: "irqbalance",
        source: Source::Irqbalance,
        rule: Rule::Irqbalance,
        absent: None,
        why: "irqbalance moves NIC interrupts between CPUs every 10 s, possibly onto a \
              shard's CPU where they preempt it. Stop it and pin IRQs, or ban the shard \
              CPUs with IRQBALANCE_BANNED_CPULIST.",
    },
    Knob {
        name: "cpufreq governor",
        source: Source::Governor,
        rule: Rule::Word("performance"),
        absent: Some("absent (no cpufreq: VM or fixed clock)"),
        why: "Other governors lower the clock while cores idle between game ticks and add \
              wake-up latency to the next message.",
    },
];

fn read(knob: &Knob) -> Reading {
    match knob.source {
        Source::Sysctl => read_file(&sysctl_path(knob.name)),
        Source::Rlimit(limit) => read_rlimit(limit),
        Source::Cpus => match std::thread::available_parallelism() {
            Ok(n) => Reading::Value(n.to_string()),
            Err(e) => Reading::Unreadable(e.to_string()),
        },
        Source::Irqbalance => read_irqbalance(),
        Source::Governor => read_file(GOVERNOR_PATH),
        Source::Kernel => read_file("/proc/sys/kernel/osrelease"),
    }
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

fn read_file(path: &str) -> Reading {
    match fs::read_to_string(path) {
        Ok(text) => Reading::Value(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Reading::Absent,
        Err(e) => Reading::Unreadable(e.to_string()),
    }
}

fn read_rlimit(limit: Limit) -> Reading {
    let resource = match limit {
        Limit::NoFile => libc::RLIMIT_NOFILE,
        Limit::MemLock => libc::RLIMIT_MEMLOCK,
    };
    let mut value = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` through a pointer to a live local.
    let rc = unsafe { libc::getrlimit(resource, &raw mut value) };
    if rc != 0 {
        return Reading::Unreadable(io::Error::last_os_error().to_string());
    }
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    Reading::Value(format!("{} {}", show(value.rlim_cur), show(value.rlim_max)))
}

fn read_irqbalance() -> Reading {
    let entries = match fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => return Reading::Unreadable(e.to_string()),
    };
    let running = entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        // A process may exit between listing and reading; its comm is then simply skipped.
        .any(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "irqbalance")
        });
    if !running {
        return Reading::Value("not running".to_owned());
    }
    let banned = IRQBALANCE_ENV
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .find_map(|env| banned_cpus(&env));
    match banned {
        Some(setting) => Reading::Value(format!("running, {setting}")),
        None => Reading::Value("running".to_owned()),
    }
}

/// The first active, non-empty `IRQBALANCE_BANNED_CPULIST=` or `IRQBALANCE_BANNED_CPUS=`
/// line of an irqbalance environment file, quotes removed.
fn banned_cpus(env: &str) -> Option<String> {
    env.lines().find_map(|line| {
        let (key, value) = line.trim().split_once('=')?;
        let key = key.trim();
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        let known = key == "IRQBALANCE_BANNED_CPULIST" || key == "IRQBALANCE_BANNED_CPUS";
        (known && !value.is_empty()).then(|| format!("{key}={value}"))
    })
}

/// Judges one reading against its knob. Pure: the host is not touched.
fn evaluate(knob: &Knob, reading: Reading) -> Check {
    let (current, status) = match reading {
        Reading::Value(raw) => judge(&knob.rule, &raw),
        Reading::Absent => match knob.absent {
            Some(meaning) => (meaning.to_owned(), Status::Ok),
            None => ("absent".to_owned(), Status::Unknown),
        },
        Reading::Unreadable(error) => (format!("unreadable: {error}"), Status::Unknown),
    };
    Check {
        name: knob.name,
        current,
        recommended: recommended(&knob.rule),
        status,
        why: knob.why,
    }
}

fn met(ok: bool) -> Status {
    if ok {
        Status::Ok
    } else {
        Status::Unmet
    }
}

/// Turns raw text into what the table shows and whether the rule holds.
fn judge(rule: &Rule, raw: &str) -> (String, Status) {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let shown = words.join(" ");
    let unparsable = || (format!("unparsable: {:?}", raw.trim()), Status::Unknown);
    match rule {
        Rule::AtLeast(min) => match single(&words) {
            Some(value) => (shown, met(value >= *min)),
            None => unparsable(),
        },
        Rule::Equal(want) => match single(&words) {
            Some(value) => (shown, met(value == *want)),
            None => unparsable(),
        },
        Rule::PortRange { low, high } => match integers::<2>(&words) {
            Some([from, to]) if from <= to => (shown, met(to - from >= high - low)),
            _ => unparsable(),
        },
        Rule::Triple(bounds) => match integers::<3>(&words) {
            Some(values) => {
                let ok = bounds.iter().zip(values).all(|(b, v)| b.admits(v));
                (shown, met(ok))
            }
            None => unparsable(),
        },
        Rule::Rlimit { min, memlock } => match integers_or_unlimited(&words) {
            Some([soft, hard]) => {
                let show = |v| show_limit(v, *memlock);
                let mut text = format!("soft {}, hard {}", show(soft), show(hard));
                if *memlock && soft < GLOMMIO_MIN_MEMLOCK {
                    text.push_str(" (below glommio's 512 KiB: shards cannot start)");
                }
                (text, met(soft >= *min))
            }
            None => unparsable(),
        },
        Rule::Report(_) => match single(&words) {
            Some(_) => (shown, Status::Ok),
            None => unparsable(),
        },
        Rule::Word(want) => match words.as_slice() {
            [word] => (shown, met(word == want)),
            _ => unparsable(),
        },
        Rule::Kernel {
            required,
            recommended,
        } => match kernel_version(&shown) {
            Some(version) if version < *required => {
                (format!("{shown} (shards cannot start)"), Status::Unmet)
            }
            Some(version) => (shown, met(version >= *recommended)),
            None => unparsable(),
        },
        Rule::Irqbalance => {
            if shown == "not running" || shown.starts_with("running, IRQBALANCE_BANNED_") {
                (shown, Status::Ok)
            } else if shown == "running" {
                (shown, Status::Unmet)
            } else {
                unparsable()
            }
        }
    }
}

/// (major, minor) of a kernel release such as `6.18.44-fc-v595`.
fn kernel_version(release: &str) -> Option<(u64, u64)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn single(words: &[&str]) -> Option<u64> {
    integers::<1>(words).map(|[v]| v)
}

fn integers<const N: usize>(words: &[&str]) -> Option<[u64; N]> {
    if words.len() != N {
        return None;
    }
    let mut values = [0; N];
    for (slot, word) in values.iter_mut().zip(words) {
        *slot = word.parse().ok()?;
    }
    Some(values)
}

/// Like [`integers`], with "unlimited" (as `getrlimit` reports `RLIM_INFINITY`, and as
/// `ulimit` prints it) read as `u64::MAX`.
fn integers_or_unlimited(words: &[&str]) -> Option<[u64; 2]> {
    match words {
        [soft, hard] => Some([limit_value(soft)?, limit_value(hard)?]),
        _ => None,
    }
}

fn limit_value(word: &str) -> Option<u64> {
    match word {
        "unlimited" | "infinity" => Some(u64::MAX),
        _ => word.parse().ok(),
    }
}

fn show_limit(value: u64, bytes: bool) -> String {
    match value {
        u64::MAX => "unlimited".to_owned(),
        v if bytes && v >= 1024 * 1024 && v % (1024 * 1024) == 0 => {
            format!("{} MiB", v / (1024 * 1024))
        }
        v if bytes && v >= 1024 && v % 1024 == 0 => format!("{} KiB", v / 1024),
        v => v.to_string(),
    }
}

/// The recommendation as the table shows it, comparison included.
fn recommended(rule: &Rule) -> String {
    match rule {
        Rule::AtLeast(min) => format!(">= {min}"),
        Rule::Equal(want) => want.to_string(),
        Rule::PortRange { low, high } => {
            format!("{low} {high} (>= {} ports)", high - low + 1)
        }
        Rule::Triple(bounds) => bounds
            .iter()
            .map(|bound| match bound {
                Bound::AtLeast(v) => format!(">={v}"),
                Bound::AtMost(v) => format!("<={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Rule::Rlimit { min: u64::MAX, .. } => "unlimited".to_owned(),
        Rule::Rlimit { min, memlock } => format!("soft >= {}", show_limit(*min, *memlock)),
        Rule::Report(advice) => (*advice).to_owned(),
        Rule::Word(want) => (*want).to_owned(),
        Rule::Irqbalance => "stopped, or shard CPUs banned".to_owned(),
        Rule::Kernel {
            required,
            recommended,
        } => format!(
            ">= {}.{} (needs {}.{})",
            recommended.0, recommended.1, required.0, required.1
        ),
    }
}

/// The value as written in `tuning/` (sysctl.conf, limits.conf), for the agreement tests.
#[cfg(test)]
fn file_value(rule: &Rule) -> Option<String> {
    match rule {
        Rule::AtLeast(v) | Rule::Equal(v) => Some(v.to_string()),
        Rule::PortRange { low, high } => Some(format!("{low} {high}")),
        Rule::Triple(bounds) => Some(
            bounds
                .iter()
                .map(|b| b.value().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Rule::Rlimit { min: u64::MAX, .. } => Some("unlimited".to_owned()),
        Rule::Rlimit { min, .. } => Some(min.to_string()),
        Rule::Report(_) | Rule::Word(_) | Rule::Irqbalance | Rule::Kernel { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knob(name: &str) -> &'static Knob {
        KNOBS
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no knob {name}"))
    }

    fn check(name: &str, raw: &str) -> Check {
        evaluate(knob(name), Reading::Value(raw.to_owned()))
    }

    #[test]
    fn port_range_is_judged_by_its_width() {
        let default = check("net.ipv4.ip_local_port_range", "32768\t60999\n");
        assert_eq!(default.current, "32768 60999");
        assert_eq!(default.status, Status::Unmet);
        assert_eq!(default.recommended, "10240 65535 (>= 55296 ports)");
        assert!(check("net.ipv4.ip_local_port_range", "10240\t65535\n").is_met());
        assert!(check("net.ipv4.ip_local_port_range", "1024 65535").is_met());
        let reversed = check("net.ipv4.ip_local_port_range", "60999 32768");
        assert_eq!(reversed.status, Status::Unknown);
        let short = check("net.ipv4.ip_local_port_range", "32768");
        assert_eq!(short.status, Status::Unknown);
    }

    #[test]
    fn tcp_mem_needs_every_threshold_high_enough() {
        let small = check("net.ipv4.tcp_mem", "287898\t383867\t575796\n");
        assert_eq!(small.status, Status::Unmet);
        assert_eq!(small.current, "287898 383867 575796");
        assert!(check("net.ipv4.tcp_mem", "786432 1048576 1572864").is_met());
        assert_eq!(
            check("net.ipv4.tcp_mem", "786432 1048576 1000").status,
            Status::Unmet
        );
        assert_eq!(check("net.ipv4.tcp_mem", "1 2").status, Status::Unknown);
        assert_eq!(check("net.ipv4.tcp_mem", "a b c").status, Status::Unknown);
    }

    #[test]
    fn socket_buffers_want_small_defaults_and_room_to_grow() {
        // Kernel defaults since 4.20: receive default 128 KiB, send default 16 KiB.
        let rmem = check("net.ipv4.tcp_rmem", "4096\t131072\t6291456\n");
        assert_eq!(rmem.status, Status::Unmet);
        assert_eq!(rmem.recommended, "<=4096 <=16384 >=4194304");
        assert!(check("net.ipv4.tcp_wmem", "4096\t16384\t4194304\n").is_met());
        let capped = check("net.ipv4.tcp_wmem", "4096 16384 65536");
        assert_eq!(capped.status, Status::Unmet);
    }

    #[test]
    fn scalars_compare_as_integers() {
        assert_eq!(check("net.core.somaxconn", "4096\n").status, Status::Unmet);
        assert!(check("net.core.somaxconn", "65535\n").is_met());
        assert!(check("net.core.somaxconn", "1000000").is_met());
        assert_eq!(check("net.core.somaxconn", "").status, Status::Unknown);
        assert_eq!(check("net.core.somaxconn", "-1").status, Status::Unknown);
        assert!(check("net.ipv4.tcp_slow_start_after_idle", "0\n").is_met());
        assert!(!check("net.ipv4.tcp_slow_start_after_idle", "1\n").is_met());
        // 2 means loopback only: not enough for a load generator on another host.
        assert!(!check("net.ipv4.tcp_tw_reuse", "2\n").is_met());
        assert!(check("net.ipv4.tcp_tw_reuse", "1\n").is_met());
    }

    #[test]
    fn kernels_below_6_1_cannot_run_shards_and_6_12_is_recommended() {
        let old = check("kernel", "5.15.0-91-generic\n");
        assert_eq!(old.status, Status::Unmet);
        assert!(old.current.contains("shards cannot start"));
        let plain = check("kernel", "6.6.30\n");
        assert_eq!(plain.status, Status::Unmet);
        assert!(!plain.current.contains("cannot start"));
        assert!(check("kernel", "6.12.0").is_met());
        assert!(check("kernel", "6.18.44-fc-v595\n").is_met());
        assert!(check("kernel", "7.0.1").is_met());
        assert_eq!(check("kernel", "banana").status, Status::Unknown);
    }

    #[test]
    fn rlimits_read_unlimited_as_the_largest_value() {
        assert_eq!(limit_value("unlimited"), Some(u64::MAX));
        assert_eq!(limit_value("infinity"), Some(u64::MAX));
        assert_eq!(limit_value("20000"), Some(20_000));
        assert_eq!(limit_value("lots"), None);

        // The test machine: 20000 files and 8 MiB locked, not raisable there.
        let files = check("RLIMIT_NOFILE", "20000 20000");
        assert_eq!(files.current, "soft 20000, hard 20000");
        assert_eq!(files.recommended, "soft >= 1048576");
        assert_eq!(files.status, Status::Unmet);
        let locked = check("RLIMIT_MEMLOCK", "8388608 8388608");
        assert_eq!(locked.current, "soft 8 MiB, hard 8 MiB");
        assert_eq!(locked.recommended, "unlimited");
        assert_eq!(locked.status, Status::Unmet);

        assert!(check("RLIMIT_NOFILE", "1048576 1048576").is_met());
        assert!(check("RLIMIT_NOFILE", "unlimited unlimited").is_met());
        assert!(check("RLIMIT_MEMLOCK", "unlimited unlimited").is_met());
        // Only the soft limit counts: it is what the process gets unless it raises it.
        assert!(!check("RLIMIT_NOFILE", "1024 1048576").is_met());
        assert_eq!(check("RLIMIT_NOFILE", "1024").status, Status::Unknown);
    }

    #[test]
    fn memlock_below_glommio_minimum_is_shown_in_kib() {
        let tiny = check("RLIMIT_MEMLOCK", "65536 65536");
        assert_eq!(
            tiny.current,
            "soft 64 KiB, hard 64 KiB (below glommio's 512 KiB: shards cannot start)"
        );
        assert!(!tiny.is_met());
    }

    #[test]
    fn absence_means_what_the_knob_says() {
        let io_uring = evaluate(knob("kernel.io_uring_disabled"), Reading::Absent);
        assert!(io_uring.is_met());
        assert!(io_uring.current.contains("always on"));
        assert!(check("kernel.io_uring_disabled", "0\n").is_met());
        assert_eq!(
            check("kernel.io_uring_disabled", "2\n").status,
            Status::Unmet
        );

        let governor = evaluate(knob("cpufreq governor"), Reading::Absent);
        assert!(governor.is_met());
        assert!(check("cpufreq governor", "performance\n").is_met());
        assert!(!check("cpufreq governor", "powersave\n").is_met());

        let somaxconn = evaluate(knob("net.core.somaxconn"), Reading::Absent);
        assert_eq!(somaxconn.status, Status::Unknown);
        let denied = evaluate(
            knob("net.core.somaxconn"),
            Reading::Unreadable("Permission denied (os error 13)".to_owned()),
        );
        assert_eq!(denied.status, Status::Unknown);
        assert!(denied.current.contains("Permission denied"));
    }

    #[test]
    fn reported_settings_are_never_unmet() {
        assert!(check("net.core.busy_poll", "0\n").is_met());
        assert!(check("net.core.busy_poll", "50\n").is_met());
        assert_eq!(check("net.core.busy_read", "x").status, Status::Unknown);
    }

    #[test]
    fn irqbalance_is_fine_when_stopped_or_kept_off_shard_cpus() {
        assert!(check("irqbalance", "not running").is_met());
        assert!(check("irqbalance", "running, IRQBALANCE_BANNED_CPULIST=2-7").is_met());
        assert_eq!(check("irqbalance", "running").status, Status::Unmet);
        assert_eq!(check("irqbalance", "maybe").status, Status::Unknown);

        let debian = "# comment\n#IRQBALANCE_BANNED_CPULIST=1\nIRQBALANCE_BANNED_CPULIST=\"2-7\"\n";
        assert_eq!(
            banned_cpus(debian).as_deref(),
            Some("IRQBALANCE_BANNED_CPULIST=2-7")
        );
        assert_eq!(
            banned_cpus("IRQBALANCE_BANNED_CPUS=fc\n").as_deref(),
            Some("IRQBALANCE_BANNED_CPUS=fc")
        );
        assert_eq!(banned_cpus("IRQBALANCE_BANNED_CPULIST=\n"), None);
        assert_eq!(banned_cpus("IRQBALANCE_ONESHOT=1\n"), None);
    }

    #[test]
    fn cpus_want_one_for_the_shard_and_one_for_the_rest() {
        assert!(!check("CPUs", "1").is_met());
        assert!(check("CPUs", "2").is_met());
    }

    /// Active `key = value` lines of a sysctl.d file; a leading `-` (ignore if the key is
    /// missing) is dropped.
    fn sysctl_lines(text: &str) -> Vec<(String, String)> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
            .map(|line| {
                let (key, value) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not key = value: {line}"));
                let key = key.trim().trim_start_matches('-').to_owned();
                let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
                (key, value)
            })
            .collect()
    }

    #[test]
    fn sysctl_conf_and_checks_agree() {
        let conf = include_str!("../tuning/sysctl.conf");
        let lines = sysctl_lines(conf);
        assert!(!lines.is_empty());
        for (key, value) in &lines {
            let knob = KNOBS
                .iter()
                .find(|k| matches!(k.source, Source::Sysctl) && k.name == key)
                .unwrap_or_else(|| {
                    panic!("tuning/sysctl.conf sets {key}, tune.rs does not check it")
                });
            assert_eq!(
                file_value(&knob.rule).as_deref(),
                Some(value.as_str()),
                "{key}: tuning/sysctl.conf and tune.rs disagree"
            );
            // The file's value must itself pass the check.
            assert!(
                check(key, value).is_met(),
                "{key} = {value} fails its own check"
            );
        }
        for knob in KNOBS.iter().filter(|k| matches!(k.source, Source::Sysctl)) {
            let set = lines.iter().any(|(key, _)| key == knob.name);
            match knob.rule {
                // Informational knobs are discussed in the file but left unset.
                Rule::Report(_) => assert!(
                    !set && conf.contains(knob.name),
                    "{} should be discussed, not set, in tuning/sysctl.conf",
                    knob.name
                ),
                _ => assert!(
                    set,
                    "tune.rs checks {}, tuning/sysctl.conf does not set it",
                    knob.name
                ),
            }
        }
    }

    #[test]
    fn limits_conf_and_checks_agree() {
        let conf = include_str!("../tuning/limits.conf");
        let mut seen = Vec::new();
        for line in conf.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [domain, kind, item, value] = fields[..] else {
                panic!("not `domain type item value`: {line}");
            };
            assert_eq!(domain, "corelay", "limits are for the service user: {line}");
            assert!(kind == "soft" || kind == "hard", "{line}");
            let name = match item {
                "nofile" => "RLIMIT_NOFILE",
                "memlock" => "RLIMIT_MEMLOCK",
                other => panic!("tune.rs does not check limit {other}"),
            };
            assert_eq!(
                file_value(&knob(name).rule).as_deref(),
                Some(value),
                "{line}"
            );
            seen.push((item, kind));
        }
        for item in ["nofile", "memlock"] {
            for kind in ["soft", "hard"] {
                assert!(
                    seen.contains(&(item, kind)),
                    "limits.conf lacks {kind} {item}"
                );
            }
        }
    }

    #[test]
    fn systemd_unit_and_checks_agree() {
        let unit = include_str!("../tuning/corelay.service");
        let setting = |key: &str| {
            unit.lines()
                .map(str::trim)
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("corelay.service lacks {key}="))
                .trim()
                .to_owned()
        };
        let nofile = file_value(&knob("RLIMIT_NOFILE").rule);
        assert_eq!(Some(setting("LimitNOFILE")), nofile);
        // systemd spells an unlimited rlimit "infinity".
        assert_eq!(setting("LimitMEMLOCK"), "infinity");
        assert_eq!(
            file_value(&knob("RLIMIT_MEMLOCK").rule).as_deref(),
            Some("unlimited")
        );
        assert_eq!(setting("KillSignal"), "SIGTERM");
        assert_eq!(
            setting("ExecStart"),
            "/usr/local/bin/corelay serve --config /etc/corelay/corelay.toml"
        );
    }

    #[test]
    fn render_aligns_columns_and_explains_what_is_unmet() {
        let checks = vec![
            check("net.core.somaxconn", "4096"),
            check("CPUs", "2"),
            evaluate(
                knob("fs.nr_open"),
                Reading::Unreadable("Permission denied".to_owned()),
            ),
        ];
        let text = render(&checks);
        let table: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("SETTING"))
            .take_while(|line| !line.is_empty())
            .collect();
        assert_eq!(table.len(), 4);
        let status_at = table[0].find("STATUS").unwrap_or(0);
        assert!(status_at > 0);
        for (line, label) in table[1..].iter().zip(["UNMET", "ok", "unknown"]) {
            assert_eq!(&line[status_at..], label, "{line}");
        }
        assert!(text.starts_with("corelay tune: 3 checks, 1 ok, 1 unmet, 1 unknown"));
        assert!(text.contains(&format!(
            "net.core.somaxconn: {}",
            knob("net.core.somaxconn").why
        )));
        assert!(text.contains("fs.nr_open: "));
        assert!(!text.contains("CPUs: "));
        assert!(text.contains("tuning/README.md"));
    }

    #[test]
    fn all_met_only_when_every_check_is_ok() {
        let ok = check("CPUs", "4");
        let unmet = check("CPUs", "1");
        let unknown = check("CPUs", "many");
        assert!(all_met(&[]));
        assert!(all_met(std::slice::from_ref(&ok)));
        assert!(!all_met(&[ok.clone(), unmet]));
        assert!(!all_met(&[ok, unknown]));
    }

    #[test]
    fn inspect_reports_every_knob_once() {
        let checks = inspect();
        assert_eq!(checks.len(), KNOBS.len());
        for (check, knob) in checks.iter().zip(KNOBS) {
            assert_eq!(check.name, knob.name);
            assert!(!check.current.is_empty());
        }
        let mut names: Vec<_> = KNOBS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KNOBS.len());
    }
}
