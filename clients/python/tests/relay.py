"""A real TCP relay in front of herald that can drop answers: it forwards
each HTTP/1.1 request to herald, reads herald's whole answer (so the
publish is committed) and, while ``drop`` is above zero, hangs up on the
client instead of passing the answer on. The client sees a transport
error after the server acted, the case idempotency keys exist for.

It records every request body it relays, so a test can check what each
attempt sent. Threads are daemons with socket timeouts; ``close`` stops it.
"""

from __future__ import annotations

import socket
import threading


def _read_http(sock: socket.socket) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (or none); None on EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
        if k.strip().lower() == b"transfer-encoding":
            raise AssertionError("relay: chunked bodies are not supported")
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


class DroppingRelay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop = 0
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.running = False
        self.listener.close()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        with client, socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10) as up:
            while True:
                req = _read_http(client)
                if req is None:
                    return
                with self.lock:
                    self.bodies.append(req.partition(b"\r\n\r\n")[2])
                up.sendall(req)
                resp = _read_http(up)
                if resp is None:
                    return
                with self.lock:
                    dropping = self.drop > 0
                    if dropping:
                        self.drop -= 1
                if dropping:
                    # Hang up without answering: a reset, not a clean close.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                client.sendall(resp)
