"""python-socketio's synchronous client against `corelay serve` (the relay convention).

Run: tests/interop/.venv/bin/python -m pytest tests/interop/test_python_client.py
The server binary is $CORELAY_BIN, else target/debug/corelay.
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import socketio
from engineio.payload import Payload

# python-engineio decodes at most 16 packets per long-polling payload (its Payload default,
# a known limit of that library, miguelgrinberg/python-engineio#142) and drops the
# connection on more. The JS server batches every queued packet into one poll response, as
# corelay does, so a burst of 17+ messages to a polling python client needs a higher limit.
Payload.max_decode_packets = 1000

ROOT = Path(__file__).resolve().parents[2]
CORELAY_BIN = os.environ.get("CORELAY_BIN", str(ROOT / "target" / "debug" / "corelay"))
WAIT = 5  # seconds, for every bounded wait

# corelay recovers socket.io sessions (`[resume] socketio`, on by default) as socket.io 4.6+
# does, so every room broadcast carries its offset (room tag and number, in hex) as the
# last argument. python-socketio does not implement recovery: its handlers get it as one
# more argument.
OFFSET = re.compile(r"[0-9a-f]{9,24}")


def without_offset(args):
    """The args of a room broadcast without the trailing offset, which must be one."""
    assert args, "a room broadcast has arguments"
    offset = args[-1]
    assert isinstance(offset, str) and OFFSET.fullmatch(offset), f"no offset last: {args!r}"
    return args[:-1]


# A lost socket.io connection keeps its session (and room memberships) for the resume window;
# a short one, so that a member whose connection was lost is seen leaving within WAIT.
RESUME_WINDOW_MS = 500


@pytest.fixture(scope="module")
def server_url():
    yield from serve({"CORELAY_RESUME_WINDOW_MS": str(RESUME_WINDOW_MS)})


@pytest.fixture(scope="module")
def limited_server_url():
    """A server whose Socket.IO sessions may send two events at once, then one a second."""
    yield from serve(
        {
            "CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_PER_S": "1",
            "CORELAY_RATE_LIMITS_SOCKETIO_MESSAGES_BURST": "2",
        }
    )


SECRET = "python-interop-secret"


@pytest.fixture(scope="module")
def auth_server_url():
    """A server that requires HS256 tokens signed with SECRET."""
    yield from serve({"CORELAY_AUTH_REQUIRED": "true", "CORELAY_AUTH_JWT_SECRET": SECRET})


@pytest.fixture(scope="module")
def rules_server_url(tmp_path_factory):
    """A server with tokens and an `[[auth.rooms]]` rule: `match-*` needs a `role` of player
    or spectator, and spectators may not send."""
    config = tmp_path_factory.mktemp("rules") / "corelay.toml"
    config.write_text(
        f'''
[auth]
jwt_secret = "{SECRET}"

[[auth.rooms]]
room = "match-*"
claim = "role"
values = ["player", "spectator"]
read_only = ["spectator"]
'''
    )
    yield from serve({}, ["--config", str(config)])


def hs256(claims, secret=SECRET):
    """An HS256 JWT, made with the standard library as a game backend would with PyJWT."""

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def serve(env, args=()):
    """Runs `corelay serve` with `env` added (and `args`); yields its URL, then stops it."""
    proc = subprocess.Popen(
        [CORELAY_BIN, "serve", "--listen", "127.0.0.1:0", "--shards", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        first = lines.get(timeout=10)
    except queue.Empty:
        proc.kill()
        pytest.fail("corelay did not print its listening line within 10 s")
    match = re.match(r"corelay listening on (127\.0\.0\.1:\d+) ", first)
    if not match:
        proc.kill()
        pytest.fail(f"unexpected first line from corelay: {first!r}; stderr: {proc.stderr.read()}")
    yield f"http://{match.group(1)}"
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("corelay did not stop within 5 s of SIGTERM")
    assert code == 0, f"corelay exited {code}"


class Peer:
    """A connected socketio.Client that records the events it gets."""

    def __init__(self, url, transports, auth=None):
        self.sio = socketio.Client(reconnection=False)
        self.events = queue.Queue()
        self.seen = []
        self.sio.on("*", lambda event, *args: self.events.put((event, list(args))))
        self.sio.connect(url, transports=transports, auth=auth, wait_timeout=WAIT)

    @property
    def sid(self):
        return self.sio.get_sid("/")

    def call(self, *args):
        return self.sio.call(args[0], args[1:] if len(args) > 2 else args[1], timeout=WAIT)

    def next(self, event):
        """The args of the next `event` (other events are skipped), within WAIT seconds."""
        return self.next_of(event)[1]

    def next_of(self, *events):
        """The name and args of the next of `events` (others are skipped), within WAIT s."""
        while True:
            try:
                name, args = self.events.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no {events!r} within {WAIT} s; seen: {self.seen}") from None
            self.seen.append(name)
            if name in events:
                return name, args

    def close(self):
        self.sio.disconnect()


@pytest.fixture
def peers(server_url):
    made = []

    def make(transports=("websocket",)):
        peer = Peer(server_url, list(transports))
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def test_connect_websocket(peers):
    peer = peers(["websocket"])
    assert peer.sio.connected
    assert peer.sio.transport() == "websocket"
    assert peer.sid and peer.sid.isdigit(), peer.sid


def test_join_ack_and_errors(peers):
    peer = peers(["websocket"])
    assert peer.call("join", "py-ack") == {"room": "py-ack", "members": 1, "host": peer.sid}
    assert peer.call("to", ("py-ack", "ev", {"x": 1})) == {"room": "py-ack"}
    assert peer.call("to", ("py-elsewhere", "ev", 1)) == {"error": "not_member"}
    assert peer.call("join", 5) == {"error": "bad_arguments"}
    assert peer.call("leave", "py-ack") == {"room": "py-ack"}
    # Without an ack the error comes as an `error` event.
    peer.sio.emit("to", ("py-ack", "ev", 1))
    assert peer.next("error") == [{"error": "not_member", "event": "to"}]


def test_two_clients_in_a_room(peers):
    a = peers(["websocket"])
    b = peers(["websocket"])
    # The first to join hosts the room; an anonymous socket's player id is its sid.
    assert a.call("join", "py-room") == {"room": "py-room", "members": 1, "host": a.sid}
    assert b.call("join", "py-room") == {"room": "py-room", "members": 2, "host": a.sid}
    assert without_offset(a.next("member_joined")) == [
        {"room": "py-room", "player": b.sid, "members": 2}
    ]

    a.sio.emit("to", ("py-room", "chat", {"text": "hi", "n": [1, 2]}))
    assert without_offset(b.next("chat")) == [{"text": "hi", "n": [1, 2]}, a.sid]

    b.sio.emit("to", ("py-room", "blob", b"\x00\x01\xfe\xff"))
    payload, sender = without_offset(a.next("blob"))
    assert isinstance(payload, bytes) and payload == b"\x00\x01\xfe\xff"
    assert sender == b.sid

    b_sid = b.sid
    b.close()
    # python-engineio closes the WebSocket without waiting for its writer thread, so the
    # DISCONNECT it queued often never goes out: the server then sees a lost connection
    # (as socket.io's "transport close"), keeps b's session for recovery and tells the room
    # b is away, and b leaves when the resume window ends. When the DISCONNECT does get
    # out, b leaves at once.
    name, args = a.next_of("member_left", "member_away")
    if name == "member_away":
        assert without_offset(args) == [{"room": "py-room", "player": b_sid}]
        args = a.next("member_left")
    (left,) = without_offset(args)
    assert left["room"] == "py-room" and left["player"] == b_sid and left["members"] == 1


def test_polling_client_with_a_websocket_client(peers):
    poller = peers(["polling"])
    assert poller.sio.transport() == "polling"
    ws = peers(["websocket"])
    host = poller.sid
    assert poller.call("join", "py-mixed") == {"room": "py-mixed", "members": 1, "host": host}
    assert ws.call("join", "py-mixed") == {"room": "py-mixed", "members": 2, "host": host}

    # A burst: several of these arrive in one poll response.
    for i in range(50):
        ws.sio.emit("to", ("py-mixed", "seq", i))
    seqs = [without_offset(poller.next("seq")) for _ in range(50)]
    assert seqs == [[i, ws.sid] for i in range(50)]

    poller.sio.emit("to", ("py-mixed", "back", "from polling"))
    assert without_offset(ws.next("back")) == ["from polling", poller.sid]


def test_events_past_the_rate_limit_get_rate_limited(limited_server_url):
    peer = Peer(limited_server_url, ["websocket"])
    try:
        assert peer.call("join", "py-rl") == {"room": "py-rl", "members": 1, "host": peer.sid}
        assert peer.call("to", ("py-rl", "ev", 1)) == {"room": "py-rl"}
        assert peer.call("to", ("py-rl", "ev", 2)) == {"error": "rate_limited"}
        peer.sio.emit("to", ("py-rl", "ev", 3))
        assert peer.next("error") == [{"error": "rate_limited", "event": "to"}]
        assert peer.sio.connected
    finally:
        peer.close()


def test_tokens_make_the_sub_the_player_id_and_bad_ones_are_refused(auth_server_url):
    exp = int(time.time()) + 600
    ana = Peer(auth_server_url, ["websocket"], auth={"token": hs256({"sub": "ana", "exp": exp})})
    bo = Peer(auth_server_url, ["polling"], auth={"token": hs256({"sub": "bo", "exp": exp})})
    try:
        # A token player's id is its sub; ana joined first and hosts the room.
        assert ana.call("join", "py-auth") == {"room": "py-auth", "members": 1, "host": "ana"}
        assert bo.call("join", "py-auth") == {"room": "py-auth", "members": 2, "host": "ana"}
        assert without_offset(ana.next("member_joined")) == [
            {"room": "py-auth", "player": "bo", "members": 2}
        ]
        bo.sio.emit("to", ("py-auth", "hello", 1))
        assert without_offset(ana.next("hello")) == [1, "bo"]
    finally:
        ana.close()
        bo.close()
    for auth, message in [
        (None, "token required"),
        ({"token": hs256({"sub": "eve", "exp": exp}, secret="wrong")}, "bad token signature"),
        ({"token": hs256({"sub": "eve", "exp": int(time.time()) - 3600})}, "token expired"),
    ]:
        client = socketio.Client(reconnection=False)
        errors = queue.Queue()
        client.on("connect_error", errors.put)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(auth_server_url, transports=["websocket"], auth=auth, wait_timeout=WAIT)
        # The handler gets the CONNECT_ERROR data: the reason and the code.
        assert errors.get(timeout=WAIT) == {"message": message, "data": {"code": "unauthorized"}}
        client.disconnect()


def test_room_rules_refuse_by_claim_and_only_the_asker_hears(rules_server_url):
    exp = int(time.time()) + 600

    def player(sub, role):
        token = hs256({"sub": sub, "role": role, "exp": exp})
        return Peer(rules_server_url, ["websocket"], auth={"token": token})

    ann, sue, gus = player("ann", "player"), player("sue", "spectator"), player("gus", "guest")
    try:
        assert ann.call("join", "match-1") == {"room": "match-1", "members": 1, "host": "ann"}
        assert sue.call("join", "match-1") == {"room": "match-1", "members": 2, "host": "ann"}
        assert gus.call("join", "match-1") == {
            "error": "forbidden",
            "message": "room match-1 requires the claim role",
        }
        assert sue.call("to", ("match-1", "move", {"x": 1})) == {
            "error": "forbidden",
            "message": "spectator members may not send to match-1",
        }
        # Without an ack the refusal is an `error` event, to the sender alone.
        sue.sio.emit("to", ("match-1", "move", {"x": 2}))
        assert sue.next("error") == [
            {
                "error": "forbidden",
                "message": "spectator members may not send to match-1",
                "event": "to",
            }
        ]
        assert ann.call("to", ("match-1", "move", {"x": 3})) == {"room": "match-1"}
        assert without_offset(sue.next("move")) == [{"x": 3}, "ann"]
        # Rooms no rule covers stay open to anyone with a token.
        assert gus.call("join", "lobby") == {"room": "lobby", "members": 1, "host": "gus"}
    finally:
        for peer in (ann, sue, gus):
            peer.close()
