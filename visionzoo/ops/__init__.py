"""Functional ops: tensor in, tensor out. Each heavy op has its own sub-package with a
``reference.py`` oracle, a fast ``cpu.py`` path and a ``triton.py`` kernel, chosen by
:mod:`visionzoo.ops._backend`; padding and window partitioning live in :mod:`.partition`.

Front doors (token maps are channels-last, ``[B, H, W, heads, D]``):

* :func:`na1d`, :func:`na2d`: (dilated, strided, shifted-window) neighborhood attention, and
  :func:`swin_rpb_to_na` / :func:`na_rpb_to_swin` for Swin's relative-position-bias tables;
* :func:`bra`, :func:`bra_routing`: bi-level routing attention and its routing step;
* :func:`halo_attn`: halo (blocked local) attention;
* :func:`lka`: the two depthwise convolutions of VAN's large-kernel attention (``[B, C, H, W]``);
* :func:`linear_attn`: (focused) linear attention over token sequences (``[B, N, C]``, FLatten);
* :func:`agent_attn`: agent attention, two softmax stages through ``n`` agents (``[B, heads, N, D]``).

Backend control: :func:`use_backend`, :func:`current_backend`, :data:`BACKENDS`,
:class:`BackendUnavailable`, :func:`triton_unavailable`. Importing this package never imports
Triton: kernels load on first use.

Deployment (rule in :mod:`._backend`): under ``torch.compile`` / ``torch.export`` the ``cpu`` path runs as a
``torch.library`` custom op whose decomposition is the reference (so the dynamo ONNX exporter emits standard
ops, :mod:`._custom_op`), under ``torch.jit.trace`` the reference runs, the front doors are ``torch.fx``
leaves, and a batch of 0 gives empty outputs on every backend.
"""
from ._backend import BACKENDS, BackendUnavailable, current_backend, triton_unavailable, use_backend
from .agent_attn import agent_attn
from .halo import halo_attn
from .lka import lka
from .linear_attn import linear_attn
from . import partition
from .neighborhood import na1d, na2d, na_rpb_to_swin, swin_rpb_to_na
from .routing import bra, bra_routing

__all__ = [
    "na1d",
    "na2d",
    "swin_rpb_to_na",
    "na_rpb_to_swin",
    "bra",
    "bra_routing",
    "halo_attn",
    "lka",
    "linear_attn",
    "agent_attn",
    "partition",
    "BACKENDS",
    "BackendUnavailable",
    "current_backend",
    "triton_unavailable",
    "use_backend",
]
