//! corelay behind the TLS-terminating proxies of `docs/DEPLOYMENT.md`, end to end.
//!
//! Each test starts an in-process server, a self-signed certificate for 127.0.0.1 (openssl),
//! and nginx or HAProxy running the documented configuration (only addresses, paths and the
//! certificate differ), then has the official socket.io client (`tests/interop/mixed_peer.js`)
//! connect over TLS through the proxy and exchange `to` events with a native client in one
//! room. The Rust client speaks plain `ws://` only, so it connects to corelay directly; the
//! native endpoint through the proxy (`wss://.../ws`) is checked with the `ws` package
//! sending a `Hello` encoded here and decoding the `Welcome` that comes back.
//!
//! Between the proxy and corelay sits a [`Sniffer`], a byte-for-byte TCP relay that records
//! the request lines the proxy sends upstream: they show which HTTP version the proxy
//! speaks to corelay (nginx's documented location: 1.1; nginx's default: 1.0).
//!
//! The proxy's listening socket is bound here on 127.0.0.1:0 and handed to it as fd 3 (nginx
//! inherits it through `NGINX="3;"`, HAProxy through `bind fd@3`), so no port is guessed.
//!
//! Prerequisites: nginx, haproxy, openssl, node and `npm ci --prefix tests/interop`, all of
//! which `scripts/test.sh` installs. A missing one fails the tests (it does not skip them).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use corelay::client::{PayloadKind, ServerEvent};
use corelay::proto::native::{self, ArchivedServerFrame, ClientFrame, PROTOCOL_VERSION};
use serde_json::{json, Value};

use common::node::{wait_bounded, MixedPeer};

const SETUP: &str = "run scripts/test.sh once: it installs nginx, haproxy, openssl, node and \
                     the npm socket.io-client (`npm ci --prefix tests/interop`)";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("corelay-proxy-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The absolute path of `tool` on PATH (or in /usr/sbin, where Debian puts nginx and
/// haproxy and where a non-root PATH may not look); fails with [`SETUP`] when absent.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed ({SETUP})"))
}

/// A self-signed certificate for IP 127.0.0.1: `cert.pem`, `key.pem`, and `both.pem` (the
/// two in one file, as HAProxy's `crt` takes them).
fn certificate(dir: &Path) -> PathBuf {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    // An EC key: generated in milliseconds where RSA takes a noticeable part of a second.
    let out = Command::new(tool("openssl"))
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut both = fs::read(&cert).expect("cert.pem");
    both.extend(fs::read(&key).expect("key.pem"));
    fs::write(dir.join("both.pem"), both).expect("both.pem");
    cert
}

