"""Training: config, data on the device, the loop, the run store.

The package is also callable, so that `convladder.train(model_or_spec, **config_keys)` trains (Python has
one attribute `convladder.train` for both the function and this package). See `convladder._train`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from convladder import _train

        return _train(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "__wrapped__":  # inspect.signature(convladder.train) shows the function's parameters
        from convladder import _train

        return _train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage
