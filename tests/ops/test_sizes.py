"""``is_static`` tells plain ints from symbolic sizes in eager, under export and under Dynamo, where
``isinstance(size, int)`` holds for symbolic sizes too (the ops' plain-int paths would then guard per step)."""
import torch
from torch.export import Dim, export

from visionzoo.ops._sizes import is_static


class _Probe(torch.nn.Module):
    """Adds 1 where the first size is static, 10 where ``ceil(n / 7)`` is, 100 where Dynamo's ``isinstance``
    says int (the check ``is_static`` replaces)."""

    def forward(self, x):
        n = x.shape[0]
        return x + (1 if is_static(n) else 0) + (10 if is_static(-(-n // 7)) else 0) + (
            100 if isinstance(n, int) else 0)


def test_plain_ints_are_static():
    assert is_static(3, 4) and is_static()


def test_dynamo_dynamic_sizes_are_not_static():
    torch._dynamo.reset()
    got = torch.compile(_Probe(), backend="eager", fullgraph=True, dynamic=True)(torch.zeros(5))
    assert got[0].item() == 100  # isinstance says int; is_static says symbolic, for the size and its ceiling


def test_dynamo_static_sizes_are_static():
    torch._dynamo.reset()
    got = torch.compile(_Probe(), backend="eager", fullgraph=True, dynamic=False)(torch.zeros(5))
    assert got[0].item() == 111


def test_export_dynamic_sizes_are_not_static():
    for strict, want in ((False, 0), (True, 100)):  # strict export traces with Dynamo: isinstance says int
        program = export(_Probe(), (torch.zeros(5),), dynamic_shapes=({0: Dim.DYNAMIC},), strict=strict)
        assert program.module()(torch.zeros(6))[0].item() == want, strict
