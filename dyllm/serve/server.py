"""Running the app under uvicorn: in the foreground (`dyllm serve`) or in a background thread.

`serve` is the command line's: it loads the model, warns when the server is reachable from other
machines without an API key, and runs uvicorn until SIGINT / SIGTERM, on which uvicorn stops
accepting connections, lets the open ones finish (running and queued requests complete), and
the app's lifespan stops the worker. (uvicorn then raises the signal again, so SIGTERM ends the
process as terminated by SIGTERM; SIGINT's KeyboardInterrupt is caught and the command returns.)

Under torchrun with the model split (`settings.tensor_parallel` > 1, inside the process group the
command line joined), every process loads its shard (agreed: a failure on one ends all with its
message); rank 0 serves as above and leads, the others follow its batches
(`tensor_parallel.follow`) and bind no port.

`BackgroundServer` runs the same app on a thread of its own with its own event loop, on a port
the operating system picks (port 0) unless one is given: the tests and the load benchmark drive
it over loopback with real HTTP clients. `stop` is the same graceful shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from types import TracebackType

import uvicorn

from dyllm.distributed import launch
from dyllm.serve.app import create_app
from dyllm.serve.settings import ServedModel, ServeSettings, load_served_model
from dyllm.serve.tensor_parallel import GroupLeader, follow

log = logging.getLogger("dyllm.serve")


def serve(settings: ServeSettings, log_level: str = "info") -> None:
    """Load the model and serve it until interrupted (blocking)."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    settings = settings.with_api_key_from_environment()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    served = launch.agree(lambda: load_served_model(settings))  # outside a group: just loads
    if not launch.is_main_process():
        follow(served)
        return
    leader = GroupLeader() if settings.tensor_parallel > 1 else None
    if not settings.loopback_only and not settings.api_key:
        log.warning(
            "listening on %s without an API key: anyone who reaches this port can use the "
            "model; pass --api-key (or DYLLM_API_KEY)",
            settings.host,
        )
    app = create_app(served, settings, leader)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.request_timeout_s + 5,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it stopped on
            uvicorn.Server(config).run()
    finally:
        if leader is not None:  # e.g. the port was taken: the worker never ran
            leader.close()


class BackgroundServer:
    """The app on a background thread: `with BackgroundServer(served, settings) as server:`,
    then `server.url` (e.g. http://127.0.0.1:43817)."""

    def __init__(
        self, served: ServedModel, settings: ServeSettings, startup_timeout_s: float = 30.0
    ) -> None:
        self.app = create_app(served, settings)
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dyllm-serve", daemon=True)
        self._startup_timeout_s = startup_timeout_s
        self.host = settings.host
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        limit = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > limit:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        sockets = [sock for server in self._server.servers for sock in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Graceful shutdown: open requests finish, then the worker stops."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the server on port {self.port} did not stop in {timeout_s} s")

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
