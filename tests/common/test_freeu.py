"""FreeU on the 16×16 UNet (common.freeu): exact answers on small inputs, hooks that go away, and a
cross-check against diffusers' own FreeU on the same network."""

import pytest
import torch

from common.digits16 import EpsUNet16, load_digits16_eps
from common.freeu import (
    DREAMCATALYST_FREEU,
    FreeUConfig,
    fourier_skip_filter,
    freeu,
    register_freeu,
    scale_backbone,
)


def test_fourier_filter_scales_exactly_the_low_frequency_window():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = fourier_skip_filter(x, 0.2, threshold=1)
    fx, fo = torch.fft.fft2(x), torch.fft.fft2(out.to(torch.complex128))
    low = torch.zeros(8, 8, dtype=torch.bool)
    low[[0, 0, 7, 7], [0, 7, 0, 7]] = True  # k in {-1, 0}^2 (mod 8)
    # the real part of the masked spectrum: its DFT is (beta F + conj(beta F(-k)))/2; beta = 1 off the window and
    # its mirror, so every frequency outside the window and its mirror {0, 1}^2 is unchanged exactly
    mirror = torch.zeros(8, 8, dtype=torch.bool)
    mirror[[0, 0, 1, 1], [0, 1, 0, 1]] = True
    keep = ~(low | mirror)
    assert torch.allclose(fo[..., keep], fx[..., keep], atol=1e-10)
    # the DC term (in both sets) is scaled by exactly s
    assert torch.allclose(fo[..., 0, 0], 0.2 * fx[..., 0, 0], atol=1e-10)
    # scale 1 is the identity; a constant image is scaled by s (only DC is non-zero)
    assert torch.allclose(fourier_skip_filter(x, 1.0), x, atol=1e-12)
    c = torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64)
    assert torch.allclose(fourier_skip_filter(c, 0.9), 0.9 * c, atol=1e-12)


def test_fourier_filter_matches_diffusers():
    from diffusers.utils.torch_utils import fourier_filter

    x = torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    for s in (0.9, 0.2):
        for r in (1, 2):
            assert torch.allclose(fourier_skip_filter(x, s, r), fourier_filter(x, r, s), atol=1e-5)
    y = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(fourier_skip_filter(y, 0.2), fourier_filter(y, 1, 0.2), atol=1e-5)


def test_backbone_scaling_touches_the_first_half_only():
    h = torch.ones(2, 6, 3, 3)
    out = scale_backbone(h, 1.1)
    assert torch.allclose(out[:, :3], torch.full_like(out[:, :3], 1.1)) and torch.equal(out[:, 3:], h[:, 3:])
    assert torch.equal(h, torch.ones(2, 6, 3, 3))  # out of place


def test_config_validation():
    with pytest.raises(ValueError):
        FreeUConfig(b1=-1.0)
    with pytest.raises(ValueError):
        FreeUConfig(threshold=0)
    with pytest.raises(ValueError):
        fourier_skip_filter(torch.zeros(1, 1, 2, 2), 0.5, threshold=2)
    with pytest.raises(ValueError):
        register_freeu(torch.nn.Linear(2, 2))


def _diffusers_freeu(unet, cfg, on: bool):
    for i, block in enumerate(unet.up_blocks):
        block.resolution_idx = i  # UNet2DModel does not set it; diffusers' FreeU keys on it
        for name in ("b1", "b2", "s1", "s2"):
            setattr(block, name, getattr(cfg, name) if on else None)


@pytest.mark.parametrize("trained", [False, True])
def test_hooks_match_diffusers_freeu_on_the_unet(trained):
    torch.manual_seed(0)
    net = load_digits16_eps().net if trained else EpsUNet16().eval()
    x = torch.randn(6, 256, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    y = torch.tensor([0, 1, 3, 7, 8, 10])
    cfg = DREAMCATALYST_FREEU
    with torch.no_grad():
        plain = net.eps(x, t, y)
        with freeu(net.unet, cfg):
            ours = net.eps(x, t, y)
        after = net.eps(x, t, y)
        _diffusers_freeu(net.unet, cfg, on=True)
        try:
            theirs = net.eps(x, t, y)
        finally:
            _diffusers_freeu(net.unet, cfg, on=False)
        restored = net.eps(x, t, y)
    assert torch.equal(after, plain) and torch.equal(restored, plain)  # hooks / attributes removed
    assert (ours - plain).abs().max() > 1e-3  # FreeU changes the prediction
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), float((ours - theirs).abs().max())


def test_identity_factors_leave_the_network_unchanged():
    net = EpsUNet16().eval()
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = net.eps(x, 0.5, torch.tensor([1, 2, 3]))
        with freeu(net.unet, FreeUConfig(1.0, 1.0, 1.0, 1.0)):
            same = net.eps(x, 0.5, torch.tensor([1, 2, 3]))
    assert torch.allclose(same, plain, atol=1e-5)


def _official_loop_forward(block, cfg, widest):
    """An up block's forward written as the official free_lunch.py loop (from its description, not its code): per
    ResNet, pop the last skip; if the backbone has `widest` channels scale its first half by b1 and filter the skip
    with s1, if it has widest // 2 use b2, s2; concatenate; ResNet; then the upsamplers."""

    def forward(hidden_states, res_hidden_states_tuple, temb=None, upsample_size=None, *args, **kwargs):
        skips = tuple(res_hidden_states_tuple)
        for resnet in block.resnets:
            skip, skips = skips[-1], skips[:-1]
            for width, b, s in ((widest, cfg.b1, cfg.s1), (widest // 2, cfg.b2, cfg.s2)):
                if hidden_states.shape[1] == width:
                    hidden_states = scale_backbone(hidden_states, b)
                    skip = fourier_skip_filter(skip, s, cfg.threshold)
                    break
            hidden_states = resnet(torch.cat([hidden_states, skip], dim=1), temb)
        for upsampler in block.upsamplers or []:
            hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states

    return forward


def test_channel_rule_matches_the_official_loop():
    """stages="channels" (the official code's rule) against a re-written official loop on the same trained UNet;
    and it differs from diffusers' stage rule (s2 lands on another stage)."""
    net = load_digits16_eps().net
    unet = net.unet
    widest = max(r.out_channels for block in unet.up_blocks for r in block.resnets)
    assert widest == 64
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    y = torch.tensor([0, 2, 4, 6, 10])
    cfg = DREAMCATALYST_FREEU
    with torch.no_grad():
        plain = net.eps(x, t, y)
        with freeu(unet, cfg, stages="channels"):
            ours = net.eps(x, t, y)
        with freeu(unet, cfg, stages="diffusers"):
            by_stage = net.eps(x, t, y)
        originals = [block.forward for block in unet.up_blocks]
        try:
            for block in unet.up_blocks:
                block.forward = _official_loop_forward(block, cfg, widest)
            official = net.eps(x, t, y)
        finally:
            for block, original in zip(unet.up_blocks, originals, strict=True):
                block.forward = original
        restored = net.eps(x, t, y)
    assert torch.equal(restored, plain)
    assert torch.allclose(ours, official, atol=1e-5, rtol=1e-5), float((ours - official).abs().max())
    assert (ours - by_stage).abs().max() > 1e-3 and (ours - plain).abs().max() > 1e-3


def test_unknown_stage_rule():
    with pytest.raises(ValueError, match="stages must be one of"):
        register_freeu(EpsUNet16().unet, DREAMCATALYST_FREEU, stages="resolution")
