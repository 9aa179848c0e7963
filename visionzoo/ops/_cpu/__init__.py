"""Optional C++ CPU kernels, compiled on first use (``torch.utils.cpp_extension``, cached in
``TORCH_EXTENSIONS_DIR``, ~30 s once per machine and torch version).

``attn_bwd``: attention backward over many small float32 problems (the tiles of the neighborhood
attention CPU path), skipping keys a whole query block cannot see and reading / writing token maps
through per-slot rows; ``scatter_add_rows``: the sum of overlapping key-halo gradients back into the
map, in parallel over groups with disjoint output rows (heads). See ``attn_bwd.cpp``.

``dwconv_wgrad``: the weight (and bias) gradient of a depthwise convolution on channels-last float32
maps, which ATen's ``convolution_backward`` computes several times slower than the forward (LKA's
backward, :mod:`visionzoo.ops.lka.cpu`). See ``dwconv_wgrad.cpp``; ``bindings.cpp`` is the module.

They need an AVX-512 CPU, a C++ compiler, ninja and a torch built with OpenMP; where any of these
is missing, or ``VISIONZOO_CPU_EXT=0`` is set (read by :func:`visionzoo._env.cpu_ext_enabled`), the
callers keep ATen's kernels and :func:`cpu_ext_unavailable` says why.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

import torch

from ... import _env

__all__ = ["attn_bwd", "cpu_ext_unavailable", "dwconv_wgrad", "scatter_add_rows"]

_SOURCES = [str(Path(__file__).with_name(f)) for f in ("attn_bwd.cpp", "dwconv_wgrad.cpp", "bindings.cpp")]
_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma"]
_lock = threading.Lock()
_state: dict = {}
_log = logging.getLogger(__name__)


def _static_reason() -> str | None:
    if not _env.cpu_ext_enabled():
        return "disabled by VISIONZOO_CPU_EXT=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX512":
        return f"the CPU kernels need AVX-512 (torch reports {capability})"
    if not torch.backends.openmp.is_available():
        return "torch is built without OpenMP"
    return None


def _ensure_ninja() -> None:
    """torch's builder calls ``ninja`` from PATH; the ``ninja`` wheel (a dependency) puts it beside
    the interpreter, which is not on PATH when the venv is not activated. Prepending to PATH (for this
    process and the builder it spawns) is the one way to hand torch's builder that directory, so
    PATH is written here; visionzoo's own switches are read only in :mod:`visionzoo._env`."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass


