"""The worker processes of adapters/worker.py: calls, errors, crashes, and above all no orphan processes.

The hosted objects are in ``tests/worker_targets.py``. The teardown tests run a *parent* Python process that
starts a worker, then end that parent the ways a test run ends -- normal exit, SIGKILL while the worker is idle,
SIGKILL while it is busy, Ctrl-C while a call waits -- and check that the worker process is gone within a few
seconds each time. Linux only: they read process states from /proc.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import DEFAULT_SIGINT

from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.base import RequestError
from backprop_conformance.adapters.worker import RemoteTraceback, Worker, WorkerError
from backprop_conformance.conformance.problems import contract_problem

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PROBE = "worker_targets:Probe"
GONE_WITHIN = 5.0
"""Seconds a worker may outlive its parent: the watchdog polls every 0.5 s, and the machine may be busy."""

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")


def running(pid: int) -> bool:
    """True while ``pid`` is a live process: not gone, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pid: int, timeout: float = GONE_WITHIN) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return not running(pid)


@pytest.fixture
def probe() -> Iterator[Worker]:
    worker = Worker(PROBE, {"BACKPROP_CONFORMANCE_TEST_VARIABLE": "set before import"}, name="probe")
    try:
        yield worker
    finally:
        worker.close()


# --- calls --------------------------------------------------------------------------------------------------


def test_a_worker_starts_on_its_first_call_and_is_reused(probe: Worker) -> None:
    assert probe.pid is None and not probe.alive, "creating a Worker must not start a process"
    pid = probe.call("pid")
    assert pid != os.getpid() and probe.pid == pid and running(pid)
    assert probe.call("pid") == pid and probe.starts == 1


def test_start_without_waiting_returns_at_once_and_the_first_call_uses_that_process() -> None:
    worker = Worker("worker_targets:SlowConstructor", {"BACKPROP_CONFORMANCE_TEST_DELAY": "1.5"}, name="slow")
    try:
        began = time.monotonic()
        worker.start(wait=False)
        launched = time.monotonic() - began
        assert launched < 1.0, f"start(wait=False) waited {launched:.2f} s for a target that takes 1.5 s to build"
        pid = worker.pid
        assert pid is not None and running(pid)
        worker.start(wait=False)  # already starting: no second process
        assert worker.call("pid") == pid and worker.starts == 1
        assert time.monotonic() - began >= 1.5, "the first call returned before the target was built"
    finally:
        worker.close()


def test_starting_without_waiting_does_not_wait_for_a_call_in_progress_on_another_thread(probe: Worker) -> None:
    """A warm-up thread's call holds the worker; a second ``start(wait=False)`` (the next cell's hint) must not block on it."""
    probe.call("pid")
    sleeper = threading.Thread(target=probe.call, args=("sleep", 1.5))
    sleeper.start()
    time.sleep(0.3)
    began = time.monotonic()
    probe.start(wait=False)
    waited = time.monotonic() - began
    sleeper.join()
    assert waited < 0.5, f"start(wait=False) waited {waited:.2f} s for another thread's call to finish"
    assert probe.starts == 1


def test_a_niced_worker_runs_at_the_niceness_it_was_given() -> None:
    """``nice`` is applied in the child before its target is imported, so every thread it starts inherits it."""
    worker = Worker("worker_targets:Probe", name="niced", nice=5)
    try:
        pid = worker.call("pid")
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)
    finally:
        worker.close()


def test_a_target_that_fails_while_starting_in_the_background_raises_its_own_error_at_the_first_call() -> None:
    worker = Worker("worker_targets:BrokenConstructor")
    worker.start(wait=False)
    with pytest.raises(RuntimeError, match="constructor failed on purpose"):
        worker.call("anything")
    assert not worker.alive and worker.starts == 1, "the error must come from the background start, not from a second one"


def test_a_worker_closed_while_starting_leaves_no_process() -> None:
    worker = Worker("worker_targets:SlowConstructor", {"BACKPROP_CONFORMANCE_TEST_DELAY": "1.0"}, name="slow")
    worker.start(wait=False)
    pid = worker.pid
    assert pid is not None
    worker.close()
    assert wait_until_gone(pid) and not worker.alive


