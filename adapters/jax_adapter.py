"""The built-in JAX adapter: the page's sigmoid network written as JAX users write an MLP.

Parameters are a list of (W, b) pairs, one per layer l = 2..L, with W = w^l in page layout (n(l), n(l−1)), so
``W[j-1, k-1]`` is w^l_jk and a layer is ``z = a @ W.T + b`` (z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j), a = σ(z) with
``jax.nn.sigmoid``. The cost is the page's C = 1/2 Σ_j (y_j − a^L_j)², summed over the batch too.

Execution paths, each one of JAX's own ways to get a gradient:

* ``"grad"``: ``jax.grad`` run eagerly (op by op, no ``jax.jit``);
* ``"jit"``: ``jax.jit(jax.grad(...))``, one XLA program for the whole backward pass;
* ``"jacfwd"``: ``jax.jit(jax.jacfwd(...))``, forward mode: a different algorithm from backpropagation, whose
  gradient must still agree. It pushes one tangent per parameter, so its cost grows with the square of the
  parameter count; it is jitted because op-by-op it compiles ~35 primitives per new shape (1-2 s), and the
  op-by-op machinery is already on trial in ``"grad"``;
* ``"vjp"``: ``jax.vjp`` with the cotangent 1 applied by hand, the primitive under ``jax.grad``. It also returns
  δ^l = ∂C/∂z^l, by differentiating with respect to a zero perturbation added to every z^l: the cotangent of
  that perturbation is δ^l itself, so the page's error terms come out of the same backward pass for free.
* ``"sharded"``: ``jax.jit(jax.value_and_grad(...))`` with the batch sharded over a mesh of N CPU devices, so that
  XLA's partitioner inserts the cross-device sum; it runs in a worker process that has N host devices
  (:mod:`backprop_conformance.adapters.jax_sharded`). Opt-in, like every data-parallel path.

Why the details below matter for a verdict:

* Matmuls run at ``precision=HIGHEST``, passed to each product rather than set globally: on GPUs the default
  float32 precision may use TF32 (10-bit significands), which the error bound does not describe and which must
  not leak into, or out of, the user's process.
* float64 runs inside the scoped ``enable_x64`` context, never by flipping the global ``jax_enable_x64`` flag:
  the suite runs inside users' processes and must leave their JAX configuration as it found it.
* The differentiated functions are built once per path, at module level: ``jax.jit`` caches compiled programs
  per function object, and rebuilding ``jax.jit(jax.grad(f))`` on every call would recompile every time. The
  cache then keys on shapes, dtypes, device and the x64 context, so a repeated architecture never recompiles.
* Importing this module does not import JAX (adapter contract): JAX is imported inside functions.
* Compilation overlaps the run (:meth:`JaxAdapter.prepare`). With the persistent compilation cache in force (the
  suite's default), a worker process compiles the pooled shapes into it while this process runs other tests, and
  each example's first call of a shape then loads the program from the cache; without one, a background thread
  calls the same jitted functions on zeros, which fills ``jax.jit``'s own in-memory cache. Either way the examples
  run the very programs they would have compiled themselves, and a shape they reach first is compiled by them
  instead (:class:`_Precompiler`).
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backprop_conformance.adapters import jax_sharded
from backprop_conformance.adapters import worker as workers
from backprop_conformance.adapters.base import Adapter, AdapterOutput, Capabilities, RequestError
from backprop_conformance.adapters.dispatch import xla_configuration, xla_levels
from backprop_conformance.reference.dtypes import float_format
from backprop_conformance.reference.model import Batch, Gradients, Network

DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
PATHS: tuple[str, ...] = ("grad", "jit", "jacfwd", "vjp", "sharded")
DEFAULT_PATHS: tuple[str, ...] = ("jit",)
"""The paths a plain ``pytest conformance`` runs: ``jit``, the canonical ``jax.jit(jax.grad(loss))`` training
step.

