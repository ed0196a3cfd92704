"""An object hosted in a child process: a persistent worker, started on first use, that runs method calls sent over a pipe.

Why: some frameworks fix what they compute when they are imported, for the life of the process. Keras reads
``KERAS_BACKEND`` once, at import; JAX reads ``JAX_ENABLE_X64``, and torch's distributed machinery wants one
process per rank. A suite that tests more than one such configuration in one run needs one process per
configuration. A :class:`Worker` is that process: it starts a fresh Python interpreter with the environment it
is given (set *before* anything is imported), builds an object there from its ``"package.module:Class"`` target,
and then serves method calls -- ``worker.call("run", network, batch, dtype=..., path=...)`` -- until it is
closed. Arguments and results travel pickled over the child's stdin and stdout, so numpy arrays and the suite's
dataclasses pass as they are; an exception raised in the child is raised again in the parent, with the child's
traceback as its cause.

The contract with the caller:

* **Lazy.** Creating a :class:`Worker` starts nothing; the first :meth:`Worker.call` starts the process and waits
  until the target is built (that is where the framework's import time is paid), and later calls reuse it.
  :meth:`Worker.start` with ``wait=False`` starts it ahead of need, so that the import overlaps other work.
  :func:`shared` hands out one worker per (target, environment) per process, so that every user of a
  configuration shares its process.
* **No orphans.** The parent closes every worker it started when the interpreter exits (``atexit``), when a call
  is interrupted (Ctrl-C, a pytest-timeout) -- the child is then killed, since the pipe is mid-message -- and when
  the child fails. The child, for its part, exits by itself when its input pipe closes (the parent exited or
  closed it) and, checked every :data:`PARENT_POLL` seconds by a watchdog thread, as soon as its parent process is
  gone, even in the middle of a computation (a parent killed by SIGKILL runs no clean-up at all). The child
  ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and the parent decides what happens.
* **A crash is an error, not a hang.** A child that dies mid-call (a segfault in a framework, ``os._exit``)
  makes that call raise :class:`WorkerError` with the exit status and the tail of the child's stderr; the next
  call starts a new child.
* **Same code on both sides.** The child runs the parent's Python (``sys.executable``) with the parent's
  ``sys.path``, so it imports the same ``backprop_conformance`` and the same target the parent would.

Plain pickle, both ways: the pipe connects a process to the child it started, never anything else. The page
model's read-only mappings (``types.MappingProxyType``, which pickle refuses) travel as copies.
"""

from __future__ import annotations

import atexit
import copyreg
import importlib
import io
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, BinaryIO

AHEAD_OF_NEED = 19
"""The niceness of a worker started ahead of need (JAX's compilation ahead): the lowest priority, so
that it runs on the CPU the run's own tests leave idle: beside an un-niced compiling process the run's own tests
slow down markedly, beside a niced one hardly at all."""

PARENT_POLL = 0.5
"""Seconds between the child's checks that its parent is still alive."""

CLOSE_TIMEOUT = 10.0
"""Seconds a closing child gets to exit on its own before it is killed."""

STDERR_TAIL = 4000
"""Characters of the child's stderr quoted in a :class:`WorkerError`."""

_BOOTSTRAP = (
    "import pickle, sys\n"
    "header = pickle.load(sys.stdin.buffer)\n"
    "sys.path[:] = header['sys_path']\n"
    "from backprop_conformance.adapters.worker import _serve\n"
    "_serve(header)\n"
)
"""The child's program: read the header (the parent's ``sys.path``, the target, the parent's pid), then serve.

Only the standard library runs before ``sys.path`` is the parent's, so the child finds ``backprop_conformance``
wherever the parent found it (a checkout, an editable install, a wheel)."""


class WorkerError(RuntimeError):
    """The worker could not be started, died, or exchanged something that cannot be pickled; the message says which."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in the child, attached as the cause of the exception raised again here."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _mapping_proxy(mapping: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(mapping)


def _reduce_mapping_proxy(proxy: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mapping_proxy, (dict(proxy),)


def _dump(obj: object, stream: BinaryIO) -> None:
    """Pickle ``obj`` onto ``stream`` in one write (a failure to pickle then writes nothing)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {**copyreg.dispatch_table, MappingProxyType: _reduce_mapping_proxy}
    pickler.dump(obj)
    stream.write(buffer.getvalue())
    stream.flush()