def test_the_environment_is_set_before_the_target_is_imported(probe: Worker) -> None:
    assert probe.call("environment_at_import", "BACKPROP_CONFORMANCE_TEST_VARIABLE") == "set before import"
    assert "BACKPROP_CONFORMANCE_TEST_VARIABLE" not in os.environ, "the parent's own environment must not change"


def test_the_suites_data_travel_intact() -> None:
    """Network, Batch and AdapterOutput hold read-only MappingProxyType mappings, which plain pickle refuses."""
    problem = contract_problem("float32")
    hosted = Worker("backprop_conformance.adapters.example_numpy:NumpyAdapter")
    try:
        remote = hosted.call("run", problem.network, problem.batch, dtype="float32", path="manual")
        args, kwargs = Worker(PROBE).call("echo", problem.network, key=problem.batch)
    finally:
        hosted.close()
        workers.close_all()
    from backprop_conformance.adapters.example_numpy import NumpyAdapter

    local = NumpyAdapter().run(problem.network, problem.batch, dtype="float32", path="manual")
    for kind, l, g in local.gradients.items():
        got = (remote.gradients.w if kind == "w" else remote.gradients.b)[l]
        assert got.dtype == g.dtype and np.array_equal(got, g), f"∂C/∂{kind}^{l} changed on its way through the pipe"
    assert remote.cost == local.cost
    assert all(np.array_equal(args[0].w[l], problem.network.w[l]) for l in problem.network.layers)
    assert np.array_equal(kwargs["key"].x, problem.batch.x)


def test_output_written_to_stdout_by_the_hosted_code_does_not_corrupt_the_replies(probe: Worker) -> None:
    assert probe.call("noisy", 41) == 41
    assert probe.call("noisy", 42) == 42


def test_only_public_methods_can_be_called(probe: Worker) -> None:
    with pytest.raises(WorkerError, match="only public methods"):
        probe.call("__class__")


# --- errors -------------------------------------------------------------------------------------------------


def test_an_exception_in_the_child_is_raised_here_with_the_childs_traceback(probe: Worker) -> None:
    with pytest.raises(ValueError, match="raised over there") as info:
        probe.call("raise_value_error", "raised over there")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__), "the cause must carry the child's traceback"
    assert probe.call("pid") == probe.pid, "an exception in a call must leave the worker usable"


def test_a_request_error_keeps_its_type() -> None:
    problem = contract_problem("bfloat16")
    hosted = Worker("backprop_conformance.adapters.example_numpy:NumpyAdapter")
    try:
        with pytest.raises(RequestError, match="unsupported dtype 'bfloat16'"):
            hosted.call("compute", problem.network, problem.batch, dtype="bfloat16", path="manual")
    finally:
        hosted.close()


def test_an_unpicklable_result_or_exception_is_reported_and_the_worker_survives(probe: Worker) -> None:
    with pytest.raises(WorkerError, match="could not pickle its function result"):
        probe.call("unpicklable_result")
    with pytest.raises(WorkerError, match="UnpicklableError: first second"):
        probe.call("raise_unpicklable")
    assert probe.call("echo", 1) == ((1,), {})
    assert probe.starts == 1


def test_an_unpicklable_request_is_refused_before_it_is_sent(probe: Worker) -> None:
    with pytest.raises(WorkerError, match="request cannot be pickled"):
        probe.call("echo", lambda: None)


def test_a_target_that_cannot_be_built_raises_its_own_error_and_leaves_no_process() -> None:
    for target, error, text in (
        ("no_such_module_anywhere:Thing", ModuleNotFoundError, "no_such_module_anywhere"),
        ("worker_targets:BrokenConstructor", RuntimeError, "constructor failed on purpose"),
        ("worker_targets", WorkerError, "not of the form"),
    ):
        worker = Worker(target)
        with pytest.raises(error, match=text):
            worker.call("anything")
        assert not worker.alive and worker.pid is None


def test_a_child_that_dies_mid_call_is_an_error_naming_its_status_and_the_next_call_restarts_it(probe: Worker) -> None:
    first = probe.call("pid")
    with pytest.raises(WorkerError, match=r"exited with status 7(.|\n)*about to crash on purpose"):
        probe.call("crash", 7)
    assert not running(first)
    second = probe.call("pid")
    assert second != first and probe.starts == 2