/// A TCP relay between a proxy and corelay that records the request lines passing it
/// (`GET /socket.io/?EIO=4&transport=polling&t=... HTTP/1.1`).
struct Sniffer {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Sniffer {
    fn start(upstream: SocketAddr) -> Sniffer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("sniffer binds");
        let addr = listener.local_addr().expect("sniffer address");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (lines.clone(), stop.clone());
        thread::spawn(move || {
            for down in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let seen = seen.clone();
                thread::spawn(move || relay(down, up, &seen));
            }
        });
        Sniffer { addr, lines, stop }
    }

    fn request_lines(&self) -> Vec<String> {
        self.lines.lock().expect("sniffer lines").clone()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `down` to `up`, noting every request line, and `up` to `down`, until both ends
/// close. A kept-alive connection carries several requests (nginx even sends a WebSocket
/// upgrade on one that served polls before), so it follows their framing: a head, then
/// `Content-Length` bytes of body (corelay refuses any other framing); after an upgrade
/// request, only frames follow.
fn relay(down: TcpStream, up: TcpStream, seen: &Mutex<Vec<String>>) {
    let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    let back = thread::spawn(move || copy_then_shut(up2, down2));
    let mut pending = Vec::new();
    let mut body_left = 0usize;
    let mut upgraded = false;
    let mut buf = [0u8; 16 * 1024];
    let (mut from, mut to) = (&down, &up);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !upgraded {
            pending.extend_from_slice(&buf[..n]);
        }
        loop {
            let skip = body_left.min(pending.len());
            pending.drain(..skip);
            body_left -= skip;
            if upgraded || body_left > 0 {
                break;
            }
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let mut lines = head.split("\r\n");
            seen.lock()
                .expect("sniffer lines")
                .push(lines.next().unwrap_or_default().to_owned());
            for header in lines {
                let (name, value) = header.split_once(':').unwrap_or((header, ""));
                if name.eq_ignore_ascii_case("content-length") {
                    body_left = value.trim().parse().unwrap_or(0);
                }
                if name.eq_ignore_ascii_case("upgrade") {
                    upgraded = true;
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = up.shutdown(Shutdown::Write);
    let _ = back.join();
}

fn copy_then_shut(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Which proxy, and for nginx which location.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Proxy {
    /// nginx with DEPLOYMENT.md's location (HTTP/1.1, Upgrade and Connection passed).
    Nginx,
    /// nginx with the same location less `proxy_http_version 1.1` and the upgrade headers:
    /// nginx's default HTTP/1.0 upstream, which DEPLOYMENT.md says serves long-polling.
    NginxHttp10,
    /// HAProxy with DEPLOYMENT.md's configuration.
    Haproxy,
    /// The same with `option http-keep-alive` for `option http-server-close`, the
    /// alternative the configuration's comment offers.
    HaproxyKeepAlive,
}

/// A running proxy: its child process (stopped by PID on drop) and its HTTPS address.
struct Running {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    log: PathBuf,
}

impl Running {
    /// The proxy's log, for a failure message.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    /// SIGTERM to its PID (both proxies exit at once on it), SIGKILL if it lingers.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the PID of our own child, which we have not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if wait_bounded(&mut self.child, Duration::from_secs(2)).is_none() {
            eprintln!("the proxy ignored SIGTERM for 2 s and was killed");
        }
    }
}

/// A listening socket on 127.0.0.1:0, duplicated onto an fd number of 10 or more (so that
/// placing it on 3 in the child never overwrites another fd we place).
fn listening_socket() -> (OwnedFd, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy socket binds");
    let addr = listener.local_addr().expect("proxy socket address");
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own; on success the new fd is ours alone.
    let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(fd >= 10, "dup: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created above and nothing else owns it.
    (unsafe { OwnedFd::from_raw_fd(fd) }, addr)
}

/// Makes `fd` the child's fd 3, without close-on-exec.
fn pass_as_fd3(cmd: &mut Command, fd: &OwnedFd) {
    let src: RawFd = fd.as_raw_fd();
    // SAFETY: runs between fork and exec, where only async-signal-safe calls are allowed:
    // dup2 is one, and the closure touches nothing but a copied integer. `src` is >= 10, so
    // it is not 3 and dup2 gives a new fd 3 with close-on-exec cleared.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(src, 3) == 3 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// The location of DEPLOYMENT.md's nginx server block (its comments left out), or for
/// [`Proxy::NginxHttp10`] the same less the three HTTP/1.1 and upgrade lines.
fn nginx_location(proxy: Proxy) -> String {
    let upgrade = if proxy == Proxy::Nginx {
        "        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
"
    } else {
        ""
    };
    format!(
        r"    location ~ ^/(ws|socket\.io/) {{
        proxy_pass http://corelay;
{upgrade}        proxy_set_header Host $host;
        proxy_buffering off;
        proxy_read_timeout 60s;
        proxy_send_timeout 60s;
    }}
"
    )
}

/// Starts `proxy` on a fresh certificate and listening socket, in front of `upstream`.
fn start_proxy(proxy: Proxy, upstream: SocketAddr) -> Running {
    let dir = TempDir::new(&format!("{proxy:?}").to_lowercase());
    let d = dir.path().to_owned();
    certificate(&d);
    let (fd, addr) = listening_socket();
    // Both proxies log to their stderr, here.
    let log = d.join("proxy.log");
    let mut cmd = match proxy {
        Proxy::Nginx | Proxy::NginxHttp10 => {
            let mut conf = String::new();
            let p = d.display();
            // Only the process settings differ from a packaged nginx: in the foreground,
            // one worker, every file it writes in the temp dir. The master stays: nginx
            // 1.22 with `master_process off` crashes (SIGSEGV in ngx_single_process_cycle)
            // on a listening socket inherited through NGINX, and the inherited socket is
            // what spares the test a port race.
            writeln!(
                conf,
                "daemon off;
worker_processes 1;
pid {p}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy_temp;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;

    upstream corelay {{
        server {upstream};
        keepalive 64;
    }}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      \"\";
    }}

    server {{
        listen {addr} ssl;
        server_name 127.0.0.1;
        ssl_certificate     {p}/cert.pem;
        ssl_certificate_key {p}/key.pem;

{location}    }}
}}",
                location = nginx_location(proxy)
            )
            .expect("format");
            fs::write(d.join("nginx.conf"), conf).expect("nginx.conf");
            let mut cmd = Command::new(tool("nginx"));
            cmd.arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                // The log before the configuration is read, which defaults to /var/log.
                .args(["-e", "stderr"])
                .env("NGINX", "3;");
            cmd
        }
        Proxy::Haproxy | Proxy::HaproxyKeepAlive => {
            let p = d.display();
            let close = if proxy == Proxy::Haproxy {
                "http-server-close"
            } else {
                "http-keep-alive"
            };
            let conf = format!(
                "defaults
    mode http
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    timeout tunnel  1h
    option  {close}

frontend play
    bind fd@3 ssl crt {p}/both.pem
    default_backend corelay

backend corelay
    server c1 {upstream}
"
            );
            fs::write(d.join("haproxy.cfg"), conf).expect("haproxy.cfg");
            let mut cmd = Command::new(tool("haproxy"));
            // -db: in the foreground, no daemon, no pid file.
            cmd.arg("-db").arg("-f").arg(d.join("haproxy.cfg"));
            cmd
        }
    };
    pass_as_fd3(&mut cmd, &fd);
    let out = fs::File::create(&log).expect("proxy log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{proxy:?} does not start: {e} ({SETUP})"));
    drop(fd);
    let mut running = Running {
        child,
        addr,
        dir,
        log,
    };
    // The socket listens already, so a client could connect at once; wait instead until
    // the proxy answers, so that a configuration it rejects fails here with its log.
    wait_ready(&mut running, proxy);
    running
}

