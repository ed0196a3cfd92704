"""numpy's BLAS runs on one thread for the suite's reference and bound of a moderate network, and only then.

The limit must hold inside the suite's calls, be undone after each (a user's process keeps its own setting),
leave the large profile's products their threads, and change no bit of any result (OpenBLAS splits a product's
rows and columns over threads, never its sums).
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from backprop_conformance.conformance import blas_threads
from backprop_conformance.conformance.blas_threads import THREADED_FROM, largest_product, serial_blas
from backprop_conformance.conformance.problems import Problem
from backprop_conformance.reference.error_bound import FLOAT64, Precision, micro_batch_tolerance, tolerance
from backprop_conformance.reference.vectorized import backprop
from benchmarks.bench_reference import random_problem


def blas_threads_now() -> set[int]:
    return {library.num_threads for library in ThreadpoolController().select(user_api="blas").lib_controllers}


needs_blas = pytest.mark.skipif(
    not ThreadpoolController().select(user_api="blas").lib_controllers, reason="numpy has no BLAS threadpoolctl can see"
)


@needs_blas
def test_one_thread_inside_for_a_moderate_network_and_the_callers_count_after() -> None:
    network, batch = random_problem((128, 256, 256, 10), 32)
    with threadpool_limits(limits=2, user_api="blas"):
        with serial_blas(network, batch.size):
            assert blas_threads_now() == {1}
        assert blas_threads_now() == {2}


@needs_blas
def test_the_large_profiles_products_keep_their_threads() -> None:
    network, batch = random_problem((1024, 1024, 1024), 16)
    assert largest_product(network, batch.size) == THREADED_FROM
    with threadpool_limits(limits=2, user_api="blas"), serial_blas(network, batch.size):
        assert blas_threads_now() == {2}


@needs_blas
def test_a_problems_trace_and_tolerance_are_computed_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def recording(*args: object) -> object:
        seen.append(blas_threads_now())
        return (backprop if len(args) == 2 else micro_batch_tolerance)(*args)

    monkeypatch.setattr("backprop_conformance.conformance.problems.backprop", recording)
    monkeypatch.setattr("backprop_conformance.conformance.problems.micro_batch_tolerance", recording)
    network, batch = random_problem((32, 64, 64, 10), 16)
    with threadpool_limits(limits=2, user_api="blas"):
        Problem(network, batch, "float64").tolerance(FLOAT64)
    assert seen == [{1}, {1}]


@needs_blas
def test_the_limit_changes_no_bit() -> None:
    """Products above OpenBLAS's own threading threshold, computed on one thread and on two, give the same bits."""
    network, batch = random_problem((128, 256, 256, 10), 64)
    results = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            trace = backprop(network, batch)
            bound = tolerance(network, batch, trace, Precision.of("float32"))
        results.append([*trace.gradients.w.values(), *bound.gradients.w.values(), *bound.delta.values()])
    assert all(np.array_equal(one, two) for one, two in zip(*results, strict=True))


def test_the_blas_libraries_are_looked_up_once() -> None:
    assert blas_threads._blas() is blas_threads._blas()