``grad`` and ``vjp`` (eager) are supported but opt-in (``--conformance-path grad``, ``--conformance-all-paths``): eager dispatch
compiles every primitive for every new operand shape, ~0.7 s per new network shape on 2 CPU cores against ~0.2
s for ``jit`` (measured over the suite's shape pool: 11 s for grad, 3 s for jit, per dtype), which alone would
take the default run past its 60 s budget. ``jacfwd`` is opt-in too: forward mode pushes one tangent per
parameter, so its time and memory grow with the square of the parameter count. Measured on 2 CPU cores for a
depth-8, width-64 net (29,120 parameters, batch 32): 6 s per call and 4.0 GB peak memory in float32, 8 s and
7.8 GB in float64, where ``"jit"`` takes 3 ms and 0.25 GB. On the small nets of the design note's lower range
it is as fast as the others (7 ms, 26 parameters)."""

ACCUMULATION: dict[str, dict[str, str]] = {
    "float16": {"dot": "float32", "cost_sum": "float32"},
    "bfloat16": {"dot": "float32", "cost_sum": "float32"},
}
"""Declared per operation, because XLA on CPU differs per operation (``python -m benchmarks.accumulation``, jax 0.10.2).
float16 and bfloat16 matrix products accumulate in float32 (correctly rounded, as float32 accumulation is, in
every trial), forward products and the transposed products of the weight gradient alike, and so does
``jnp.sum``, the cost's sum. One sum does not: the bias gradient's sum over the batch, which JAX gets as the
transpose of b's broadcast, a reduce_sum kept in the storage format (correctly rounded in only some trials, as a
sum in the format is). It is left out of the mapping, so it is charged at the storage format's own γ_B.
In bfloat16 that γ_B is finite only below 256 examples (B·2^-8 < 1): no bound, and no verdict, exists for a
larger bfloat16 batch summed in bfloat16, and the bound says so instead of judging it."""


def _jax() -> Any:
    """Import JAX on first use only, so that listing adapters never imports (or fails on) it."""
    import jax

    return jax


def _x64_context() -> contextlib.AbstractContextManager[Any]:
    """The scoped x64 switch: ``jax.enable_x64(True)`` (JAX ≥ 0.8), else ``jax.experimental.enable_x64(True)``.

    Both restore the previous value on exit and are thread-local, unlike ``jax.config.update``, which would
    switch 64-bit types on for the rest of the user's process.
    """
    jax = _jax()
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:
        from jax.experimental import enable_x64
    return enable_x64(True)


def _forward(params: list[tuple[Any, Any]], x: Any, y: Any, perturbations: list[Any] | None = None) -> tuple[Any, tuple[Any, ...]]:
    """C and the forward trace (C, [z^2..z^L], [a^1..a^L]) of the page's network, in the arrays' own dtype.

    ``params[l - 2]`` is (w^l, b^l). ``perturbations``, when given, holds one zero array per layer added to
    z^l, so that differentiating with respect to it yields δ^l = ∂C/∂z^l (adding zeros leaves z^l exact).
    """
    jax = _jax()
    jnp = jax.numpy
    highest = jax.lax.Precision.HIGHEST
    a = x
    zs = []
    activations = [x]
    for index, (w, b) in enumerate(params):
        # z^l_j = Σ_k w^l_jk a^{l−1}_k + b^l_j, one example per row.
        z = jnp.matmul(a, w.T, precision=highest) + b
        if perturbations is not None:
            z = z + perturbations[index]
        # a^l_j = σ(z^l_j)
        a = jax.nn.sigmoid(z)
        zs.append(z)
        activations.append(a)
    # C = Σ_x 1/2 Σ_j (y_j − a^L_j)²
    cost = 0.5 * jnp.sum((y - a) ** 2)
    return cost, (cost, zs, activations)


@functools.cache
def _differentiated(path: str) -> Callable[[Any, Any, Any], tuple[Any, Any, Any]]:
    """The transformed function for ``path``, built once per process so that ``jax.jit``'s cache is reused.

    Each takes (params, x, y) and returns ([(∂C/∂w^l, ∂C/∂b^l)], [δ^l] or None, (C, [z^l], [a^l])).
    """
    jax = _jax()
    if path in ("grad", "jit", "jacfwd"):
        transform = jax.jacfwd(_forward, has_aux=True) if path == "jacfwd" else jax.grad(_forward, has_aux=True)
        if path != "grad":
            transform = jax.jit(transform)

        def gradients_and_trace(params: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
            gradients, trace = transform(params, x, y)
            return gradients, None, trace

        return gradients_and_trace

    def pulled_back(params: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        # One zero perturbation per z^l, on the parameters' device: (B, n(l)).
        zeros = [jax.device_put(np.zeros((x.shape[0], w.shape[0]), dtype=w.dtype), next(iter(w.devices()))) for w, _ in params]
        cost, pullback, trace = jax.vjp(lambda p, e: _forward(p, x, y, e), params, zeros, has_aux=True)
        gradients, deltas = pullback(jax.numpy.ones_like(cost))
        return gradients, deltas, trace

    return pulled_back


class JaxAdapter(Adapter):
    """The page's network and cost in ``jax.numpy``, differentiated by grad, jit(grad), jacfwd or vjp."""

    requires: ClassVar[tuple[str, ...]] = ("jax",)

    def capabilities(self) -> Capabilities:
        """Paths, dtypes and devices; "gpu" is listed only when ``jax.devices("gpu")`` finds one."""
        jax = _jax()
        return Capabilities(
            name="jax",
            framework="JAX",
            version=jax.__version__,
            dtypes=DTYPES,
            paths=PATHS,
            default_paths=DEFAULT_PATHS,
            devices=_devices(),
            accumulation=dict(ACCUMULATION),
            shape_compiled_paths=PATHS,
            environment=(jax_sharded.DEVICES_VARIABLE,),
            ranks={"sharded": jax_sharded.device_count()},
            levels=dict.fromkeys(PATHS, xla_levels()),
        )

    def dispatch(self, path: str) -> Mapping[str, str]:
        """The ISA XLA:CPU compiles every path for in this process (:func:`~backprop_conformance.adapters.dispatch.xla_configuration`)."""
        return xla_configuration()

    def use_cache(self, directory: Path) -> str | None:
        """JAX's persistent compilation cache in ``directory``, unless the user configured one (``JAX_COMPILATION_CACHE_DIR``).

        ``jax.jit`` compiles every new shape and format once per process (about 0.5 s each on 2 CPU cores,
        bfloat16 about twice that: XLA's CPU backend has no bfloat16 arithmetic and rewrites each op into
        float32 with conversions around it), and a default run compiles some hundred programs. The cache
        keeps them between runs; JAX keys each entry by the program, the compile options, the jaxlib
        version and the device, so a cached program is the very program a fresh compilation would give
        and cannot change a verdict. ``min_compile_time_secs`` is lowered to 0 because most of these
        compilations take under JAX's default threshold of 1 s. Both settings are process-wide and stay
        for the rest of the process, which the returned line tells the run's header.
        """
        jax = _jax()
        if jax.config.jax_compilation_cache_dir is not None:
            return f"jax: compilation cache as configured ({jax.config.jax_compilation_cache_dir})"
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        return f"jax: persistent compilation cache in {directory} (process-wide; clear it by deleting the directory)"

    def prepare(self, path: str, dtype: str, device: str, shapes: Sequence[tuple[tuple[int, ...], int]]) -> None:
        """Compile ``path``'s program for each of ``shapes`` in ``dtype`` ahead of the examples (:class:`_Precompiler`).

        Each compilation takes 0.15-1 s on 2 CPU cores (``python -m benchmarks.bench_suite``: a cold default run
        compiles 64 programs), which then runs on the core the rest of the run leaves idle. For the ``sharded``
        path, which compiles in its own worker process, start that process instead.
        """
        if path == "sharded":
            jax_sharded.shared_worker(self.caps.ranks_of("sharded")).start(wait=False)
            return
        for widths, batch_size in shapes:
            _PRECOMPILER.submit((path, dtype, device, tuple(widths), batch_size))

    def finish(self) -> None:
        """Drop the compilations not yet begun (a run that ends early must not wait for programs it will never run)
        and close the process that compiled ahead."""
        _PRECOMPILER.cancel()
        _cache_filler().close()

    def load_parameters(self, network: Network, *, dtype: str, device: str = "cpu") -> Network:
        """Put w^l and b^l on ``device`` as the (W, b) pairs ``run`` differentiates, and read them back in page layout."""
        with _precision_scope(dtype):
            params = _parameters(network, dtype, device)
            carrier = float_format(dtype).carrier
            return Network.from_lists([_to_numpy(w, carrier) for w, _ in params], [_to_numpy(b, carrier) for _, b in params])

    def run(self, network: Network, batch: Batch, *, dtype: str, path: str, device: str = "cpu") -> AdapterOutput:
        """∂C/∂w^l and ∂C/∂b^l (l = 2..L) of C = Σ_x 1/2 Σ_j (y_j − a^L_j)², computed by JAX in ``dtype``.

        Returns gradients in page layout and ``dtype``'s carrier (bfloat16 in float32 arrays), the cost, a^l
        (l = 1..L) and z^l (l = 2..L) on every path, and δ^l = ∂C/∂z^l on the ``"vjp"`` path. The request has
        been checked by :meth:`~backprop_conformance.adapters.base.Adapter.compute`.
        """
        if path == "sharded":
            return _run_sharded(network, batch, dtype=dtype, device=device, devices=self.caps.ranks_of("sharded"))
        with _precision_scope(dtype):
            return _run(network, batch, dtype=dtype, path=path, device=device)


