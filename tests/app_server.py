"""Run the real app (REST routes + Gradio) on a free localhost port inside the test process.

The listening socket is bound before the server thread starts, so clients can connect at once (the
kernel queues them until uvicorn accepts): no sleeps or polling for start-up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Iterator


@contextlib.contextmanager
def running_app(app) -> Iterator[str]:
    """Serve an ASGI app on ``127.0.0.1:<free port>``; yields its base URL (no trailing slash)."""
    import uvicorn

    from landcover.app.blocks import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, log_level="warning"))  # the production settings
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
