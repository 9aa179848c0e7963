"""ops/partition: padding, cropping and window partitioning of token maps."""
import pytest
import torch

from visionzoo.ops.partition import (crop, from_windows, pad_map, pad_to_multiple, pad_to_size, padded_size,
                                     to_2tuple, to_windows)


@pytest.mark.parametrize("size,window", [((7, 10), 4), ((5, 3), (2, 3)), ((1, 1), 7), ((8, 12), (4, 6))])
@pytest.mark.parametrize("rest", [(), (2, 3)], ids=["nhwc", "nhwc_heads"])
def test_pad_partition_round_trip(size, window, rest):
    x = torch.randn(2, *size, *rest)
    xp, real = pad_to_multiple(x, window)
    wh, ww = to_2tuple(window, "window")
    assert real == size and xp.shape[1] % wh == 0 and xp.shape[2] % ww == 0
    w = to_windows(xp, window)
    assert w.shape == (2, xp.shape[1] // wh * (xp.shape[2] // ww), wh * ww, *rest)
    back = from_windows(w, window, xp.shape[1:3])
    assert torch.equal(back, xp)
    assert torch.equal(crop(back, real), x)


def test_windows_are_row_major():
    """Window ``r`` is ``(r // nw, r % nw)``; token ``t`` inside it is ``(t // ww, t % ww)``."""
    x = torch.arange(6 * 8).view(1, 6, 8)
    w = to_windows(x, (3, 4))
    for r in range(4):
        for t in range(12):
            assert w[0, r, t] == x[0, (r // 2) * 3 + t // 4, (r % 2) * 4 + t % 4]


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_pad_to_multiple_zero_pads_bottom_right(layout):
    x = torch.randn(2, 5, 7, 3) if layout == "nhwc" else torch.randn(2, 3, 5, 7)
    xp, real = pad_to_multiple(x, (4, 3), layout)
    assert real == (5, 7)
    if layout == "nhwc":
        assert xp.shape == (2, 8, 9, 3) and torch.equal(xp[:, :5, :7], x)
        assert xp[:, 5:].abs().sum() == 0 and xp[:, :, 7:].abs().sum() == 0
    else:
        assert xp.shape == (2, 3, 8, 9) and torch.equal(xp[..., :5, :7], x)
        assert xp[..., 5:, :].abs().sum() == 0 and xp[..., 7:].abs().sum() == 0
    assert torch.equal(crop(xp, real, layout), x)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_pad_map_all_sides_and_crop_at_start(layout):
    x = torch.randn(1, 4, 5, 2) if layout == "nhwc" else torch.randn(1, 2, 4, 5)
    xp = pad_map(x, 1, 2, 3, 0, layout)
    if layout == "nhwc":
        assert xp.shape == (1, 7, 8, 2) and torch.equal(xp[:, 1:5, 3:8], x)
    else:
        assert xp.shape == (1, 2, 7, 8) and torch.equal(xp[..., 1:5, 3:8], x)
    assert xp.abs().sum() == x.abs().sum()  # everything else is zero
    c = crop(xp, (4, 5), layout, start=(1, 3))
    assert torch.equal(c, x) and c.data_ptr() != x.data_ptr() and c._base is xp  # a view of the padded map


def test_nothing_copied_when_aligned():
    x = torch.randn(2, 8, 12, 3)
    assert pad_to_multiple(x, 4)[0] is x
    assert pad_to_size(x, (8, 12)) is x
    assert pad_map(x) is x
    assert crop(x, (8, 12)) is x
    assert crop(x, (4, 6))._base is x  # a view
    assert padded_size((8, 12), 4) == (8, 12) and padded_size((9, 1), (4, 3)) == (12, 3)


def test_errors_name_the_argument():
    x = torch.zeros(1, 6, 6, 2)
    with pytest.raises(ValueError, match="window must be"):
        to_windows(x, 0)
    with pytest.raises(ValueError, match="window must be"):
        from_windows(x, (2, 2, 2), (6, 6))
    with pytest.raises(ValueError, match="multiple must be"):
        pad_to_multiple(x, (2, -1))
    with pytest.raises(ValueError, match="multiple must be"):
        padded_size((6, 6), True)
    with pytest.raises(ValueError, match="layout must be"):
        pad_to_multiple(x, 2, "hwc")
    with pytest.raises(ValueError, match="not whole 4x4 windows"):
        to_windows(x, 4)
    with pytest.raises(ValueError, match="smaller than the map"):
        pad_to_size(x, (5, 6))
    with pytest.raises(ValueError, match="left must be >= 0"):
        pad_map(x, left=-1)
    with pytest.raises(ValueError, match="outside the map"):
        crop(x, (4, 4), start=(3, 0))