def _run_sharded(network: Network, batch: Batch, *, dtype: str, device: str, devices: int) -> AdapterOutput:
    """The ``sharded`` path on ``devices`` host devices (the number the bound charges), computed in its worker process;
    the gradient is already the summed cost's (nothing averages)."""
    if device != "cpu":
        raise RequestError(f"jax: the sharded path shards over host (CPU) devices only, not {device!r}")
    result = jax_sharded.shared_worker(devices).call("run", network, batch, dtype)
    return AdapterOutput(gradients=Gradients(result["w"], result["b"]), cost=result["cost"], a=result["a"], z=result["z"])


@functools.cache
def _devices() -> tuple[str, ...]:
    """("cpu",), plus "gpu" when JAX has a GPU backend here (``jax.devices("gpu")`` raises RuntimeError if not)."""
    jax = _jax()
    try:
        has_gpu = len(jax.devices("gpu")) > 0
    except RuntimeError:
        has_gpu = False
    return ("cpu", "gpu") if has_gpu else ("cpu",)


def _precision_scope(dtype: str) -> contextlib.AbstractContextManager[Any]:
    """The scoped x64 switch for float64, nothing for the other formats (which JAX handles without it)."""
    return _x64_context() if dtype == "float64" else contextlib.nullcontext()


def _put(array: np.ndarray, dtype: str, device: str) -> Any:
    """``array`` as a JAX array of format ``dtype`` on ``device``.

    numpy converts exactly (the values are representable, checked before); ``jax.numpy.dtype("bfloat16")`` is
    ml_dtypes' bfloat16, which numpy can convert to. Must run inside :func:`_precision_scope` for float64.
    """
    jax = _jax()
    return jax.device_put(np.asarray(array, dtype=jax.numpy.dtype(dtype)), jax.devices(device)[0])


