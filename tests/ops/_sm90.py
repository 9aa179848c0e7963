"""Offline sm_90a (H100) builds of Triton kernels as their launchers configure them.

No GPU is needed: the launches are recorded (kernels replaced by recorders), then each is compiled
with ``triton.compile`` for ``GPUTarget("cuda", 90)`` and assembled by the bundled ``ptxas -v``,
whose report gives the spill bytes. Must run without ``TRITON_INTERPRET`` (a fresh process; see
:func:`run_in_subprocess`). The interpreter checks numerics; this checks the kernels build.
"""
import os
import re
import subprocess
import sys
import tempfile

import torch

KINDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def build_for_sm90(kernels_module, launch_all) -> list[tuple[str, str, int]]:
    """``launch_all(dtype)`` runs the launchers once per dtype; returns ``(kernel, first-arg kind,
    spill bytes)`` per recorded launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    launches = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.fn, args, kwargs))

    for n in [n for n in dir(kernels_module) if n.endswith("_kernel")]:
        setattr(kernels_module, n, Recorder(getattr(kernels_module, n)))
    for dtype in KINDS:
        launch_all(dtype)
    ptxas = f"{triton.__path__[0]}/backends/nvidia/bin/ptxas"
    report = []
    for fn, args, kwargs in launches:
        consts = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        sig = {name: ("constexpr" if name in consts else f"*{KINDS[a.dtype]}" if isinstance(a, torch.Tensor)
                      and a.is_floating_point() else "*i64" if isinstance(a, torch.Tensor)
                      else "fp32" if isinstance(a, float) else "i32")
               for name, a in zip(fn.arg_names, list(args) + [consts.get(n) for n in fn.arg_names[len(args):]])}
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": kwargs["num_warps"], "num_stages": kwargs.get("num_stages", 2)})
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(compiled.asm["ptx"])
            f.flush()
            info = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", "/dev/null"],
                                  capture_output=True, text=True, check=True).stderr
        spill = int(re.search(r"(\d+) bytes spill stores", info).group(1))
        report.append((fn.__name__, sig[fn.arg_names[0]], spill))
    return report


def run_in_subprocess(test_module: str, function: str) -> list[list[str]]:
    """Run ``test_module.function()`` (returning build rows) in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = os.path.dirname(os.path.abspath(__file__))
    # imported as tests.ops.<module> (so its relative imports work), with tests/ops on the path too
    code = (f"import sys; sys.path[:0] = sys.argv[1:3]; import tests.ops.{test_module} as t; "
            f"[print(*row) for row in t.{function}()]")
    res = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.dirname(here)), here], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return [line.split() for line in res.stdout.splitlines()]