def _module():
    """The compiled module, or ``None`` (the reason is kept for :func:`cpu_ext_unavailable`)."""
    if "module" in _state or "error" in _state:
        return _state.get("module")
    with _lock:
        if "module" in _state or "error" in _state:
            return _state.get("module")
        reason = _static_reason()
        if reason is not None:
            _state["error"] = reason
            return None
        try:
            from torch.utils.cpp_extension import load

            _ensure_ninja()
            _log.info("building visionzoo's CPU kernels (once per machine)")
            _state["module"] = load(
                name="visionzoo_cpu_attn",
                sources=_SOURCES,
                extra_cflags=_FLAGS,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - any build failure means "use ATen's kernels"
            _state["error"] = f"build failed ({type(e).__name__}: {str(e).strip().splitlines()[-1][:300]})"
            warnings.warn(
                f"visionzoo: C++ CPU kernels unavailable, using ATen's: {_state['error']}", RuntimeWarning, stacklevel=3
            )
        return _state.get("module")


def cpu_ext_unavailable(*tensors: torch.Tensor) -> str | None:
    """Why the kernels cannot take these tensors (they need float32 CPU tensors) or cannot run here
    at all (no tensors given), ``None`` if they can. Builds the kernels on the first call that gets
    this far."""
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            return f"the C++ CPU kernels take float32 CPU tensors, got {t.dtype} on {t.device.type}"
    return None if _module() is not None else _state["error"]


def _built():
    module = _module()
    if module is None:
        raise RuntimeError(f"visionzoo's C++ CPU kernels are unavailable: {_state['error']}")
    return module


def attn_bwd(
    dout,
    q,
    k,
    v,
    out,
    lse,
    mask,
    scale: float,
    block: int = 64,
    q_rows=None,
    kv_rows=None,
    map_rows: int = 0,
    kv_group: int = 0,
):
    """``(dq, dk, dv)`` of ``softmax(scale * q k^T + mask) v`` for ``[N, H, L, D]`` problems, from the
    forward's output and natural-log log-sum-exp ``[N, H, Lq]``. ``mask``: additive, broadcastable to
    ``[N, H, Lq, Lk]``, or ``None``; ``block``: query rows per block (keys the mask hides from a whole
    block are skipped). Outputs are contiguous ``[N, H, L, C]``, unless:

    * ``q_rows`` (int64 ``[P, Lq]``, ``P`` dividing ``N * H``): ``dout`` is a token map ``[M, map_rows, Dv]``
      (``M = N * H / P``) whose row ``q_rows[u % P, i]`` is the gradient of slot ``i`` of problem ``u``
      (``-1``: zero), and ``dq`` is returned as a map ``[M, map_rows, D]`` written through the same rows;
      every map row must belong to exactly one slot.
    * ``kv_rows`` (int64 ``[P, Lk]``, needs ``q_rows``): ``dk`` / ``dv`` are maps too, written through
      these rows; every map row must belong to exactly one key slot (disjoint halos), unless
      ``kv_group > 0``: then slots may share rows (overlapping halos) and their gradients are summed;
      problems that share rows must lie in one run of ``kv_group`` consecutive problems (one thread
      runs each run in order, so parallelism is ``N * H / kv_group`` runs)."""
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    return tuple(
        _built().attn_bwd(
            dout, q, k, v, out, lse, mask, float(scale), int(block), q_rows, kv_rows, int(map_rows), int(kv_group)
        )
    )


def scatter_add_rows(src: torch.Tensor, src_rows: torch.Tensor, dst_rows: torch.Tensor, out_rows: int) -> torch.Tensor:
    """``out[b, dst_rows[g, i]] += src[b, src_rows[g, i]]`` into zeros ``[B, out_rows, C]``; ``src``
    ``[B, R, C]`` with rows ``C`` apart. Each group ``g`` must write rows no other group writes."""
    return _built().scatter_add_rows(src, src_rows, dst_rows, int(out_rows))


def _int_pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be an int >= 1 or a pair of them, got {value!r}")
    return pair


def dwconv_wgrad(dy: torch.Tensor, xpad: torch.Tensor, kernel_size, dilation: int = 1, bias: bool = False):
    """``(dw, db)`` of ``y = F.conv2d(xpad, w, b, dilation=dilation, groups=C)`` (no padding: the caller
    pads ``xpad``): ``dw [C, 1, kh, kw]`` and ``db [C]`` (``None`` unless ``bias``). ``dy [B, C, H, W]``
    and ``xpad [B, C, H + dilation (kh - 1), W + dilation (kw - 1)]``: float32 CPU tensors in any memory
    format (channels_last, i.e. a unit channel stride, is read in place; others are converted). The sum
    order depends on the shape only, not on the thread count."""
    kh, kw = _int_pair(kernel_size, "kernel_size")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    for name, t in (("dy", dy), ("xpad", xpad)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(
                f"{name} must be a [B, C, H, W] tensor, got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise TypeError(f"{name} must be a float32 CPU tensor, got {t.dtype} on {t.device.type}")
    b, c, h, w = dy.shape
    want = (b, c, h + dilation * (kh - 1), w + dilation * (kw - 1))
    if tuple(xpad.shape) != want:
        raise ValueError(
            f"xpad must be [B, C, H + dilation * (kh - 1), W + dilation * (kw - 1)] = {list(want)} "
            f"for dy {list(dy.shape)}, kernel_size ({kh}, {kw}) and dilation {dilation}, "
            f"got {list(xpad.shape)}"
        )
    dy, xpad = (
        t if t.shape[1] == 1 or t.stride(1) == 1 else t.contiguous(memory_format=torch.channels_last)
        for t in (dy, xpad)
    )
    dw, db = _built().dwconv_wgrad(dy, xpad, kh, kw, dilation, bool(bias))
    return dw, (db if bias else None)
