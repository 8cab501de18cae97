"""Global state a library call must leave as it found it: ``os.environ`` and the random number generators.

Some third-party imports write to ``os.environ`` the first time they run: scikit-learn sets
``KMP_DUPLICATE_LIB_OK``, and opencv (which ``overcomplete`` imports) rewrites ``LD_LIBRARY_PATH`` and ``QT_*``.
:func:`import_keeping_environ` imports such a module with the environment restored afterwards, so the caller's
process (and every subprocess it starts later) sees the variables it set itself and no others. A training run
seeds torch with its seed: :func:`kept_rngs` puts every generator back when it ends, so that
``wb.train_featinv(seed=7)`` does not reseed the caller's draws.

Example:
    >>> sklearn = import_keeping_environ("sklearn")        # os.environ as before
    >>> with kept_rngs():
    ...     torch.manual_seed(7)                             # the caller's torch, numpy and random states return
"""
from __future__ import annotations

import contextlib
import importlib
import os
import random
from types import ModuleType
from typing import Iterator

import torch


@contextlib.contextmanager
def kept_environ() -> Iterator[None]:
    """Within the block, ``os.environ`` may change; at its end every variable is as it was (added ones removed,
    changed or removed ones restored)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def import_keeping_environ(name: str) -> ModuleType:
    """``importlib.import_module(name)`` with ``os.environ`` restored afterwards (:func:`kept_environ`): for the
    modules that write to it on import (``sklearn``, ``overcomplete`` through ``cv2``).

    Example:
        >>> import_keeping_environ("sklearn").__name__
        'sklearn'
    """
    with kept_environ():
        return importlib.import_module(name)


@contextlib.contextmanager
def kept_rngs() -> Iterator[None]:
    """Within the block, torch's (CPU and initialised CUDA devices), numpy's and ``random``'s global generators may
    be seeded and drawn from; at its end all three are as they were."""
    import numpy as np

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
