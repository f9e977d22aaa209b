"""Memory under load, measured from outside: RSS with many idle keep-alive connections,
and peak RSS growth while a large response or request body streams through a server.
Every transfer is checked to arrive whole and is bounded in time."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable

from harness import HOST, Server


def idle_connections_rss(server: Server, count: int, token: str) -> tuple[int, int]:
    """RSS (KiB) before and with `count` idle keep-alive connections, each used once."""
    before = server.rss_kib()
    socks: list[socket.socket] = []
    try:
        request = (
            f"GET /api/x HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        for _ in range(count):
            s = socket.create_connection((HOST, server.port), timeout=10)
            s.sendall(request)
            socks.append(s)
        for s in socks:
            s.recv(65536)
        time.sleep(1.0)
        return before, server.rss_kib()
    finally:
        for s in socks:
            s.close()


def peak_rss_during(server: Server, transfer: Callable[[], None]) -> tuple[int, int, float]:
    """(baseline RSS, peak RSS) in KiB and seconds, sampling every 50 ms during `transfer`."""
    baseline = server.rss_kib()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_kib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        transfer()
    finally:
        done.set()
        sampler.join(timeout=5)
    return baseline, max(peak, server.rss_kib()), time.monotonic() - started


def download(port: int, path: str, token: str, expected: int, within: float = 300) -> None:
    deadline = time.monotonic() + within
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
        received = 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET {path} took over {within:.0f} s")
    finally:
        conn.close()
    if received != expected:
        raise RuntimeError(f"received {received} bytes of {expected}")


def upload(port: int, path: str, token: str, size: int, within: float = 300) -> None:
    """POST `size` zero bytes (Content-Length, 1 MiB writes); the sink answers with the
    number of bytes it read, which must be `size`."""
    deadline = time.monotonic() + within
    chunk = memoryview(bytes(1 << 20))
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            s.sendall(chunk[:n])
            sent += n
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path} took over {within:.0f} s")
        response = b""
        while b"\r\n\r\n" not in response or len(response) < _response_length(response):
            data = s.recv(65536)
            if not data or time.monotonic() > deadline:
                break
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200 " not in status_line + " ":
        raise RuntimeError(f"POST {path} answered {status_line!r}")
    if body.strip() != str(size).encode():
        raise RuntimeError(f"the sink read {body.strip().decode('latin-1')} bytes of {size}")


def _response_length(response: bytes) -> int:
    head, sep, _ = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(head) + len(sep) + int(value)
    return len(response) + 1 if not sep else len(response)
