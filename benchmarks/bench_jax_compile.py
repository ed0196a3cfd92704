"""Why a JAX cell costs more in float16 and bfloat16: compile time per format, and what XLA makes of the program.

Prints figures; asserts nothing.

    python -m benchmarks.bench_jax_compile

For three networks of the suite's shape pool, it lowers and compiles the ``jit`` path's program (the adapter's own
``jax.jit(jax.grad(...))``, with the persistent compilation cache off) in each format, and prints the time of each
step and three counts read from the optimised HLO: ``convert`` instructions, fusions, and lines. XLA's CPU backend
has no float16 or bfloat16 arithmetic: it rewrites each such operation into float32 with conversions around it,
and those conversions are what the compiler then fuses, schedules and generates code for. A float16 or bfloat16
program is float32's with that rewriting added, so its compilation takes longer, by about as much as the counts grow.
"""

from __future__ import annotations

import time

import numpy as np

SHAPES = (((5, 5, 5, 5, 5), 9), ((55, 20, 71, 7, 7), 7), ((96, 72, 96), 16))
"""Three networks of :data:`~backprop_conformance.conformance.strategies.SHAPE_POOL`: deep and narrow, uneven, wide."""

FORMATS = ("float64", "float32", "float16", "bfloat16")


def main() -> None:
    import jax

    from backprop_conformance.adapters import jax_model

    jax.config.update("jax_enable_compilation_cache", False)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; seconds per program, counts from the optimised HLO")
    print(f"{'widths':<22} {'B':>3} {'format':<9} {'lower s':>8} {'compile s':>10} {'converts':>9} {'fusions':>8} {'lines':>6}")
    for widths, batch_size in SHAPES:
        for dtype in FORMATS:
            with jax_model.precision_scope(dtype):
                params = [
                    (
                        jax_model.put(np.zeros((widths[i + 1], widths[i])), dtype, "cpu"),
                        jax_model.put(np.zeros(widths[i + 1]), dtype, "cpu"),
                    )
                    for i in range(len(widths) - 1)
                ]
                x = jax_model.put(np.zeros((batch_size, widths[0])), dtype, "cpu")
                y = jax_model.put(np.zeros((batch_size, widths[-1])), dtype, "cpu")
                program = jax.jit(jax.grad(jax_model.forward, has_aux=True))
                began = time.perf_counter()
                lowered = program.lower(params, x, y)
                lowered_at = time.perf_counter()
                compiled = lowered.compile()
                compiled_at = time.perf_counter()
            text = compiled.as_text()
            print(
                f"{' '.join(map(str, widths)):<22} {batch_size:>3} {dtype:<9} {lowered_at - began:>8.3f} {compiled_at - lowered_at:>10.3f} "
                f"{text.count(' convert('):>9} {text.count('fusion('):>8} {text.count(chr(10)):>6}"
            )


if __name__ == "__main__":
    main()
