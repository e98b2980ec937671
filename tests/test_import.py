"""``import constrained_grad`` stays quiet: heavy optional modules load only when used."""

import subprocess
import sys

HEAVY = ("scipy", "scipy.stats", "scipy.optimize", "matplotlib", "tensorboard")


def test_import_does_not_load_heavy_optional_modules() -> None:
    code = (
        f"import sys, constrained_grad\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
