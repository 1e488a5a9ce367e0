//! The `corelay` binary: start line, signals, startup failures, stats logging, `tune`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_corelay");

struct Running {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

fn serve(args: &[&str]) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(args);
    spawn(cmd)
}

/// Starts a server command and reads its start line for the address.
fn spawn(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("start line");
    let addr = common::start_line_addr(&first);
    Running {
        child,
        addr,
        lines: rx,
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM drains (docs/OPERATIONS.md, "Drain"): `/readyz` answers 503 while new
/// connections are still accepted for `drain_accept_ms`; then every client is told to go
/// (native `Draining`; Socket.IO: its transport closes) after everything sent to it before
/// (nothing in flight is lost), a client that leaves is let go, one that stays is closed
/// with 1001 at `drain_timeout_ms`, and the process exits 0.
#[test]
fn sigterm_drains_tells_every_client_to_go_loses_nothing_and_exits_zero() {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
        .env("CORELAY_DRAIN_ACCEPT_MS", "400")
        .env("CORELAY_DRAIN_TIMEOUT_MS", "1000");
    let mut srv = spawn(cmd);
    let addr = srv.addr;
    let pid = srv.child.id() as i32;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (signalled_tx, signalled_rx) = mpsc::channel::<()>();
    const SENT: usize = 200;
    let clients = std::thread::spawn(move || {
        use common::eio::{next_starting, sio_connect, ws_send};
        use corelay::client::{PayloadKind, ServerEvent};
        common::run(move || async move {
            let mut a = common::connect(addr).await;
            let mut b = common::connect(addr).await;
            let (c, mut c_codec, _) = sio_connect(addr, "/").await;
            a.join("arena").await.unwrap();
            b.join("arena").await.unwrap();
            ws_send(&c, r#"420["join","arena"]"#).await;
            next_starting(&c, &mut c_codec, "430").await;
            // Sent as the signal goes: some are still in flight when the drain starts.
            for i in 0..SENT as u32 {
                a.send("arena", "move", &i.to_be_bytes(), PayloadKind::Binary)
                    .await
                    .unwrap();
            }
            ready_tx.send(()).unwrap();
            signalled_rx.recv().unwrap();
            // Not ready any more, still accepting for drain_accept_ms.
            let ready = common::eio::request(addr, "GET", "/readyz", "", "").await;
            assert_eq!(ready.status, 503, "{}", ready.body);
            assert!(ready.body.contains("\"draining\":true"), "{}", ready.body);
            // b gets every message, then Draining, and stays.
            let mut got = 0;
            let reconnect = loop {
                match b.next_event().await.unwrap() {
                    ServerEvent::Message { payload, .. } => {
                        assert_eq!(payload[..], (got as u32).to_be_bytes());
                        got += 1;
                    }
                    ServerEvent::Draining { reconnect_after_ms } => break reconnect_after_ms,
                    _ => {}
                }
            };
            assert_eq!(got, SENT, "every message before the drain's notice");
            assert!(reconnect < 5_000, "{reconnect}");
            // The Socket.IO client: every message, then its transport closes.
            let mut got = 0;
            loop {
                match common::eio::sio_next(&c, &mut c_codec).await {
                    Some(m) if m.starts_with("451-[\"move\"") || m.starts_with("42[\"move\"") => {
                        got += 1
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            assert_eq!(got, SENT, "the Socket.IO client too");
            // a leaves by itself; b stays until the drain's timeout closes it.
            a.close().await.unwrap();
            assert_eq!(b.closed().await.map(|c| c.0), Some(1001));
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let signalled = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    signalled_tx.send(()).unwrap();
    let status = wait_exit(&mut srv.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    // drain_accept_ms + drain_timeout_ms, then b's close: not the 10 s default.
    assert!(
        signalled.elapsed() >= Duration::from_millis(1_400),
        "exited after {:?}, before b's drain timeout",
        signalled.elapsed()
    );
    clients.join().unwrap();
}

/// A second SIGTERM closes the clients still there at once.
#[test]
fn a_second_sigterm_closes_the_rest_at_once() {
    let mut srv = serve(&["--listen", "127.0.0.1:0", "--shards", "1"]);
    let addr = srv.addr;
    let pid = srv.child.id() as i32;
    let (tx, rx) = mpsc::channel();
    let clients = std::thread::spawn(move || {
        common::run(move || async move {
            let mut a = common::connect(addr).await;
            a.ping().await.unwrap();
            tx.send(()).unwrap();
            loop {
                if let corelay::client::ServerEvent::Draining { .. } = a.next_event().await.unwrap()
                {
                    break;
                }
            }
            tx.send(()).unwrap();
            assert_eq!(a.closed().await.map(|c| c.0), Some(1001));
        })
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let second = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = wait_exit(&mut srv.child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    // Not the 10 s drain timeout.
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    clients.join().unwrap();
}

#[test]
fn a_taken_port_fails_with_one_line_and_non_zero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot listen"), "{err}");
}

#[test]
fn bad_configuration_fails_with_one_line_and_non_zero() {
    for args in [
        vec!["serve", "--config", "/nonexistent/corelay.toml"],
        vec!["serve", "--listen", "not-an-address"],
        vec!["serve", "--listen", "127.0.0.1:0", "--cpus", "999"],
        // Player ids hold the shard number in 10 bits.
        vec!["serve", "--listen", "127.0.0.1:0", "--shards", "1025"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CORELAY_MAX_MESSAGE_SIZE", "zero")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn stats_interval_logs_merged_stats() {
    let mut srv = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--stats-interval",
        "1",
    ]);
    let line = srv
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a stats line");
    assert!(line.starts_with("stats conns="), "{line}");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGINT) };
    assert!(wait_exit(&mut srv.child, Duration::from_secs(5)).success());
}

#[test]
fn tune_prints_a_table_and_strict_reflects_the_host() {
    let out = Command::new(BIN).arg("tune").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("fs.nr_open") || table.contains("nofile"),
        "{table}"
    );
    let strict = Command::new(BIN)
        .args(["tune", "--strict"])
        .output()
        .unwrap();
    let all_met = corelay::tune::all_met(&corelay::tune::inspect());
    assert_eq!(strict.status.success(), all_met);
}

#[test]
fn out_of_file_descriptors_accept_keeps_serving_and_counts_refusals() {
    // A server limited to 64 descriptors, flooded with 150 silent connections.
    let script = format!(
        "ulimit -n 64 && exec {BIN} serve --listen 127.0.0.1:0 --shards 1 --stats-interval 1"
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .env("CORELAY_HANDSHAKE_TIMEOUT_MS", "500");
    let Running {
        mut child,
        addr,
        lines: rx,
    } = spawn(cmd);
    let (done_tx, done_rx) = mpsc::channel();
    let clients = std::thread::spawn(move || {
        common::run(move || async move {
            let mut player = common::connect(addr).await;
            let mut flood = Vec::new();
            for _ in 0..150 {
                if let Ok(s) = glommio::net::TcpStream::connect(addr).await {
                    flood.push(s);
                }
            }
            // The connected player is still served while accept fails for the flood.
            player.ping().await.expect("served during the flood");
            done_tx.send(()).unwrap();
            drop(flood);
            // Once descriptors free up (silent connections time out), new clients get in.
            let mut late = common::connect(addr).await;
            late.ping()
                .await
                .expect("a new client is served after the flood");
        })
    });
    done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0u64;
    while Instant::now() < deadline && refused == 0 {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            refused = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("accept_errors="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    clients.join().unwrap();
    assert!(refused > 0, "accept errors were counted");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());
}

#[test]
fn a_locked_memory_limit_too_low_for_io_uring_fails_with_one_line() {
    // glommio needs at least 512 KiB of locked memory per process; 64 KiB is refused.
    let script = format!("ulimit -l 64 && exec {BIN} serve --listen 127.0.0.1:0 --shards 1");
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("memlock") || err.contains("locked"), "{err}");
}

/// The player id a fresh client of a freshly started `corelay serve` gets; the server is
/// stopped again before returning.
fn first_player_id_of_a_fresh_process() -> u64 {
    let mut srv = serve(&["--listen", "127.0.0.1:0", "--shards", "1"]);
    let addr = srv.addr;
    let (tx, rx) = mpsc::channel();
    common::run(move || async move {
        let client = common::connect(addr).await;
        // An anonymous player's id is its relay id in decimal.
        tx.send(client.player().parse::<u64>().unwrap()).unwrap();
        let _ = client.close().await;
    });
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut srv.child, Duration::from_secs(5)).success());
    rx.recv().unwrap()
}

#[test]
fn player_ids_are_not_reused_by_a_restarted_server() {
    // A client that reconnects after a restart must not be given the id another player
    // had before it (ids used to restart at 1 in every process).
    let before = first_player_id_of_a_fresh_process();
    let after = first_player_id_of_a_fresh_process();
    assert_ne!(before, after);
    assert!(after > before, "{before} then {after}");
}

/// The `THP_enabled` line of a process's status: whether its memory may be backed by
/// transparent huge pages.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("a kernel that reports THP_enabled")
        .trim()
        .to_owned()
}

/// `corelay serve` runs without transparent huge pages unless `huge_pages` is set: a 2 MiB
/// page zeroed inside a fault stalls a shard for milliseconds (docs/BENCHMARKS.md).
#[test]
fn serve_turns_transparent_huge_pages_off_unless_asked() {
    let mut off = serve(&["--listen", "127.0.0.1:0", "--shards", "1"]);
    assert_eq!(thp_enabled(off.child.id()), "0");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .env("CORELAY_HUGE_PAGES", "true");
    let mut on = spawn(cmd);
    assert_eq!(thp_enabled(on.child.id()), "1");
    for r in [&mut off, &mut on] {
        r.child.kill().unwrap();
        r.child.wait().unwrap();
    }
}

/// `corelay drain` drains a running server through its admin API, with the admin token;
/// a wrong token is refused and changes nothing.
#[test]
fn corelay_drain_drains_a_running_server_with_the_admin_token() {
    const TOKEN: &str = "drain-test-admin-token";
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .env("CORELAY_ADMIN_TOKEN", TOKEN);
    let mut srv = spawn(cmd);
    let addr = srv.addr.to_string();
    let wrong = Command::new(BIN)
        .args(["drain", "--addr", &addr, "--token", "not-the-admin-token"])
        .env_remove("CORELAY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("refused"));
    assert!(srv.child.try_wait().unwrap().is_none(), "still serving");
    let out = Command::new(BIN)
        .args(["drain", "--addr", &addr])
        .env("CORELAY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"draining\":true"));
    let status = wait_exit(&mut srv.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
