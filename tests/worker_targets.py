"""Objects for ``tests/test_worker.py`` to host in worker processes (importable there: the child gets the parent's sys.path).

``IMPORT_ENVIRONMENT`` is read when the module is imported, so a test can see which environment the child had
*before* it imported anything of the target's, which is what a framework like Keras needs.
"""

from __future__ import annotations

import os
import sys
import time

IMPORT_ENVIRONMENT = dict(os.environ)


class UnpicklableError(Exception):
    """An exception whose constructor cannot be replayed by pickle (it needs two arguments, its args hold one)."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


class Probe:
    """A hosted object with one method per behaviour the worker has to survive or report."""

    def pid(self) -> int:
        return os.getpid()

    def environment_at_import(self, name: str) -> str | None:
        return IMPORT_ENVIRONMENT.get(name)

    def echo(self, *args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
        return args, kwargs

    def noisy(self, value: int) -> int:
        """Writes to stdout (fd 1 and sys.stdout) before returning: the reply must still arrive intact."""
        print("noise on sys.stdout", flush=True)
        os.write(1, b"noise on fd 1\n")
        return value

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def crash(self, status: int) -> None:
        sys.stderr.write("about to crash on purpose\n")
        sys.stderr.flush()
        os._exit(status)

    def unpicklable_result(self) -> object:
        return lambda: None

    def raise_value_error(self, text: str) -> None:
        raise ValueError(text)

    def raise_unpicklable(self) -> None:
        raise UnpicklableError("first", "second")


class BrokenConstructor:
    def __init__(self) -> None:
        raise RuntimeError("the constructor failed on purpose")


class SlowConstructor:
    """A target that takes ``$BACKPROP_CONFORMANCE_TEST_DELAY`` seconds to build, as a framework's import does."""

    def __init__(self) -> None:
        time.sleep(float(os.environ.get("BACKPROP_CONFORMANCE_TEST_DELAY", "1")))

    def pid(self) -> int:
        return os.getpid()


def failing_ddp_hook(state, bucket):
    """A DDP communication hook that raises on the last rank only, while the file named by $DDP_HOOK_FAILS exists.

    The other ranks are then left waiting in the all-reduce; once the file is gone the hook is DDP's own all-reduce.
    """
    import os

    import torch.distributed as dist

    if os.path.exists(os.environ["DDP_HOOK_FAILS"]) and dist.get_rank() == dist.get_world_size() - 1:
        raise RuntimeError("planted hook failure")
    bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda future: future.value()[0])