/// Waits (bounded) for one TLS handshake with the proxy, or fails with its log. The socket
/// listens from the start, so the handshake waits in the backlog until the proxy is up:
/// there is nothing to poll.
fn wait_ready(running: &mut Running, proxy: Proxy) {
    let mut handshake = Command::new(tool("openssl"))
        .args(["s_client", "-brief", "-verify_return_error", "-CAfile"])
        .arg(running.dir.path().join("cert.pem"))
        .arg("-connect")
        .arg(running.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client starts");
    let stderr = common::node::drain(handshake.stderr.take().expect("piped stderr"));
    let status = wait_bounded(&mut handshake, Duration::from_secs(5));
    if status.is_some_and(|s| s.success()) {
        return;
    }
    let exited = running.child.try_wait().expect("try_wait");
    panic!(
        "no TLS handshake with {proxy:?} ({status:?}, the proxy: {exited:?}):\n{}\nits log:\n{}",
        stderr.join().unwrap_or_default(),
        running.log()
    );
}

/// The socket.io client over `transport` (`polling`, `websocket` or `default`) through
/// `proxy` over TLS, and a native client, in one room: both see each other's `to` events.
/// Returns the request lines the proxy sent upstream.
fn through(proxy: Proxy, transport: &'static str) -> Vec<String> {
    let server = common::server(2, |_| {});
    let sniffer = Sniffer::start(server.local_addr());
    let running = start_proxy(proxy, sniffer.addr);
    let url = format!("https://{}", running.addr);
    let cert = running.dir.path().join("cert.pem");
    let addr = server.local_addr();
    // Checked before entering the executor, for a clear failure. The client verifies the
    // proxy's certificate against the one generated here.
    let mut peer_node = common::node::command(SETUP);
    peer_node.env("NODE_EXTRA_CA_CERTS", &cert);
    let log = running.log.clone();
    common::run(move || async move {
        let room = format!("proxy-{proxy:?}-{transport}");
        let mut native = common::connect(addr).await;
        assert_eq!(native.join(&room).await.expect("native joins"), 1);
        let native_id = native.player().to_string();

        let mut peer = MixedPeer::spawn(peer_node, &url, &room, transport);
        // Connected and joined; with the default transports, also upgraded (either order).
        let mut joined = Value::Null;
        let mut upgraded = transport != "default";
        while joined.is_null() || !upgraded {
            let line = peer.next().await;
            match line["type"].as_str() {
                Some("joined") => joined = line,
                Some("upgrade") => {
                    assert_eq!(line["transport"], "websocket", "{line}");
                    upgraded = true;
                }
                _ => panic!(
                    "unexpected line {line} (proxy log:\n{})",
                    fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        assert_eq!(joined["members"], 2, "{joined}");
        // The handshake's transport; the one in use once joined (an upgrade may be done).
        let (opened, now) = match transport {
            "websocket" => ("websocket", "websocket"),
            "polling" => ("polling", "polling"),
            _ => ("polling", joined["transport"].as_str().unwrap_or("none")),
        };
        assert_eq!(joined["opened_with"], opened, "{joined}");
        assert_eq!(joined["transport"], now, "{joined}");
        let sio_id: String = joined["id"]
            .as_str()
            .unwrap_or_else(|| panic!("socket.io id is a player id: {joined}"))
            .to_owned();

        // The socket.io client's `to` events reach the native member.
        let mut events = Vec::new();
        while events.len() < 2 {
            match native.next_event().await.expect("native event") {
                ServerEvent::MemberJoined { player, .. } => assert_eq!(player, sio_id),
                ServerEvent::Message {
                    from,
                    event,
                    payload,
                    kind,
                    ..
                } => {
                    assert_eq!(from, sio_id);
                    events.push((event, payload, kind));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(events[0].0, "from_sio_json");
        let value: Value = serde_json::from_slice(&events[0].1).expect("JSON text");
        assert_eq!(value, json!({"b": 2, "list": [1, "x"]}));
        assert_eq!(
            (events[1].0.as_str(), &events[1].1[..], events[1].2),
            ("from_sio_bin", &[1u8, 2, 3, 255][..], PayloadKind::Binary)
        );

        // The native member's events reach the socket.io client (after its upgrade, if any).
        native
            .send(&room, "from_native", br#"{"a":1}"#, PayloadKind::Json)
            .await
            .expect("native sends");
        let got = peer.next_event("from_native").await;
        assert_eq!(got["payload"], json!({"a": 1}), "{got}");
        assert_eq!(got["from"], native_id.as_str(), "{got}");
        // And a `to` with an ack: the answer comes back through the proxy.
        peer.emit_to(&room, "acked", json!(3));
        let ack = peer.next_ack().await;
        assert_eq!(ack["answer"], json!({"room": room}), "{ack}");
        match native.next_event().await.expect("native event") {
            ServerEvent::Message { event, from, .. } => {
                assert_eq!((event.as_str(), from.as_str()), ("acked", sio_id.as_str()));
            }
            other => panic!("unexpected {other:?}"),
        }

        peer.finish();
        // Its disconnect passes the proxy at once (not at a heartbeat timeout).
        match native.next_event().await.expect("native event") {
            ServerEvent::MemberLeft {
                player, members, ..
            } => assert_eq!((player.as_str(), members), (sio_id.as_str(), 1)),
            other => panic!("unexpected {other:?}"),
        }
        let _ = native.close().await;
    });
    let lines = sniffer.request_lines();
    eprintln!("{proxy:?} {transport}: upstream {lines:#?}");
    drop(running);
    server.stop().expect("server stops");
    lines
}

/// A WebSocket client (the `ws` package under socket.io-client) for `wss://.../ws`: it sends
/// its second argument, hex, as one binary message and prints the first message it gets as
/// hex. The Rust client speaks plain `ws://` only, so this stands in for it through TLS.
const NATIVE_WS_JS: &str = r"
const WebSocket = require('ws');
const [url, hello] = process.argv.slice(1);
setTimeout(() => { console.error('no answer within 5 s'); process.exit(2); }, 5000).unref();
const ws = new WebSocket(url);
ws.on('unexpected-response', (_req, res) => { console.error(`HTTP ${res.statusCode}`); process.exit(1); });
ws.on('error', (e) => { console.error(e.message); process.exit(1); });
ws.on('open', () => ws.send(Buffer.from(hello, 'hex')));
ws.on('message', (data, binary) => {
  console.log((binary ? '' : 'text:') + Buffer.from(data).toString('hex'));
  ws.close(1000);
});
ws.on('close', () => process.exit(0));
";

/// A `wss://.../ws` client through `proxy` sends `Hello`: `Ok` when `Welcome` comes back,
/// else what it saw instead (`HTTP 400`). With the request lines the proxy sent upstream.
fn native_hello_through(proxy: Proxy) -> (Result<(), String>, Vec<String>) {
    let server = common::server(2, |_| {});
    let sniffer = Sniffer::start(server.local_addr());
    let running = start_proxy(proxy, sniffer.addr);
    let hello = native::encode_client(&ClientFrame::Hello {
        req: 7,
        version: PROTOCOL_VERSION,
        token: None,
    });
    let hex: String = hello.iter().map(|b| format!("{b:02x}")).collect();
    let out = common::node::command(SETUP)
        .env("NODE_EXTRA_CA_CERTS", running.dir.path().join("cert.pem"))
        .arg("-e")
        .arg(NATIVE_WS_JS)
        .arg(format!("wss://{}/ws", running.addr))
        .arg(hex)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result = if out.status.success() {
        let line = stdout.trim();
        let bytes: Vec<u8> = (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(line.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("not a binary message in hex: {line:?}: {e}"));
        match native::access_server(&bytes).expect("a server frame") {
            ArchivedServerFrame::Welcome { req, .. } => {
                assert_eq!(req.to_native(), 7);
                Ok(())
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
    } else {
        eprintln!("proxy log:\n{}", running.log());
        Err(format!("{}{stdout}{stderr}", out.status))
    };
    let lines = sniffer.request_lines();
    drop(running);
    server.stop().expect("server stops");
    (result, lines)
}

/// Asserts that every upstream request line names `version`, and that `transport` appears.
fn assert_upstream(lines: &[String], version: &str, transport: &str) {
    assert!(!lines.is_empty(), "no upstream request seen");
    for line in lines {
        assert!(
            line.starts_with("GET /socket.io/") || line.starts_with("POST /socket.io/"),
            "{line}"
        );
        assert!(
            line.ends_with(version),
            "upstream spoke {line:?}, not {version}"
        );
    }
    let needle = format!("transport={transport}");
    assert!(
        lines.iter().any(|l| l.contains(&needle)),
        "no {transport} request upstream: {lines:?}"
    );
}

#[test]
fn nginx_polling_talks_http11_upstream() {
    let lines = through(Proxy::Nginx, "polling");
    assert_upstream(&lines, "HTTP/1.1", "polling");
}

#[test]
fn nginx_default_http10_upstream_serves_polling() {
    let lines = through(Proxy::NginxHttp10, "polling");
    assert_upstream(&lines, "HTTP/1.0", "polling");
}

#[test]
fn nginx_polling_upgrades_to_websocket() {
    let lines = through(Proxy::Nginx, "default");
    assert_upstream(&lines, "HTTP/1.1", "websocket");
}

#[test]
fn nginx_websocket() {
    let lines = through(Proxy::Nginx, "websocket");
    assert_upstream(&lines, "HTTP/1.1", "websocket");
}

#[test]
fn nginx_native_ws() {
    let (hello, upstream) = native_hello_through(Proxy::Nginx);
    assert_eq!(hello, Ok(()));
    assert_eq!(upstream, ["GET /ws HTTP/1.1"]);
}

/// What DEPLOYMENT.md says `proxy_http_version 1.1` is required for: without it nginx
/// drops the upgrade and corelay answers the HTTP/1.0 request with 400.
#[test]
fn nginx_default_http10_refuses_websocket() {
    let (hello, upstream) = native_hello_through(Proxy::NginxHttp10);
    let refused = hello.expect_err("no WebSocket over HTTP/1.0");
    assert!(refused.contains("HTTP 400"), "{refused}");
    assert_eq!(upstream, ["GET /ws HTTP/1.0"]);
}

#[test]
fn haproxy_polling() {
    let lines = through(Proxy::Haproxy, "polling");
    assert_upstream(&lines, "HTTP/1.1", "polling");
}

#[test]
fn haproxy_polling_upgrades_to_websocket() {
    let lines = through(Proxy::Haproxy, "default");
    assert_upstream(&lines, "HTTP/1.1", "websocket");
}

#[test]
fn haproxy_websocket() {
    let lines = through(Proxy::Haproxy, "websocket");
    assert_upstream(&lines, "HTTP/1.1", "websocket");
}

#[test]
fn haproxy_native_ws() {
    let (hello, upstream) = native_hello_through(Proxy::Haproxy);
    assert_eq!(hello, Ok(()));
    assert_eq!(upstream, ["GET /ws HTTP/1.1"]);
}

/// DEPLOYMENT.md's alternative to `option http-server-close`, HAProxy's default keep-alive.
#[test]
fn haproxy_keep_alive_polling_upgrades_to_websocket() {
    let lines = through(Proxy::HaproxyKeepAlive, "default");
    assert_upstream(&lines, "HTTP/1.1", "websocket");
}
