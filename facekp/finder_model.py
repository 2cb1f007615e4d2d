"""The face finder network: a tiny anchor-free detector (YuNet / BlazeFace class) for gray photos.

A depthwise-separable backbone reduces the photo to feature maps at strides 8, 16 and 32, a
top-down path gives the fine maps the coarse maps' context, and one head shared by the three
levels predicts, for every cell, :data:`NUM_OUTPUTS` numbers (see :data:`OUTPUTS`):

- ``score``: the logit of "a face is centred in this cell";
- ``dx, dy``: the face centre (its 15 keypoints' centroid) relative to the cell centre, in cells;
- ``log_side``: the log of the face's box side in cells (the box is a square of
  :data:`BOX_PER_RMS` keypoint RMS radii, so it does not change as the face turns);
- ``cos, sin``: the face's in-plane angle, the rotation (counter-clockwise as displayed) that
  turns it upright (the convention of :attr:`facekp.Face.angle`).

A face of side ``s`` pixels is assigned to the level whose cells it spans
:data:`LEVEL_SIDES` times: the decoding is in :mod:`facekp.finder`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


#: Strides of the three output levels, in input pixels per cell.
STRIDES: tuple[int, int, int] = (8, 16, 32)
#: Channels of the per-cell prediction, in order.
OUTPUTS: tuple[str, ...] = ("score", "dx", "dy", "log_side", "cos", "sin")
NUM_OUTPUTS = len(OUTPUTS)
#: Box side in keypoint RMS radii: about the side of OpenCV's frontal-face Haar box.
BOX_PER_RMS = 3.6
#: A face of side ``s`` px goes to the first level with ``s < LEVEL_SIDES * stride`` (the last
#: level takes the rest): 8 px cells for faces under 48 px, 16 px cells under 96 px.
LEVEL_SIDES = 6.0



@dataclass(frozen=True)
class FinderConfig:
    """Widths of a :class:`FaceFinderNet` (channels of the stride-4 ... stride-32 stages, and of the levels)."""

    stem: int = 16
    stages: tuple[int, int, int, int] = (24, 32, 48, 64)
    neck: int = 32

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "FinderConfig":
        try:
            config = cls(int(data["stem"]), tuple(int(c) for c in data["stages"]), int(data["neck"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid face finder config {data!r}: {exc}") from exc
        if len(config.stages) != 4 or min(config.stem, config.neck, *config.stages) < 1:
            raise ValueError(f"invalid face finder config {data!r}: four positive stage widths expected")
        return config


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SeparableBlock(nn.Module):
    """5x5 depthwise + 1x1 pointwise convolution (BlazeFace's block); residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn(cin, cin, 5, stride, groups=cin, relu=False)
        self.pointwise = _conv_bn(cin, cout, 1, relu=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return F.relu(y + x if self.residual else y)


class FaceFinderNet(nn.Module):
    """Gray photo ``(B, 1, H, W)`` (values standardized by :func:`normalize`) -> three maps
    ``(B, NUM_OUTPUTS, H/s, W/s)`` for ``s`` in :data:`STRIDES` (sides rounded up)."""

    def __init__(self, config: FinderConfig = FinderConfig()) -> None:
        super().__init__()
        self.config = config
        c4, c8, c16, c32 = config.stages
        self.stem = _conv_bn(1, config.stem, 3, 2)
        self.stage4 = nn.Sequential(SeparableBlock(config.stem, c4, 2), SeparableBlock(c4, c4))
        self.stage8 = nn.Sequential(SeparableBlock(c4, c8, 2), SeparableBlock(c8, c8), SeparableBlock(c8, c8))
        self.stage16 = nn.Sequential(SeparableBlock(c8, c16, 2), SeparableBlock(c16, c16), SeparableBlock(c16, c16))
        self.stage32 = nn.Sequential(SeparableBlock(c16, c32, 2), SeparableBlock(c32, c32), SeparableBlock(c32, c32))
        n = config.neck
        self.lateral = nn.ModuleList([_conv_bn(c, n, 1) for c in (c8, c16, c32)])
        self.smooth = nn.ModuleList([SeparableBlock(n, n) for _ in STRIDES])
        self.head = nn.Sequential(SeparableBlock(n, n), nn.Conv2d(n, NUM_OUTPUTS, 1))
        with torch.no_grad():  # faces are rare: start every cell at a score of about 1%
            self.head[-1].bias.zero_()
            self.head[-1].bias[0] = -4.6

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f8 = self.stage8(self.stage4(self.stem(x)))
        f16 = self.stage16(f8)
        f32 = self.stage32(f16)
        p32 = self.lateral[2](f32)
        p16 = self.lateral[1](f16) + F.interpolate(p32, size=f16.shape[-2:], mode="nearest")
        p8 = self.lateral[0](f8) + F.interpolate(p16, size=f8.shape[-2:], mode="nearest")
        return [self.head(smooth(p)) for smooth, p in zip(self.smooth, (p8, p16, p32))]


def normalize(gray_u8: np.ndarray) -> np.ndarray:
    """uint8 (or 0-255 float) gray pixels -> float32 at the network's input scale (about zero mean, unit spread).

    In numpy, on one thread: torch's thread pool made this 20 ms on a 640x360 photo when the other
    core was busy (0.06 ms in numpy).
    """
    return (np.asarray(gray_u8, dtype=np.float32) - 128.0) / 64.0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
