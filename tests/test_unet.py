"""The UNet backbone: shapes, conditioning, errors, the reference size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kappadiff.diffusion.unet import (
    UNet,
    UNetConfig,
    attend,
    count_parameters,
    timestep_embedding,
)

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    # zero-initialised output layers make an untrained UNet return 0; perturb every weight
    # so the tests below see a generic network
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_output_shape_and_finite():
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2, 2), attention_levels=(2,)))
    x = torch.randn(3, 4, 16, 16)
    out = model(x, torch.tensor([0, 500, 999]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_zero_initialised_output():
    # the zero-initialised head makes the untrained network predict v = 0 exactly
    out = UNet(TINY)(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]))
    assert torch.equal(out, torch.zeros_like(out))


def test_time_conditioning_changes_output():
    torch.manual_seed(0)
    model = UNet(TINY)
    _randomise(model)
    x = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([10, 900]))
    # the same input at two timesteps must give clearly different outputs (not float noise)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_batch_independence():
    # GroupNorm, not BatchNorm: a sample's output does not depend on its batch mates
    torch.manual_seed(1)
    model = UNet(TINY).eval()
    _randomise(model)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 500])
    full = model(x, t)
    single = model(x[1:2], t[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-5, atol=1e-6)  # float32 reordering


def test_gradient_reaches_input():
    # DPS differentiates the network output with respect to its input
    torch.manual_seed(2)
    model = UNet(TINY)
    _randomise(model)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    model(x, torch.tensor([300])).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_indivisible_input_raises():
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2, 4), attention_levels=()))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 4, 10, 10), torch.tensor([0]))


def test_bad_attention_level_raises():
    with pytest.raises(ValueError, match="attention level 3"):
        UNetConfig(channel_mults=(1, 2), attention_levels=(3,))


def test_config_round_trip():
    d = TINY.to_dict()
    assert d["channel_mults"] == [1, 2]
    assert UNetConfig(**d) == TINY


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 7]), 16)
    assert emb.shape == (2, 16)
    # t = 0: sin terms 0, cos terms 1 (exact)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    # the first frequency is 1: sin(7), cos(7) to float32 precision
    torch.testing.assert_close(emb[1, 0], torch.sin(torch.tensor(7.0)))
    torch.testing.assert_close(emb[1, 8], torch.cos(torch.tensor(7.0)))


def test_reference_size():
    # the paper's network (base 64, mults 1/2/4/8, 2 blocks, attention at the lowest level)
    # has tens of millions of parameters; the default CPU network a few million
    ref = count_parameters(UNet(UNetConfig(64, 64, (1, 2, 4, 8), 2, (3,))))
    default = count_parameters(UNet(UNetConfig(4, 32, (1, 2, 4), 2, (2,))))
    assert 30e6 < ref < 80e6, ref
    assert 2e6 < default < 6e6, default


def test_fused_attention_layout_is_the_same_attention(monkeypatch):
    # on CUDA q, k, v are laid out contiguously so that SDPA can take a fused kernel; the
    # CPU keeps the strided views. Both must be the same attention (float32 rounding only)
    strides = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v):
        strides.append(q.stride(-1))
        return sdpa(q, k, v)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    qkv = torch.randn(2, 3 * 64, 8, 8, generator=torch.Generator().manual_seed(3))
    views, fused = attend(qkv, 2, fused=False), attend(qkv, 2, fused=True)
    assert strides == [64, 1]  # views: stride = tokens; fused: unit stride
    assert views.shape == (2, 2, 64, 32)
    torch.testing.assert_close(fused, views, rtol=1e-5, atol=1e-6)
