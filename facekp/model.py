"""Stacked hourglass network (Newell et al., ECCV 2016), sized for 96x96 face crops.

Differences from the paper, chosen for CPU speed: bottleneck residual blocks use the
post-activation order conv -> BN -> ReLU, so every BatchNorm can be folded into the
convolution before it at inference (:func:`fuse_conv_bn`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from . import validate
from .keypoints import NUM_KEYPOINTS


@dataclass(frozen=True)
class HourglassConfig:
    """Architecture of a :class:`StackedHourglass`.

    Attributes:
        num_stacks: hourglasses in sequence, each with its own heatmap head.
        depth: poolings inside one hourglass; the heatmap side must be divisible by ``2**depth``.
        channels: feature channels through the hourglasses.
        heatmap_stride: input pixels per heatmap pixel (1, 2 or 4).
        input_size: side of the square grayscale input crop, in pixels.
        num_keypoints: heatmaps per head.
        blocks: residual blocks per hourglass level.
    """

    num_stacks: int = 2
    depth: int = 3
    channels: int = 64
    heatmap_stride: int = 4
    input_size: int = 96
    num_keypoints: int = NUM_KEYPOINTS
    blocks: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):  # config.json may hold anything: 16.5, "3", true...
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
        validate.hourglass(asdict(self))  # bounds, before anything builds a network of this size
        if self.heatmap_stride not in (1, 2, 4):
            raise ValueError(f"heatmap_stride must be 1, 2 or 4, got {self.heatmap_stride}")
        side = self.heatmap_size
        if self.input_size % self.heatmap_stride or side % (2**self.depth):
            raise ValueError(
                f"heatmap side {self.input_size}/{self.heatmap_stride} must be an integer divisible by "
                f"2**depth = {2**self.depth}"
            )
        for name in ("num_stacks", "depth", "channels", "num_keypoints", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def heatmap_size(self) -> int:
        return self.input_size // self.heatmap_stride

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HourglassConfig":
        if not isinstance(data, dict):
            raise ValueError(f"the hourglass config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown hourglass config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**data)


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """Bottleneck residual block: 1x1 -> 3x3 -> 1x1, with a 1x1 projection when widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            conv_bn_relu(cin, mid, 1),
            conv_bn_relu(mid, mid, 3),
            conv_bn_relu(mid, cout, 1, relu=False),
        )
        self.skip = nn.Identity() if cin == cout else conv_bn_relu(cin, cout, 1, relu=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[Residual(channels, channels) for _ in range(n)])


class Hourglass(nn.Module):
    """One recursive hourglass: a skip branch at full resolution plus pool -> inner -> nearest upsample."""

    def __init__(self, depth: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.skip = _blocks(channels, blocks)
        self.down = nn.Sequential(nn.MaxPool2d(2), _blocks(channels, blocks))
        self.inner = Hourglass(depth - 1, channels, blocks) if depth > 1 else _blocks(channels, blocks)
        self.up = _blocks(channels, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.up(self.inner(self.down(x)))
        return self.skip(x) + nn.functional.interpolate(low, scale_factor=2.0, mode="nearest")


class StackedHourglass(nn.Module):
    """Stacked hourglass with intermediate supervision.

    Input: ``(N, 1, S, S)`` normalized grayscale crops, ``S = config.input_size``.
    Output of ``forward``: a list with one ``(N, K, S/stride, S/stride)`` heatmap tensor per
    stack (the training loss uses all of them); :meth:`predict_heatmaps` returns the last only.
    """

    def __init__(self, config: HourglassConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HourglassConfig()
        c, stride = config.channels, config.heatmap_stride
        half = max(c // 2, 8)
        # The stem reaches heatmap resolution with strided 3x3 convs: cheap, and every
        # hourglass then runs at heatmap resolution.
        stem: list[nn.Module] = [conv_bn_relu(1, half, 3, stride=2 if stride > 1 else 1)]
        stem.append(conv_bn_relu(half, c, 3, stride=2) if stride == 4 else Residual(half, c))
        self.stem = nn.Sequential(*stem)
        n = config.num_stacks
        self.hourglasses = nn.ModuleList(Hourglass(config.depth, c, config.blocks) for _ in range(n))
        self.features = nn.ModuleList(nn.Sequential(Residual(c, c), conv_bn_relu(c, c, 1)) for _ in range(n))
        self.heads = nn.ModuleList(nn.Conv2d(c, config.num_keypoints, 1) for _ in range(n))
        self.merge_features = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in range(n - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(config.num_keypoints, c, 1) for _ in range(n - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for i, (hourglass, features, head) in enumerate(zip(self.hourglasses, self.features, self.heads)):
            feat = features(hourglass(x))
            heatmaps = head(feat)
            outputs.append(heatmaps)
            if i < len(self.merge_features):
                x = x + self.merge_features[i](feat) + self.merge_heatmaps[i](heatmaps)
        return outputs

    def predict_heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """Heatmaps of the last stack only, skipping nothing the last stack needs."""
        return self.forward(x)[-1]


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every ``Conv2d -> BatchNorm2d`` pair inside a ``Sequential`` into one conv (in place, eval only)."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return model
