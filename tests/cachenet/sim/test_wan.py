"""The emulated WAN, over real sockets on 127.0.0.1: timing, caps, stalls, cuts, counters."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cachenet.exceptions import ConfigError
from cachenet.sim.wan import LinkProfile, ProxyThread

TIMEOUT = 5.0


class _Echo(socketserver.BaseRequestHandler):
    """Echo everything back; answer EOF with EOF, so half-close can be observed."""

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # a cut link resets us: expected, not an error
            while data := self.request.recv(65536):
                self.request.sendall(data)
            self.request.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _serve(handler: type[socketserver.BaseRequestHandler]) -> Iterator[tuple[str, int]]:
    server = _Server(("127.0.0.1", 0), handler)
    # A short poll interval only so that shutdown() returns quickly at teardown.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    with _serve(_Echo) as address:
        yield address


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[ProxyThread]:
    with ProxyThread(echo, LinkProfile()) as p:
        yield p


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def _median_rtt_ms(port: int, n: int = 10) -> float:
    with _connect(port) as sock:
        times = []
        for i in range(n):
            msg = b"ping %03d" % i
            t0 = time.perf_counter()
            sock.sendall(msg)
            assert _recv_exactly(sock, len(msg)) == msg
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _wait_for(cond: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.005)


def _sees_closed(sock: socket.socket) -> bool:
    """True when the peer closed or reset the connection (recv gives b"" or fails)."""
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _new_connection_is_cut(port: int) -> bool:
    """True when a new connection is refused, reset (even during connect) or closed unanswered."""
    try:
        with _connect(port) as sock:
            sock.sendall(b"anyone?")
            return _sees_closed(sock)
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        return True


# -- the profile --------------------------------------------------------------------------------


def test_profile_rtt_and_presets() -> None:
    assert LinkProfile.from_rtt(40).delay_ms == 20 and LinkProfile.from_rtt(40).rtt_ms == 40
    assert LinkProfile.named("4g").rtt_ms == 40
    assert LinkProfile.named("4g").bandwidth_kbps == 20_000
    assert LinkProfile.named("3g") == LinkProfile.from_rtt(150, 20, 1500)
    assert LinkProfile.named("lan").rtt_ms == 1 and LinkProfile.named("wifi").jitter_ms == 2
    assert LinkProfile.named("offline").drop
    with pytest.raises(ConfigError, match="known: lan, wifi, 4g, 3g, offline"):
        LinkProfile.named("5g")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay_ms": -1},
        {"jitter_ms": -0.5},
        {"bandwidth_kbps": 0},
        {"bandwidth_kbps": -5},
        {"delay_ms": float("nan")},
        {"stall_rate": 1.5},
        {"stall_ms": -1},
    ],
)
def test_invalid_profiles_raise_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="LinkProfile"):
        LinkProfile(**kwargs)


def test_invalid_rtt_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="rtt_ms"):
        LinkProfile.from_rtt(-10)


# -- the proxy ----------------------------------------------------------------------------------


def test_rtt_matches_profile(echo: tuple[str, int]) -> None:
    with ProxyThread(echo, LinkProfile.from_rtt(40)) as p:
        rtt = _median_rtt_ms(p.port)
    # The proxy never delivers early; a busy machine only adds. The upper bound is what
    # a proxy delaying twice (each way, twice) would reach.
    assert 40.0 <= rtt < 80.0, rtt


def test_transient_stalls_delay_the_chunks_they_hit(proxy: ProxyThread) -> None:
    proxy.configure(LinkProfile(stall_rate=1.0, stall_ms=30.0, seed=1))
    assert _median_rtt_ms(proxy.port) >= 60.0  # every chunk, both ways
    proxy.configure(LinkProfile(stall_rate=0.0, stall_ms=30.0))
    assert _median_rtt_ms(proxy.port) < 60.0  # no chunk stalls any more


def test_zero_delay_is_fast_and_reconfigure_applies(proxy: ProxyThread) -> None:
    assert _median_rtt_ms(proxy.port) < 30.0  # no Nagle-style 40 ms waits
    proxy.configure(LinkProfile.from_rtt(60))
    rtt = _median_rtt_ms(proxy.port)
    assert 60.0 <= rtt < 120.0, rtt
    proxy.configure(LinkProfile())
    assert _median_rtt_ms(proxy.port) < 60.0  # the new profile applies


def test_bandwidth_cap() -> None:
    """25 kB at 400 kbit/s needs 0.5 s on the wire, whatever the chunking."""
    payload = bytes(range(256)) * 100  # 25_600 bytes
    got: list[tuple[float, int]] = []  # (arrival of the last byte, bytes received)
    done = threading.Event()

    class Sink(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            n = 0
            while n < len(payload) and (data := self.request.recv(65536)):
                n += len(data)
            got.append((time.perf_counter(), n))
            done.set()

    with (
        _serve(Sink) as address,
        ProxyThread(address, LinkProfile(bandwidth_kbps=400)) as p,
        _connect(p.port) as s,
    ):
        t0 = time.perf_counter()
        s.sendall(payload)
        assert done.wait(TIMEOUT)
    arrived, received = got[0]
    assert received == len(payload)
    assert 0.51 <= arrived - t0 < 1.0, arrived - t0  # 1.02 s: the cap applied twice


def test_data_and_eof_arrive_intact_and_in_order_with_jitter(echo: tuple[str, int]) -> None:
    payload = bytes(range(256)) * 800  # 200 kB, many chunks, each with its own jitter
    profile = LinkProfile(delay_ms=5, jitter_ms=5, seed=1)
    with ProxyThread(echo, profile) as p, _connect(p.port) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        echoed = _recv_exactly(s, len(payload))
        assert s.recv(1) == b""  # the echo server's EOF, after all of the data
        sender.join(TIMEOUT)
        assert echoed == payload
        assert p.bytes_up == p.bytes_down == len(payload)


def test_stall_holds_data_until_cleared(proxy: ProxyThread) -> None:
    with _connect(proxy.port) as s:
        proxy.configure(LinkProfile(stall=True))
        s.sendall(b"held")
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(16)
        assert proxy.bytes_up == 0
        s.settimeout(TIMEOUT)
        proxy.configure(LinkProfile())
        assert _recv_exactly(s, 4) == b"held"


def test_drop_resets_current_and_new_connections(proxy: ProxyThread) -> None:
    with _connect(proxy.port) as s:
        s.sendall(b"hi")
        assert _recv_exactly(s, 2) == b"hi"
        proxy.configure(dataclasses.replace(proxy.profile, drop=True))
        assert _sees_closed(s)
    assert _new_connection_is_cut(proxy.port)
    proxy.configure(LinkProfile())  # the link comes back
    with _connect(proxy.port) as s3:
        s3.sendall(b"back")
        assert _recv_exactly(s3, 4) == b"back"


def test_counters(proxy: ProxyThread) -> None:
    msgs = [b"a" * 10, b"b" * 1000, b"c" * 5]
    for msg in msgs:
        with _connect(proxy.port) as s:
            s.sendall(msg)
            assert _recv_exactly(s, len(msg)) == msg
    total = sum(map(len, msgs))
    _wait_for(lambda: proxy.bytes_up == total and proxy.bytes_down == total)
    assert proxy.connections == len(msgs)


def test_unreachable_upstream_closes_client() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = free.getsockname()  # bound, never listening: connections are refused
        with ProxyThread(address, LinkProfile()) as p:
            assert _new_connection_is_cut(p.port)


def test_configure_rejects_non_profile(proxy: ProxyThread) -> None:
    with pytest.raises(ConfigError, match="LinkProfile"):
        proxy.configure({"delay_ms": 5})  # type: ignore[arg-type]
