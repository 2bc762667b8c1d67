"""An aiohttp app served on 127.0.0.1 by a thread, for tests that need a real HTTP server."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class ServedApp:
    """An aiohttp app on 127.0.0.1 and a free port, run by a thread with its own event loop."""

    def __init__(self, app: web.Application, port: int = 0) -> None:
        self._app = app
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="api-under-test", daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        # Open streams (watches) must not hold a stop for the default 60 s.
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        try:
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(
                web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True).start()
            )
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> ServedApp:
        self._thread.start()
        assert self._ready.wait(10), "the API did not start within 10 s"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._thread.is_alive():
            return  # already stopped (a test can take a server down before its fixture ends)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the API thread did not stop"