def _parameters(network: Network, dtype: str, device: str) -> list[tuple[Any, Any]]:
    """The page's w^l, b^l as the JAX user's parameter list: ``params[l - 2] = (W, b)``, W of shape (n(l), n(l−1))."""
    return [(_put(network.w[l], dtype, device), _put(network.b[l], dtype, device)) for l in network.layers]


def _to_numpy(array: Any, carrier: np.dtype) -> np.ndarray:
    """A JAX array as numpy in the format's carrier (bfloat16 widens exactly to float32)."""
    return np.asarray(array).astype(carrier)


def _run(network: Network, batch: Batch, *, dtype: str, path: str, device: str) -> AdapterOutput:
    """Put the inputs on ``device`` in ``dtype``, differentiate along ``path``, and bring the results back."""
    _PRECOMPILER.claim((path, dtype, device, network.widths, batch.size))
    params = _parameters(network, dtype, device)
    x, y = _put(batch.x, dtype, device), _put(batch.y, dtype, device)
    gradients, deltas, (cost, zs, activations) = _differentiated(path)(params, x, y)
    carrier = float_format(dtype).carrier

    def by_layer(arrays: list[Any], first: int = 2) -> dict[int, np.ndarray]:
        return {l: _to_numpy(array, carrier) for l, array in enumerate(arrays, start=first)}

    return AdapterOutput(
        gradients=Gradients(by_layer([w for w, _ in gradients]), by_layer([b for _, b in gradients])),
        cost=float(cost),
        a=by_layer(activations, first=1),
        z=by_layer(zs),
        delta=None if deltas is None else by_layer(deltas),
    )


