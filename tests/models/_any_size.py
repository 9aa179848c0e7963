"""The any-input-size check shared by the family test files."""
import torch


def check_train_and_eval(model, sizes, batch: int = 1) -> None:
    """For every ``(h, w)``: a training step reaches every parameter, eval logits are finite, and each
    stage tap has the stage's width and a spatial size of ``ceil(n / r)`` or ``n // r + 1`` (strided
    3x3 convs and padded patches round either way)."""
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w)
        model.train()
        model(x).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{h}x{w}: parameters without gradient {missing}"
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            taps = model.forward_intermediates(x, intermediates_only=True)
            assert torch.isfinite(model(x)).all(), f"{h}x{w}: non-finite logits"
        assert len(taps) == len(model.feature_info)
        for tap, info in zip(taps, model.feature_info):
            r = info["reduction"]
            assert tap.shape[1] == info["num_chs"], (h, w, tap.shape)
            assert tap.shape[2] in (-(-h // r), h // r + 1), (h, w, tap.shape)
            assert tap.shape[3] in (-(-w // r), w // r + 1), (h, w, tap.shape)
