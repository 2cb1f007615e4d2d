"""StackedHourglass: shapes, config validation, BatchNorm folding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from facekp.model import HourglassConfig, fuse_conv_bn


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_stacks=1, depth=1, channels=8, heatmap_stride=4),
        dict(num_stacks=2, depth=3, channels=16, heatmap_stride=4),
        dict(num_stacks=1, depth=2, channels=16, heatmap_stride=2),
        dict(num_stacks=2, depth=1, channels=8, heatmap_stride=1, input_size=32),
        dict(num_stacks=3, depth=2, channels=12, heatmap_stride=2, blocks=2, input_size=64),
    ],
)
def test_output_shapes(kwargs, make_model):
    config = HourglassConfig(**kwargs)
    model = make_model(config)
    n, s = 2, config.input_size
    x = torch.randn(n, 1, s, s)
    with torch.no_grad():
        outputs = model(x)
        last = model.predict_heatmaps(x)
    side = s // config.heatmap_stride
    assert config.heatmap_size == side
    assert isinstance(outputs, list) and len(outputs) == config.num_stacks
    for out in outputs:
        assert out.shape == (n, 15, side, side)
        assert torch.isfinite(out).all()
    assert torch.equal(last, outputs[-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(heatmap_stride=3), "heatmap_stride"),
        (dict(heatmap_stride=8), "heatmap_stride"),
        (dict(depth=4), "divisible"),  # 24 is not divisible by 16
        (dict(input_size=100), "divisible"),  # 100 / 4 = 25
        (dict(input_size=98, heatmap_stride=4), "divisible"),  # not an integer heatmap side
        (dict(num_stacks=0), "num_stacks"),
        (dict(channels=0), "channels"),
        (dict(depth=0), "depth"),
        (dict(blocks=0), "blocks"),
        (dict(num_keypoints=0), "num_keypoints"),
    ],
)
def test_invalid_config_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HourglassConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys():
    config = HourglassConfig(num_stacks=3, depth=2, channels=32, heatmap_stride=2, blocks=2)
    assert HourglassConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown hourglass config keys"):
        HourglassConfig.from_dict({**config.to_dict(), "width": 3})


@pytest.mark.parametrize(
    "config",
    [
        HourglassConfig(num_stacks=2, depth=3, channels=16, heatmap_stride=4),
        HourglassConfig(num_stacks=1, depth=2, channels=16, heatmap_stride=2),
        HourglassConfig(num_stacks=2, depth=1, channels=8, heatmap_stride=1, input_size=32, blocks=2),
    ],
)
def test_fuse_conv_bn_matches_unfused(config, make_model):
    model = make_model(config, seed=3)  # BatchNorm statistics and affine randomised
    x = torch.randn(3, 1, config.input_size, config.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        fused = fuse_conv_bn(copy.deepcopy(model))
        got = fused(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()), "a BatchNorm was left unfused"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    for e, g in zip(expected, got):
        scale = e.abs().max().item()
        assert (e - g).abs().max().item() <= 1e-4 * max(1.0, scale)
    # The randomised BatchNorm really matters: with the default statistics the output would differ.
    reset = copy.deepcopy(model)
    for m in reset.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    with torch.no_grad():
        assert (reset(x)[-1] - expected[-1]).abs().max() > 1e-2


def test_fused_model_in_channels_last_matches(make_model):
    # Detector runs the fused copy in channels-last layout.
    model = make_model(HourglassConfig(num_stacks=2, channels=16), seed=5)
    x = torch.randn(2, 1, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.predict_heatmaps(x)
        fused = fuse_conv_bn(copy.deepcopy(model)).to(memory_format=torch.channels_last)
        got = fused.predict_heatmaps(x.to(memory_format=torch.channels_last))
    assert torch.allclose(expected, got, atol=1e-4, rtol=1e-4)
