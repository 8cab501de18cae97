"""Where shipped artefacts live, and the fast-mode switch. Nothing here runs at import."""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The folder holding shipped weights and cards.

    ``$WORKBENCH_DATA`` overrides it; otherwise it is ``data/`` beside the package (the repository
    layout of an editable install).
    """
    env = os.environ.get("WORKBENCH_DATA")
    return Path(env) if env else _PACKAGE_ROOT.parent / "data"


def fast_mode() -> bool:
    """True when ``$WORKBENCH_FAST`` is set to a true value (CI and notebook tests): fewer images, steps and samples."""
    return os.environ.get("WORKBENCH_FAST", "0").lower() not in ("", "0", "false", "no")