def _instantiate(target: str) -> Any:
    """``package.module:Class`` (or any callable attribute), imported and called without arguments."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise WorkerError(f"worker target {target!r} is not of the form package.module:Attribute")
    return getattr(importlib.import_module(module_name), attribute)()


class Worker:
    """One child process hosting ``target()``, started on the first :meth:`call` (see the module docstring).

    ``environment`` is added to a copy of this process's environment for the child (the values set here win),
    before the child imports anything. ``name`` appears in messages. ``nice`` is added to the child's niceness before
    it imports anything, so that every thread its framework starts inherits it: a worker that runs ahead of need
    (:data:`AHEAD_OF_NEED`) must not take the CPU from the tests the run is running meanwhile.
    """

    def __init__(self, target: str, environment: Mapping[str, str] | None = None, *, name: str | None = None, nice: int = 0) -> None:
        self.target = target
        self.environment = dict(environment or {})
        self.name = name or target
        self.nice = nice
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: BinaryIO | None = None
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._starting = False
        self.starts = 0

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self.alive and self._process is not None else "not running"
        return f"<Worker {self.name!r}: {state}>"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs, else None."""
        return self._process.pid if self.alive and self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``target_object.method(*args, **kwargs)`` in the child; starts the child first if it is not running.

        An exception raised there is raised here (the same type when it can be pickled, else a
        :class:`WorkerError` with its text), with the child's traceback as ``__cause__``. If anything interrupts
        the exchange -- Ctrl-C, a timeout, a child that dies -- the child is killed before the exception
        propagates, so that no half-read reply is left in the pipe for the next call.
        """
        if method.startswith("_"):
            raise WorkerError(f"worker {self.name!r}: only public methods can be called, not {method!r}")
        with self._lock:
            self._check_owner()
            if self._starting:  # launched by start(wait=False): its answer (ready, or why not) is in the pipe
                self._await_ready()
            elif not self.alive:
                self._start()
            try:
                reply = self._exchange(("call", method, args, kwargs))
            except BaseException:
                self._kill()
                raise
        return self._unpack(reply)

    def start(self, *, wait: bool = True) -> None:
        """Start the child now, unless it runs already; with ``wait=False``, return as soon as it is launched.

        Without waiting, the child imports its framework while the caller goes on (a run starts the workers it
        will need before its first test, so that their start-up overlaps the parent's own work), and the next
        :meth:`call` waits for it to be ready; a child that fails to start makes that call raise. Nor does it wait
        for a call in progress on another thread: that call has started the child already.
        """
        if not self._lock.acquire(blocking=wait):  # a call holds the worker: it is running, or being started by that call
            return
        try:
            self._check_owner()
            if not self._starting and not self.alive:
                self._launch()
            if wait and self._starting:
                self._await_ready()
        finally:
            self._lock.release()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Ask the child to exit, wait up to ``timeout`` seconds, then kill it; safe to call more than once."""
        with self._lock:
            process = self._process
            if process is None or os.getpid() != self._owner:
                return
            if process.poll() is None:
                try:
                    assert process.stdin is not None
                    _dump(("close",), process.stdin)  # type: ignore[arg-type]
                    process.stdin.close()
                except (OSError, ValueError):
                    pass
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._kill()

    def abort(self) -> None:
        """Kill the child now, from any thread, without waiting for a call in progress (that call then raises :class:`WorkerError`).

        For processes that wait on one another: when one rank of a data-parallel group fails, the others are
        blocked in a collective operation, inside :meth:`call`, holding the lock that :meth:`close` needs.
        """
        process = self._process
        if process is not None and os.getpid() == self._owner and process.poll() is None:
            process.kill()

    # The parent's side of the protocol.

    def _check_owner(self) -> None:
        if os.getpid() != self._owner:
            raise WorkerError(
                f"worker {self.name!r} belongs to process {self._owner}, not to this forked copy {os.getpid()}; create a new Worker here"
            )

    def _start(self) -> None:
        self._launch()
        self._await_ready()

    def _launch(self) -> None:
        """Start the child and send it the header; :meth:`_await_ready` reads its answer."""
        self._kill()
        env = {**os.environ, **self.environment}
        self._stderr = tempfile.TemporaryFile()  # kept open for the child's life; _kill closes it
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            close_fds=True,
        )
        self.starts += 1
        _register(self)
        header = {"sys_path": list(sys.path), "target": self.target, "parent": os.getpid(), "name": self.name, "nice": self.nice}
        try:
            _dump(header, self._process.stdin)  # type: ignore[arg-type]
        except OSError as exc:
            error = self._died(f"could not be sent its header ({exc})")
            self._kill()
            raise error from None
        self._starting = True

    def _await_ready(self) -> None:
        """Wait until the child has built its target; raise (and kill it) if it could not."""
        self._starting = False
        try:
            reply = self._receive()
        except BaseException:
            self._kill()
            raise
        if reply[0] != "ready":
            self._kill()
            self._unpack(reply)

    def _exchange(self, message: object) -> tuple[Any, ...]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            _dump(message, process.stdin)  # type: ignore[arg-type]
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise WorkerError(f"worker {self.name!r}: the request cannot be pickled: {exc}") from None
        except OSError as exc:
            raise self._died(f"could not send the request ({exc})") from None
        return self._receive()

    def _receive(self) -> tuple[Any, ...]:
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            return pickle.load(process.stdout)
        except EOFError:
            raise self._died("closed its output before replying") from None
        except (pickle.UnpicklingError, AttributeError, ImportError) as exc:
            raise WorkerError(f"worker {self.name!r}: its reply cannot be unpickled: {exc}") from None

    def _died(self, what: str) -> WorkerError:
        process = self._process
        status = None
        if process is not None:
            try:
                status = process.wait(2.0)
            except subprocess.TimeoutExpired:
                status = None
        how = "is still running" if status is None else f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return WorkerError(
            f"worker {self.name!r} (target {self.target}, pid {process.pid if process else '?'}) {what} and {how}; "
            f"its stderr ends with:\n{self._stderr_tail() or '(nothing)'}"
        )

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - STDERR_TAIL))
            return self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _unpack(self, reply: tuple[Any, ...]) -> Any:
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "error":
            _, exc, remote = reply
            if not isinstance(exc, BaseException):
                exc = WorkerError(f"worker {self.name!r}: {exc}")
            raise exc from RemoteTraceback(remote)
        raise WorkerError(f"worker {self.name!r}: unexpected reply {reply[0]!r}")

    def _kill(self) -> None:
        self._starting = False
        process, self._process = self._process, None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            if process.poll() is None:
                process.kill()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# The process-wide registry: one worker per (target, environment), every started one closed at exit.

