//! The Node side of tests that drive the official clients (`tests/interop/`): a checked
//! `node` command and [`MixedPeer`], one peer script's process read line by line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `tests/interop/`, where the Node scripts and their `node_modules` live.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
}

/// `node`, run in `tests/interop/`; fails with `setup` (how to install the prerequisites)
/// when node or the npm socket.io-client is missing.
pub fn command(setup: &str) -> Command {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules").join("socket.io-client").is_dir(),
        "{} has no node_modules/socket.io-client ({setup})",
        dir.display()
    );
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`node` is not on PATH ({setup})");
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir);
    cmd
}

/// Reads `pipe` to its end on a thread; the handle yields the text.
pub fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` at most `budget`; kills it and returns `None` past that.
pub fn wait_bounded(child: &mut Child, budget: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + budget;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (a `node --test` suite, or pytest) to completion within `budget` and fails
/// with its output unless it exits 0.
pub fn run_suite(name: &str, mut cmd: Command, budget: Duration) {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    // In a process group of its own: `node --test` runs each file in a child process, which
    // starts servers (and browsers) of its own; a file that fails with them still open can
    // outlive its runner. Whatever is left of the group is stopped when the suite ends.
    cmd.process_group(0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let group = child.id() as libc::pid_t;
    let status = wait_bounded(&mut child, budget);
    // SAFETY: signals the process group this suite's child leads (its pid is the group id);
    // nothing of ours outside it.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let out = stdout.join().expect("stdout reader");
    let err = stderr.join().expect("stderr reader");
    let elapsed = started.elapsed();
    match status {
        Some(s) if s.success() => {
            eprintln!("{name}: passed in {elapsed:.1?}");
        }
        _ => panic!(
            "{name} failed ({}) after {elapsed:.1?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
            status.map_or_else(|| "timed out, killed".to_owned(), |s| s.to_string())
        ),
    }
}

/// A node peer of a mixed room (`mixed_peer.js`, the socket.io side, or `sc_peer.js`, the
/// SocketCluster side), its stdout lines as parsed JSON.
pub struct MixedPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl MixedPeer {
    /// Starts `node` (from [`command`], with whatever environment the test adds) on
    /// `mixed_peer.js URL ROOM TRANSPORT`.
    pub fn spawn(node: Command, url: &str, room: &str, transport: &str) -> MixedPeer {
        MixedPeer::spawn_script(node, &["mixed_peer.js", url, room, transport])
    }

    /// Starts `node` on another peer script of `tests/interop/` (`args[0]`) that prints
    /// JSON lines and reads commands on its stdin, as `mixed_peer.js` does (`sc_peer.js`,
    /// the SocketCluster side of a mixed room).
    pub fn spawn_script(mut node: Command, args: &[&str]) -> MixedPeer {
        let mut child = node
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts the peer script");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("mixed_peer printed non-JSON {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        MixedPeer {
            child,
            stdin,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Its stderr so far (once it has exited).
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// The next line, within 10 s. It polls the reader thread's channel without blocking
    /// the executor, whose tasks (the native client's writer) must keep running.
    pub async fn next(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.lines.try_recv() {
                Ok(v) => return v,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "no line from the peer script ({e:?}); its stderr:\n{}",
                        self.stderr()
                    );
                }
            }
        }
    }

    /// The next `event` line for event `name` (member events and others are skipped).
    pub async fn next_event(&mut self, name: &str) -> Value {
        loop {
            let line = self.next().await;
            if line["type"] == "event" && line["event"] == name {
                return line;
            }
        }
    }

    /// Asks it to emit `to` `room` `event` `payload` with an ack; it prints the answer as an
    /// `ack` line.
    pub fn emit_to(&mut self, room: &str, event: &str, payload: Value) {
        self.command(json!({"to": room, "event": event, "payload": payload}));
    }

    /// Writes `command` as one line on its stdin.
    pub fn command(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open until finish");
        writeln!(stdin, "{command}").expect("the peer reads its stdin");
    }

    /// The next `ack` line (events are skipped).
    pub async fn next_ack(&mut self) -> Value {
        loop {
            let line = self.next().await;
            if line["type"] == "ack" {
                return line;
            }
        }
    }

    /// Closes its stdin (it disconnects and exits 0) and checks that it did.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = wait_bounded(&mut self.child, Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "the peer script ended with {status:?}; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for MixedPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
