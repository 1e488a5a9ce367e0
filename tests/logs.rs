//! The `corelay` binary's log (docs/OPERATIONS.md, "Logs"): JSON lines on stderr, a debug
//! line for each connection opened and closed, and warnings that a flood cannot multiply.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_corelay");

/// Longest wait for one expected log line.
const WAIT: Duration = Duration::from_secs(10);

/// A `corelay serve` started by this test: killed (by its PID, through its handle) when
/// the test ends, however it ends.
struct Running {
    child: Child,
    addr: SocketAddr,
    /// Its stderr, a line at a time: parsed JSON, or the line that is not JSON.
    log: mpsc::Receiver<Result<Value, String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `corelay serve` on 127.0.0.1:0 with one shard, `args` and `env`, and reads its
/// start line for the address.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (start_tx, start_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = start_tx.send(line);
        }
    });
    let first = start_rx.recv_timeout(WAIT).expect("a start line");
    let addr = common::start_line_addr(&first);
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str::<Value>(&line).map_err(|_| line);
            if tx.send(parsed).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        addr,
        log: rx,
    }
}

impl Running {
    /// The next log line, within `until`; every line must be a JSON object.
    fn next_line(&self, until: Instant) -> Option<Value> {
        let left = until.checked_duration_since(Instant::now())?;
        match self.log.recv_timeout(left) {
            Ok(Ok(v)) => {
                assert!(v.is_object(), "{v}");
                Some(v)
            }
            Ok(Err(line)) => panic!("a log line that is not JSON: {line}"),
            Err(_) => None,
        }
    }

    /// The first log line with `message`, within [`WAIT`].
    fn line_with(&self, message: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + WAIT;
        while let Some(v) = self.next_line(until) {
            if v["message"] == message && pred(&v) {
                return v;
            }
        }
        panic!("no `{message}` line within {WAIT:?}");
    }

    /// Stops the server with SIGTERM, as an operator does, and waits for its exit.
    fn stop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("did not exit within {WAIT:?}");
    }
}

#[test]
fn json_log_has_a_debug_line_for_each_connection_opened_and_closed() {
    let dir = std::env::temp_dir().join(format!("corelay-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("corelay.toml");
    std::fs::write(&file, "[log]\nlevel = \"debug\"\nformat = \"json\"\n").unwrap();
    let mut srv = serve(&["--config", file.to_str().unwrap()], &[]);
    let started = srv.line_with("corelay started", |_| true);
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["listen"], srv.addr.to_string());

    // A WebSocket client on /ws that leaves with a close frame.
    let stream = TcpStream::connect(srv.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let me = stream.local_addr().unwrap().to_string();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/ws", srv.addr), stream).unwrap();
    let opened = srv.line_with("connection opened", |v| v["peer"] == me);
    assert_eq!(opened["level"], "DEBUG");
    assert_eq!(opened["shard"], 0);
    assert_eq!(opened["target"], "corelay::shard::driver");
    ws.close(None).unwrap();
    // Until the server's answer and its end of the connection.
    while ws.read().is_ok() {}
    let closed = srv.line_with("connection closed", |v| v["peer"] == me);
    assert_eq!(closed["level"], "DEBUG");
    assert_eq!(closed["shard"], 0);
    assert_eq!(closed["reason"], "peer", "{closed}");

    // A request the front cannot route is closed as a bad request.
    let mut bad = TcpStream::connect(srv.addr).unwrap();
    let bad_me = bad.local_addr().unwrap().to_string();
    std::io::Write::write_all(&mut bad, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    let _ = bad.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let closed = srv.line_with("connection closed", |v| v["peer"] == bad_me);
    assert_eq!(closed["reason"], "bad_request", "{closed}");

    srv.stop();
    srv.line_with("corelay stopped", |v| v["level"] == "INFO");
}

#[test]
fn a_flood_of_refused_connections_writes_a_few_warnings_and_counts_the_rest() {
    const FLOOD: u64 = 200;
    // `RUST_LOG` wins over `log.level` (off here): without it there would be no line.
    let srv = serve(
        &[],
        &[
            ("CORELAY_LOG_FORMAT", "json"),
            ("CORELAY_LOG_LEVEL", "off"),
            ("RUST_LOG", "warn"),
            ("CORELAY_MAX_CONNECTIONS_PER_IP", "1"),
            ("CORELAY_HANDSHAKE_TIMEOUT_MS", "60000"),
        ],
    );
    // The one connection 127.0.0.1 may have, kept open (silent) through the flood.
    let _held = TcpStream::connect(srv.addr).unwrap();
    let flood_began = Instant::now();
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    }
    let windows = flood_began.elapsed().as_secs() + 1;

    // Every refusal is either written or counted in a summary, once its window ends.
    let (mut written, mut counted, mut summaries) = (0u64, 0u64, 0u64);
    let until = Instant::now() + WAIT;
    while written + counted < FLOOD {
        let v = srv
            .next_line(until)
            .unwrap_or_else(|| panic!("{written} written and {counted} counted of {FLOOD}"));
        assert_eq!(v["level"], "WARN", "{v}");
        if v["message"] == "connection refused" {
            assert_eq!(v["reason"], "connections_per_ip", "{v}");
            assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
            assert_eq!(v["shard"], 0);
            written += 1;
        } else if v["warning"] == "refused" {
            let n = v["suppressed"].as_u64().unwrap_or_else(|| panic!("{v}"));
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("suppressed {n}")),
                "{v}"
            );
            counted += n;
            summaries += 1;
        } else {
            panic!("unexpected line: {v}");
        }
    }
    assert_eq!(written + counted, FLOOD);
    let per_window = u64::from(corelay::logs::WARNINGS_PER_WINDOW);
    assert!(
        written <= per_window * windows,
        "{written} warnings over {windows} window(s)"
    );
    assert!(
        (1..=windows).contains(&summaries),
        "{summaries} summaries over {windows} window(s)"
    );
}

#[test]
fn a_client_closed_for_its_rate_is_a_warning_at_the_default_level() {
    let srv = serve(
        &[],
        &[
            ("CORELAY_LOG_FORMAT", "json"),
            ("CORELAY_RATE_LIMITS_NATIVE_MESSAGES_PER_S", "20"),
            ("CORELAY_RATE_LIMITS_NATIVE_MESSAGES_BURST", "2"),
            ("CORELAY_RATE_LIMITS_SUSTAINED_MS", "300"),
        ],
    );
    let addr = srv.addr;
    common::run(move || async move {
        let mut client = common::connect(addr).await;
        client.join("r").await.unwrap();
        let (tx, mut rx) = client.split();
        // Two hundred a second against twenty allowed.
        let (stop, flood) = common::paced_flood(tx, "r");
        let closed = common::close_of(&mut rx).await;
        stop.set(true);
        flood.await;
        assert_eq!(closed, Some((1008, "rate limited".to_owned())));
    });
    let warning = srv.line_with("connection closed for exceeding its rate limits", |_| true);
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["reason"], "rate_limited");
    assert_eq!(warning["shard"], 0);
    assert!(
        warning["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{warning}"
    );
}