_SHARED: dict[tuple[str, tuple[tuple[str, str], ...]], Worker] = {}
_STARTED: list[Worker] = []
_REGISTRY_LOCK = threading.Lock()


def shared(target: str, environment: Mapping[str, str] | None = None, *, name: str | None = None, nice: int = 0) -> Worker:
    """This process's worker for ``target`` in ``environment``, created (not started) on the first request."""
    key = (target, tuple(sorted((environment or {}).items())), nice)
    with _REGISTRY_LOCK:
        worker = _SHARED.get(key)
        if worker is None or worker._owner != os.getpid():
            worker = _SHARED[key] = Worker(target, environment, name=name, nice=nice)
        return worker


def _register(worker: Worker) -> None:
    with _REGISTRY_LOCK:
        if not _STARTED:
            atexit.register(close_all)
        if worker not in _STARTED:
            _STARTED.append(worker)


def close_all() -> None:
    """Close every worker this process started (registered with ``atexit`` when the first one starts)."""
    with _REGISTRY_LOCK:
        workers = list(_STARTED)
    for worker in workers:
        worker.close()


# The child's side.


def _serve(header: dict[str, Any]) -> None:
    """The child's main loop: build the target, say ready, then answer calls until the pipe closes or "close" arrives.

    The protocol uses private duplicates of stdin and stdout; fd 0 is then pointed at /dev/null and fd 1 at
    stderr, so that a framework printing to stdout (or reading stdin) cannot corrupt the protocol.
    """
    if header.get("nice"):
        os.nice(int(header["nice"]))
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(int(header["parent"]),), name="parent-watchdog", daemon=True).start()
    try:
        hosted = _instantiate(header["target"])
    except BaseException as exc:  # whatever the target's import or constructor raises is the parent's to see
        _reply(replies, ("error", exc, traceback.format_exc()))
        _exit(replies, 1)
    _reply(replies, ("ready", os.getpid()))
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            break
        if message[0] == "close":
            break
        _, method, args, kwargs = message
        try:
            reply: tuple[Any, ...] = ("ok", getattr(hosted, method)(*args, **kwargs))
        except Exception as exc:  # the hosted object's exception is a result for the parent, not the child's end
            reply = ("error", exc, traceback.format_exc())
        _reply(replies, reply)
    _exit(replies, 0)


def _reply(replies: BinaryIO, reply: tuple[Any, ...]) -> None:
    """Send ``reply``; if it cannot be pickled (a result or an exception that refuses), send a WorkerError saying so."""
    try:
        if reply[0] == "error":
            pickle.loads(pickle.dumps(reply[1]))  # an exception whose constructor cannot be replayed would fail in the parent
        _dump(reply, replies)
    except Exception as exc:  # pickling runs arbitrary __reduce__ code; any failure must still reach the parent
        what = f"{type(reply[1]).__name__} {'result' if reply[0] == 'ok' else 'exception'}"
        text = f"the child could not pickle its {what}: {type(exc).__name__}: {exc}"
        if reply[0] == "error":
            text += f"; the exception was {type(reply[1]).__name__}: {reply[1]}"
        _dump(("error", WorkerError(text), reply[2] if reply[0] == "error" else ""), replies)


def _watch_parent(parent: int) -> None:
    """Exit the child at once when its parent is gone (it is then re-parented, so ``getppid`` changes)."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(PARENT_POLL)


def _exit(replies: BinaryIO, status: int) -> None:
    """Leave without running the hosted framework's exit handlers, which can hang or crash in a process whose parent is going."""
    try:
        replies.flush()
    except OSError:
        pass
    sys.stderr.flush()
    os._exit(status)
