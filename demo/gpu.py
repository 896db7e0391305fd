"""ZeroGPU: on a Hugging Face Space with ZeroGPU hardware, a GPU is lent to a call only inside the ``spaces``
package's ``GPU`` decorator. :func:`on_gpu` is that decorator where the package is installed (on such a Space)
and leaves the function as it is everywhere else, so the same app runs on CPU, on a dedicated GPU and on
ZeroGPU."""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

GPU_SECONDS = 60  # the longest a comparison may hold a lent GPU (the spaces decorator's ``duration``)


def on_gpu(function: Callable[..., Any], spaces: Any = None) -> Callable[..., Any]:
    """``function`` run under ``spaces.GPU(duration=GPU_SECONDS)`` when the ``spaces`` package is present
    (``spaces`` given: that module, for tests), else ``function`` itself."""
    if spaces is None and importlib.util.find_spec("spaces") is None:
        return function
    if spaces is None:
        import spaces  # here: only on a Hugging Face Space, which installs it

    return spaces.GPU(duration=GPU_SECONDS)(function)