_Key = tuple[str, str, str, tuple[int, ...], int]
"""(path, dtype, device, widths, batch size): what one compiled program is specialised to."""


class _Job:
    def __init__(self, key: _Key) -> None:
        self.key = key
        self.state = "queued"  # then "running" and "done", or "claimed" (an example got there first) / "cancelled"
        self.done = threading.Event()


class _Precompiler:
    """One background thread that has programs compiled, shape after shape, before the examples need them.

    Where the compilation runs. With JAX's persistent compilation cache in force on this process (the suite's
    default, :meth:`JaxAdapter.use_cache`) and a CPU program, in a worker process (:class:`_CacheFiller`) that
    writes it into the cache; the example's own first call of the shape then traces it, finds it in the cache
    and loads it. The thread only waits on the worker's pipe meanwhile. Compiling in this process instead competes
    with the tests running beside it for the GIL (JAX traces and lowers in Python) and, at the run's priority, for
    the CPU: torch's framework time in a default run went from 6.5 s to 27 s beside a compiling thread. Without a
    persistent cache (or for a GPU program, which a second process would need GPU memory for), the thread
    compiles in this process, into ``jax.jit``'s own in-memory cache.

    Why it cannot change a result: it calls the same jitted function objects (:func:`_differentiated`) with
    arrays of the same shapes, formats, device and x64 context as an example's, so the program compiled is the
    one the example would have compiled for itself; the zeros are computed on and thrown away. In the worker,
    JAX keys each cache entry by the program, the compile options, the XLA flags and the jaxlib version, so a
    program lowered differently there (a JAX setting changed in this process and not copied, see
    :data:`CACHE_OPTIONS`) is a cache miss that the example compiles for itself, never a different program.

    An example that needs a shape (:meth:`claim`) waits for it only while it is being compiled: a shape still in
    the queue is taken out and the example compiles it itself, as it would have without the hint, instead of
    waiting behind the others. Exceptions in the thread are dropped: the example that meets the same program
    raises them where they belong. The thread is not a daemon, so it is never stopped inside XLA at exit;
    instead it leaves as soon as :meth:`cancel` is called or the main thread has finished, so a process waits at
    exit for one compilation at most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[_Key, _Job] = {}
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._filler_options: dict[str, Any] | None = None
        self._filler_failed = False

    def submit(self, key: _Key) -> None:
        with self._lock:
            if key in self._jobs:
                return
            job = self._jobs[key] = _Job(key)
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="backprop-conformance-jax-precompile")
                self._thread.start()

    def claim(self, key: _Key) -> None:
        """Before an example of ``key`` runs: wait if its program is being compiled, else take it off the queue."""
        with self._lock:
            job = self._jobs.pop(key, None)
            if job is None:
                return
            if job.state == "queued":
                job.state = "claimed"
                return
        job.done.wait()

    def cancel(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                if job.state == "queued":
                    job.state = "cancelled"
            self._jobs.clear()

    def _serve(self) -> None:
        try:
            self._work()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _work(self) -> None:
        while threading.main_thread().is_alive():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # nothing left: leave, under the lock, so that the next submit starts a thread
                        self._thread = None
                        return
                continue
            with self._lock:
                if job.state != "queued":
                    continue
                job.state = "running"
            try:
                self._compile(job.key)
            except Exception:  # a hint only: the example that meets this program raises the error itself
                pass
            finally:
                job.state = "done"
                job.done.set()

    def _compile(self, key: _Key) -> None:
        """Compile ``key``'s program into the persistent cache in the worker process, or else here (see the class)."""
        options = _persistent_cache_options() if key[2] == "cpu" and not self._filler_failed else None
        if options is None:
            _compile(*key)
            return
        filler = _cache_filler()
        try:
            if options != self._filler_options or not filler.alive:
                filler.call("configure", options)
                self._filler_options = options
        except Exception:  # the process cannot be started or configured: compile here from now on
            self._filler_failed = True
        else:
            try:
                filler.call("compile", *key)  # the program's own compilation error propagates: a hint only
                return
            except workers.WorkerError:  # the process died: compile here from now on
                self._filler_failed = True
        _compile(*key)


