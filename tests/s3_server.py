"""A real S3-protocol endpoint on this machine: moto's threaded server over HTTP, reached through
s3fs with the standard variables (``AWS_ENDPOINT_URL``, dummy keys), as s3fs's own tests do.
Also a TCP relay that can hold one upload mid-flight (to kill a run during it)."""

from __future__ import annotations

import os
import socket
import threading
from contextlib import closing

import pytest


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Endpoint:
    """A moto server on a free port with bucket ``bucket``; ``env`` holds the variables a client needs."""

    def __init__(self):
        moto_server = pytest.importorskip("moto.server")
        pytest.importorskip("s3fs")
        import s3fs

        # a filesystem cached for an earlier endpoint (same arguments, other AWS_ENDPOINT_URL) is stale
        s3fs.S3FileSystem.clear_instance_cache()
        self.port = free_port()
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        import requests

        # moto's backends are process-wide: start from an empty store whatever ran before
        requests.post(f"{self.url}/moto-api/reset", timeout=30).raise_for_status()
        self.fs = self.filesystem()
        self.fs.mkdir("bucket")

    def filesystem(self, endpoint: str | None = None):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=endpoint or self.url, key="testing", secret="testing",
                                 skip_instance_cache=True)

    def process_env(self, endpoint: str | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})}

    def stop(self) -> None:
        self.server.stop()


SERVER_ERROR = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HoldingRelay(threading.Thread):
    """Forwards TCP to ``port``; once a client sends ``marker`` (e.g. the request line of one
    shard's PUT), that connection is held (nothing more forwarded) and ``held`` is set; or, with
    ``reply``, every such request is answered with it (e.g. :data:`SERVER_ERROR`) and not forwarded."""

    def __init__(self, port: int, marker: bytes, reply: bytes | None = None):
        super().__init__(daemon=True)
        self.target, self.marker, self.reply = port, marker, reply
        self.held = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.start()

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.marker in data:
                    self.held.set()
                    if self.reply is not None:
                        src.sendall(self.reply)
                        src.close()
                    return  # hold: the request never reaches the server
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