# --- teardown: no orphans -----------------------------------------------------------------------------------


def test_close_ends_and_reaps_the_child(probe: Worker) -> None:
    pid = probe.call("pid")
    probe.close()
    assert not probe.alive and not running(pid)
    probe.close()  # twice is harmless


def test_shared_workers_are_one_per_target_and_environment() -> None:
    a = workers.shared(PROBE, {"X": "1"})
    assert workers.shared(PROBE, {"X": "1"}) is a
    assert workers.shared(PROBE, {"X": "2"}) is not a
    assert workers.shared(PROBE) is not a


def test_a_call_interrupted_in_this_process_kills_the_child(probe: Worker) -> None:
    """An exception while a reply is awaited leaves no child: here one raised by SIGALRM and derived from
    BaseException, as pytest-timeout's ``pytest.fail`` and Ctrl-C's KeyboardInterrupt are."""

    class Interrupted(BaseException):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    pid = probe.call("pid")
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):
            probe.call("sleep", 30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not probe.alive and wait_until_gone(pid)
    assert probe.call("echo", "again") == (("again",), {}), "the next call starts a fresh child"


PARENT = """
import sys, time
from backprop_conformance.adapters.worker import Worker
worker = Worker("worker_targets:Probe", name="probe")
print(worker.call("pid"), flush=True)
mode = sys.argv[1]
if mode == "busy":
    try:
        worker.call("sleep", 60)
    except KeyboardInterrupt:
        print("interrupted; worker alive:", worker.alive, flush=True)
        sys.exit(0)
elif mode == "idle":
    time.sleep(60)
"""
"""A parent process: starts a worker, prints its pid, then exits ("exit"), idles ("idle") or waits on a long call ("busy")."""


def start_parent(mode: str) -> tuple[subprocess.Popen[str], int]:
    """The parent in a session of its own (so that a signal to its group reaches no one else), and its worker's pid."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGINT, "-c", PARENT, mode],  # Ctrl-C reaches it even if this run ignores SIGINT
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    if not line.strip().isdigit():
        parent.kill()
        raise AssertionError(f"the parent did not start its worker: {line!r}\n{parent.communicate(timeout=10)[1]}")
    return parent, int(line)


def test_no_orphan_when_the_parent_exits_without_closing() -> None:
    """The parent's atexit handler closes the worker; its closed pipe alone would end the child too."""
    parent, child = start_parent("exit")
    assert parent.wait(30) == 0
    assert wait_until_gone(child)


def test_close_all_closes_every_started_worker() -> None:
    """What the atexit handler runs."""
    started = [Worker(PROBE, {"N": str(n)}) for n in range(2)]
    pids = [worker.call("pid") for worker in started]
    workers.close_all()
    assert not any(worker.alive for worker in started)
    assert not any(running(pid) for pid in pids)


@pytest.mark.parametrize("mode", ["idle", "busy"])
def test_no_orphan_when_the_parent_is_killed(mode: str) -> None:
    """SIGKILL runs no clean-up in the parent: an idle child sees its input close, a busy one is ended by its watchdog."""
    parent, child = start_parent(mode)
    time.sleep(0.5)  # let a busy parent's call reach the child
    parent.kill()
    parent.wait(10)
    assert wait_until_gone(child), f"the worker of a parent killed while {mode} outlived it by {GONE_WITHIN} s"


def test_no_orphan_after_ctrl_c() -> None:
    """Ctrl-C signals the whole process group: the child ignores it, the parent's call raises and kills the child."""
    parent, child = start_parent("busy")
    time.sleep(0.5)
    os.killpg(parent.pid, signal.SIGINT)
    out, err = parent.communicate(timeout=30)
    assert "interrupted; worker alive: False" in out, f"the interrupted call must kill its worker at once: {out!r} {err!r}"
    assert parent.returncode == 0
    assert wait_until_gone(child)


def test_mapping_proxies_are_pickled_as_copies() -> None:
    import io
    from types import MappingProxyType

    buffer = io.BytesIO()
    workers._dump(MappingProxyType({1: np.zeros(2)}), buffer)
    back = pickle.loads(buffer.getvalue())
    assert isinstance(back, MappingProxyType) and np.array_equal(back[1], np.zeros(2))
