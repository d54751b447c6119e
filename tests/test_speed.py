"""GPU speed switches: off on CPU, wired to torch on CUDA, channels-last gives the same numbers."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from kappadiff.config import SPEED_KEYS, without_speed_keys
from kappadiff.diffusion import speed
from kappadiff.diffusion.speed import (
    COMPILE_MODES,
    Speedups,
    compile_network,
    prepare_network,
    set_layout,
)
from kappadiff.diffusion.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))
ALL_ON = Speedups(channels_last=True, compile="default", cudnn_benchmark=True)
# set_layout and compile_network decide by the device *type*; a cuda device object runs
# their GPU branch on CPU tensors, which is all the layout conversion and the compile call need
CUDA = torch.device("cuda")


def _network(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(TINY).eval()
    # the zero-initialised output layers would make every output 0: perturb every weight
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def compile_calls(monkeypatch):
    """Record torch.compile calls instead of compiling (Inductor takes minutes on CPU)."""
    calls = []

    def fake_compile(model, mode=None):
        calls.append((model, mode))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


@pytest.fixture
def cudnn_flag(monkeypatch):
    """Restore the process-wide cuDNN autotuning flag after the test."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_switches_do_nothing_on_cpu(precision, compile_calls, cudnn_flag):
    model = _network()
    net = prepare_network(model, torch.device("cpu"), precision, ALL_ON)
    assert (net is model) if precision == "fp32" else (net.model is model)
    assert compile_calls == []
    assert torch.backends.cudnn.benchmark is False
    assert all(p.is_contiguous() for p in model.parameters())


def test_channels_last_gives_the_same_output_and_input_gradient(cudnn_flag):
    model = _network(1)
    converted = set_layout(copy.deepcopy(model), CUDA, Speedups(channels_last=True))
    convs = [m.weight for m in converted.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert torch.backends.cudnn.benchmark is False  # only set when asked for

    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 500, 990])
    out = {}
    for name, net in (("plain", model), ("channels_last", converted)):
        xi = x.clone().requires_grad_(True)
        v = net(xi, t)
        (grad,) = torch.autograd.grad(v.square().sum(), xi)
        out[name] = (v.detach(), grad)
    # float32 convolutions over another memory order sum in another order: differences of
    # ~1e-6 relative through the network's ~20 layers; a layout bug (a view over the wrong
    # axes) would be O(1)
    for a, b in zip(out["channels_last"], out["plain"], strict=True):
        assert b.abs().max() > 0.1
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_cudnn_benchmark_is_set_on_cuda(cudnn_flag):
    set_layout(_network(), CUDA, Speedups(cudnn_benchmark=True))
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize(
    ("mode", "torch_mode"),
    [("default", None), ("reduce-overhead", "reduce-overhead"),
     ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")],
)  # fmt: skip
def test_compile_mode_reaches_torch_compile(mode, torch_mode, compile_calls):
    model = _network()
    assert compile_network(model, CUDA, Speedups(compile=mode)) is model
    assert compile_calls == [(model, torch_mode)]
    assert compile_network(model, CUDA, Speedups()) is model
    assert compile_network(model, torch.device("cpu"), Speedups(compile=mode)) is model
    assert len(compile_calls) == 1


def test_bf16_network_is_compiled_around_the_autocast(compile_calls, cudnn_flag):
    # autocast inside the compiled region, so that Inductor fuses the casts
    model = _network()
    net = prepare_network(model, CUDA, "bf16", Speedups(compile="reduce-overhead"))
    assert compile_calls == [(net, "reduce-overhead")]
    assert isinstance(net, speed._Autocast) and net.model is model


def test_speedups_from_config():
    assert Speedups.from_config({"n_steps": 50}) == Speedups()  # absent keys are off
    cfg = {"channels_last": True, "compile": "reduce-overhead", "cudnn_benchmark": True, "x": 1}
    assert Speedups.from_config(cfg) == Speedups(True, "reduce-overhead", True)
    with pytest.raises(ValueError, match="compile = 'fast'"):
        Speedups.from_config({"compile": "fast"})
    assert set(SPEED_KEYS) == {f.name for f in fields(Speedups)}
    assert without_speed_keys({**cfg, "n_steps": 50}) == {"x": 1, "n_steps": 50}


@pytest.mark.parametrize("section", ["prior", "sampling"])
def test_schema_declares_the_switches(section):
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"][section]["properties"]
    assert props["channels_last"]["type"] == props["cudnn_benchmark"]["type"] == "boolean"
    assert tuple(props["compile"]["enum"]) == COMPILE_MODES
    for key in SPEED_KEYS:
        assert "default" in props[key] and "GPU only" in props[key]["description"]
