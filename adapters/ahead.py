"""Work done ahead of need: one background thread that works through hinted jobs before the requests that need them.

An adapter's :meth:`~backprop_conformance.adapters.base.Adapter.prepare` learns which cells and shapes a run will
test before its first example; JAX compiles those shapes' programs ahead, and Keras warms each backend's worker up
with one step per shape. Both follow the same rules, which live here once:

* **A hint, never a result.** A job does what the request that needs it would have done itself (the same jitted
  function on the same shapes, the same step in the same worker), so it can change only when the work is paid for.
  A job that raises is dropped: the request that meets the same work raises the error where it belongs.
* **Never in the way.** A request that needs a job's work :meth:`~Ahead.claim`\\ s it: a job still queued is taken
  off the queue (the request does the work itself, as it would have without the hint), and only a job already
  running is waited for. :meth:`~Ahead.cancel` drops what has not begun (a run that ends early must not wait for
  work it will never use), and :meth:`~Ahead.stop` does so for good.
* **One thread, started on the first job and gone when the queue is empty or the main thread has finished**, so a
  process waits at exit for one job at most. Whether it is a daemon is the subclass's choice: a thread that only
  waits on a worker's pipe may be abandoned at exit, while one that compiles in this process must never be stopped
  inside the compiler.
"""

from __future__ import annotations

import abc
import threading
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class _Job(Generic[K]):
    def __init__(self, key: K) -> None:
        self.key = key
        self.state = "queued"  # then "running" and "done", or "claimed" (a request got there first) / "cancelled"
        self.done = threading.Event()


class Ahead(abc.ABC, Generic[K]):
    """Jobs keyed by what they prepare, done one at a time by one background thread (see the module docstring).

    Subclasses implement :meth:`work`. A key submitted again while its job is known (queued, running or done and
    not yet claimed) is not queued twice.
    """

    def __init__(self, name: str, *, daemon: bool) -> None:
        self._name = name
        self._daemon = daemon
        self._lock = threading.Lock()
        self._jobs: dict[K, _Job[K]] = {}
        self._queue: deque[_Job[K]] = deque()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @abc.abstractmethod
    def work(self, key: K) -> None:
        """Do ``key``'s job; an exception is dropped (a hint only)."""

    def submit(self, key: K) -> None:
        """Queue ``key``'s job, and start the thread if none is running; nothing once :meth:`stop` was called."""
        with self._lock:
            if self._stopped or key in self._jobs:
                return
            job = self._jobs[key] = _Job(key)
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=self._daemon)
                self._thread.start()

    def claim(self, key: K) -> None:
        """Before a request that needs ``key``'s work: wait if its job is running, else take it off the queue."""
        with self._lock:
            job = self._jobs.pop(key, None)
            if job is None:
                return
            if job.state == "queued":
                job.state = "claimed"
                return
        job.done.wait()

    def cancel(self) -> None:
        """Drop every job not yet begun; the thread leaves after the one it is doing, and a later :meth:`submit` starts again."""
        with self._lock:
            self._cancel()

    def stop(self) -> None:
        """:meth:`cancel`, and accept no job from now on."""
        with self._lock:
            self._stopped = True
            self._cancel()

    def _cancel(self) -> None:
        for job in self._jobs.values():
            if job.state == "queued":
                job.state = "cancelled"
        self._jobs.clear()
        self._queue.clear()

    def _serve(self) -> None:
        try:
            while threading.main_thread().is_alive():
                with self._lock:
                    job = self._next()
                    if job is None:  # nothing left: leave, under the lock, so that the next submit starts a thread
                        self._thread = None
                        return
                    job.state = "running"
                try:
                    self.work(job.key)
                except Exception:  # a hint only: the request that meets the same work raises the error itself
                    pass
                finally:
                    job.state = "done"
                    job.done.set()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _next(self) -> _Job[K] | None:
        """The first job still queued (claimed and cancelled ones are passed over), under the lock."""
        while self._queue:
            job = self._queue.popleft()
            if job.state == "queued":
                return job
        return None
