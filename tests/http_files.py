"""Real HTTP servers for tests, on a free loopback port: :func:`running_server` for any handler, and
:func:`serving`, a folder with byte ranges (as object stores serve COGs).

Python's ``http.server`` ignores ``Range``; GDAL's ``/vsicurl/`` reads a COG by ranges, so :class:`RangeHandler`
answers them (206 + ``Content-Range``). The socket is bound before the thread starts: no waiting for start-up.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class RangeHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single byte ranges; records every request line in ``server.log``."""

    def log_message(self, format, *args):  # keep the test output clean, but remember what was asked
        self.server.log.append(f"{self.command} {self.path} {self.headers.get('Range', '')}".strip())

    def do_GET(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        self.log_message("")
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])


@contextlib.contextmanager
def running_server(handler) -> Iterator[ThreadingHTTPServer]:
    """Yields a ``ThreadingHTTPServer`` of ``handler`` serving on ``127.0.0.1`` (its URL: :func:`base_url`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def base_url(server: ThreadingHTTPServer) -> str:
    """``http://127.0.0.1:<port>`` of a :func:`running_server`."""
    return f"http://127.0.0.1:{server.server_address[1]}"


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """Yields ``(base URL ending in /, request log)`` of ``folder`` served on ``127.0.0.1``."""
    with running_server(functools.partial(RangeHandler, directory=str(folder))) as server:
        server.log = []
        yield base_url(server) + "/", server.log