def _compile(path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> None:
    """Run ``path``'s differentiated function once on zeros of this shape, as :func:`_run` would call it."""
    jax = _jax()
    with _precision_scope(dtype):
        params = [
            (_put(np.zeros((widths[i + 1], widths[i])), dtype, device), _put(np.zeros(widths[i + 1]), dtype, device))
            for i in range(len(widths) - 1)
        ]
        x, y = _put(np.zeros((batch_size, widths[0])), dtype, device), _put(np.zeros((batch_size, widths[-1])), dtype, device)
        jax.block_until_ready(_differentiated(path)(params, x, y))


CACHE_OPTIONS: tuple[str, ...] = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
    "jax_compilation_cache_max_size",
    "jax_enable_x64",
    "jax_default_matmul_precision",
)
"""The JAX settings the compiling worker copies from this process: where the cache is and what it keeps, and the
two global settings that change how the suite's functions lower (64-bit types, default matmul precision). The
worker inherits this process's environment (``XLA_FLAGS``, ``JAX_*`` variables) when it starts. A cache the user
configured keeps its own thresholds: with JAX's default ``min_compile_time_secs`` of 1 s most of these programs
are not written, and the examples compile them again (slower, never different)."""


def _persistent_cache_options() -> dict[str, Any] | None:
    """This process's :data:`CACHE_OPTIONS` when a persistent compilation cache is in force here, else None."""
    jax = _jax()
    if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir is None:
        return None
    return {name: getattr(jax.config, name) for name in CACHE_OPTIONS}


def _cache_filler() -> workers.Worker:
    """The process's worker that compiles ahead into the persistent cache (created, not started, on first use)."""
    return workers.shared(f"{__name__}:_CacheFiller", name="jax-compile-ahead", nice=workers.AHEAD_OF_NEED)


class _CacheFiller:
    """Hosted in a worker process: compiles the suite's programs into JAX's persistent compilation cache.

    :class:`_Precompiler` configures it with the parent's :data:`CACHE_OPTIONS`, then sends it one program at a
    time, each compiled exactly as :func:`_compile` compiles it in the parent.
    """

    def configure(self, options: dict[str, Any]) -> None:
        jax = _jax()
        for name, value in options.items():
            jax.config.update(name, value)

    def compile(self, path: str, dtype: str, device: str, widths: tuple[int, ...], batch_size: int) -> None:
        _compile(path, dtype, device, widths, batch_size)


_PRECOMPILER = _Precompiler()
