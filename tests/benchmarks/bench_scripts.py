"""Import a script of ``benchmarks/`` by name (they are scripts, not a package); once per
process, so the test modules share one copy of each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> Any:
    """The module ``benchmarks/<name>.py``, imported on first use."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
