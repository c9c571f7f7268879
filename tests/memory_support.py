"""Peak memory of one call, for the tests that bound a function's memory traffic."""
from __future__ import annotations

import tracemalloc
from typing import Callable, TypeVar

T = TypeVar("T")


def peak_bytes(call: Callable[[], T]) -> tuple[T, int]:
    """``call()``'s result and the peak of the memory it allocated (tracemalloc: NumPy's allocations included),
    bytes above what was allocated when it started."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak
