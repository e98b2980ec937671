"""OpenMP parallel regions per training step: the library's step against the forum loop.

Counts calls to libgomp's ``GOMP_parallel`` (every region torch's CPU kernels open) with a
tiny ``LD_PRELOAD`` shim compiled on the fly (Linux, a C compiler and torch built with GNU
OpenMP needed), on the ``tiny_gradient_match`` problem of ``training.py`` with 2 threads:

    python benchmarks/omp_regions.py
"""

from __future__ import annotations

import copy
import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
static unsigned long count = 0;
static int enabled = 0;
typedef void (*gp_t)(void (*)(void *), void *, unsigned, unsigned);
void GOMP_parallel(void (*fn)(void *), void *data, unsigned n, unsigned flags) {
    static gp_t real = 0;
    if (!real) real = (gp_t)dlsym(RTLD_NEXT, "GOMP_parallel");
    if (enabled) count++;
    real(fn, data, n, flags);
}
void regions_enable(int on) { enabled = on; }
unsigned long regions_count(void) { return count; }
"""


def main() -> int:
    lib_path = os.environ.get("CG_REGIONS_SHIM")
    if lib_path is None:  # compile the shim, then run again with it preloaded
        tmp = Path(tempfile.mkdtemp())
        (tmp / "shim.c").write_text(SHIM)
        lib = tmp / "libregions.so"
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", lib, tmp / "shim.c", "-ldl"], check=True
        )
        env = {**os.environ, "LD_PRELOAD": str(lib), "CG_REGIONS_SHIM": str(lib)}
        return subprocess.run([sys.executable, *sys.argv], env=env).returncode
    shim = ctypes.CDLL(lib_path)
    shim.regions_count.restype = ctypes.c_ulong
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    import constrained_grad as cg
    import training as B

    torch.set_num_threads(2)
    x, s = B.tiny_data()
    base = B.tiny_model()

    def per_step(step: object, n: int = 10) -> float:
        for _ in range(3):
            step()  # type: ignore[operator]
        before = shim.regions_count()
        shim.regions_enable(1)
        for _ in range(n):
            step()  # type: ignore[operator]
        shim.regions_enable(0)
        return (shim.regions_count() - before) / n

    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=B.TINY_LR)
    xr = x.clone().requires_grad_(True)

    def forum() -> None:
        v = model(xr)
        (g,) = torch.autograd.grad(v, xr, torch.ones_like(v), create_graph=True)
        loss = torch.nn.functional.mse_loss(g, s)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ours_model = copy.deepcopy(base)
    problem = cg.DerivativeProblem(
        ours_model, None, [cg.GradientMatch(targets="y", normalize=True, tolerance=1e-4)]
    )
    trainer = cg.Trainer(
        problem, torch.optim.Adam(ours_model.parameters(), lr=B.TINY_LR), dual_lr=1.0
    )
    print(f"forum_loop: {per_step(forum):.1f} OpenMP regions per step")
    print(
        f"ours (Trainer.step): {per_step(lambda: trainer.step((x, s))):.1f} OpenMP regions per step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
