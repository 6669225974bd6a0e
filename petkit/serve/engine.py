"""The one thread that touches the model, and the bounded queue in front of it.

HTTP handlers `submit` work items (a Sequence to decode, a classification job) and `call` commands
(load or unload an adapter); the engine thread runs commands between forwards, admits waiting items
into the running batch as slots free up, and steps the batch. Items report back through their `emit`
callback, which the engine wraps so that an item's adapter is released exactly once, when it ends.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time

from petkit.core.errors import PetkitError
from petkit.serve.adapters import AdapterPool
from petkit.serve.metrics import Metrics

log = logging.getLogger("petkit.serve")


class QueueFull(PetkitError):
    def __init__(self, waiting: int, retry_after: int = 1):
        super().__init__(f"the server is at capacity ({waiting} requests waiting); retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(PetkitError):
    pass


class ForwardFailed(RuntimeError):
    """The model raised on a batch (an internal error: HTTP 500); the engine drops that batch and goes on."""


class Engine:
    def __init__(self, runner, pool: AdapterPool, metrics: Metrics, *, max_batch: int = 32,
                 max_waiting: int = 256, prefill_tokens: int = 4096):
        self.runner, self.pool, self.metrics = runner, pool, metrics
        self.max_batch, self.max_waiting, self.prefill_tokens = max_batch, max_waiting, prefill_tokens
        self._waiting: collections.deque = collections.deque()
        self._commands: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="petkit-engine", daemon=True)
        self.error: BaseException | None = None  # set if the loop itself died; /health reports it
        self._loads_published = 0
        self._admitting: list = []  # taken from the queue, not yet running: told too if the engine dies

    # -- HTTP side ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, item, model_name: str) -> None:
        """Queue an item for the adapter `model_name` selects; UnknownAdapter / QueueFull / ShuttingDown."""
        with self._cond:
            if self._stopping or self.error is not None:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                self.metrics.rejected.inc()
                raise QueueFull(len(self._waiting))
            item.adapter = self.pool.reserve(model_name)
            item.emit = self._releasing(item, item.emit)
            item.arrived = time.perf_counter()
            self._waiting.append(item)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    def call(self, fn) -> concurrent.futures.Future:
        """Run fn() on the engine thread between forwards; its result or exception lands in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            self._commands.append((fn, future))
            self._cond.notify()
        return future

    def wake(self) -> None:
        """A cancelled item leaves at the next step; wake an idle engine so it notices."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- engine thread ------------------------------------------------------------------------
    def _releasing(self, item, emit):
        done = False

        def wrapped(kind, payload):
            nonlocal done
            if done:
                return
            if kind in ("done", "error"):
                done = True
                self.pool.release(item.adapter)
            emit(kind, payload)
        return wrapped

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._commands or self._waiting or self.runner.busy or self._stopping):
                        self._cond.wait()
                    if self._stopping:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                    newcomers = self._admitting = self._take_waiting()
                for fn, future in commands:
                    self._run_command(fn, future)
                try:
                    if newcomers:
                        self._admit(newcomers)
                    if self.runner.busy:
                        self.runner.step()
                except Exception as exc:  # noqa: BLE001 - one bad forward fails its batch, not the server
                    log.exception("a forward failed; its requests get an error and the engine goes on")
                    failure = ForwardFailed(f"the model failed on this batch: {type(exc).__name__}: {exc}")
                    for item in newcomers + self.runner.abandon():
                        item.emit("error", failure)
                self._admitting = []
                self._publish()
        except BaseException as exc:  # the engine itself failed: fail every item rather than hang them
            self.error = exc
            raise
        finally:
            self._fail_everything()

    def _take_waiting(self) -> list:
        """Waiting items that fit: free batch slots and the prefill token budget (at least one item)."""
        taken, tokens = [], 0
        slots = self.max_batch - self.runner.size
        while self._waiting and len(taken) < slots:
            item = self._waiting[0]
            if item.cancelled:
                self._waiting.popleft()
                item.emit("done", "cancelled")
                continue
            if taken and tokens + item.tokens > self.prefill_tokens:
                break
            tokens += item.tokens
            taken.append(self._waiting.popleft())
        self.metrics.queue_depth.set(len(self._waiting))
        return taken

    def _admit(self, items: list) -> None:
        ready = []
        for item in items:
            try:
                self.pool.ensure_resident(item.adapter)
            except PetkitError as exc:  # its folder vanished or broke since it was registered
                item.emit("error", exc)
                continue
            ready.append(item)
        if ready:
            self.runner.admit(ready)

    def _run_command(self, fn, future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who maps it to an HTTP status
            future.set_exception(exc)

    def _publish(self) -> None:
        m, pool = self.metrics, self.pool
        m.adapter_loads.inc(pool.loads - self._loads_published)
        self._loads_published = pool.loads
        m.running.set(self.runner.size)
        m.adapters_resident.set(len(pool.resident))
        m.adapter_bytes.set(pool.resident_bytes())

    def _fail_everything(self) -> None:
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            commands, self._commands = list(self._commands), collections.deque()
        reason = ShuttingDown("the server is shutting down" if self.error is None else f"the engine failed: {self.error}")
        for item in self._admitting + waiting + self.runner.abandon():  # an item told twice hears it once
            item.emit("error", reason)
        for _fn, future in commands:
            if future.set_running_or_notify_cancel():
                future.set_exception(reason)
