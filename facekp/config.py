"""What a saved model needs besides its tensors: ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import validate
from .keypoints import KEYPOINT_NAMES
from .model import HourglassConfig
from .presence import PresenceModel

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture, heatmap codec and input conventions of a saved model.

    Attributes:
        hourglass: network architecture.
        sigma: target Gaussian standard deviation, in heatmap pixels.
        keypoint_names: output order; must be facekp's 15 names.
        normalization: how a 96x96 crop in [0, 1] becomes network input ("standardize": per-crop
            zero mean and unit variance).
        box_to_frame: optional calibration from a face detector's box to the canonical frame
            (``scale``: canonical RMS radius / box side; ``offset``: centroid - box centre,
            in box sides), fitted by ``facekp-train calibrate``.
        presence: optional face-presence model (:meth:`facekp.presence.PresenceModel.to_dict`), fitted
            by ``facekp-train presence``; None: the model gives no presence score.
    """

    hourglass: HourglassConfig = field(default_factory=HourglassConfig)
    sigma: float = 1.0
    keypoint_names: tuple[str, ...] = KEYPOINT_NAMES
    normalization: str = "standardize"
    box_to_frame: dict | None = None
    presence: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hourglass, HourglassConfig):
            raise TypeError(f"hourglass must be a HourglassConfig, got {type(self.hourglass).__name__}")
        validate.sigma(self.sigma)
        if self.box_to_frame is not None:
            validate.calibration_dict(self.box_to_frame)
        if not isinstance(self.keypoint_names, (list, tuple)) or tuple(self.keypoint_names) != KEYPOINT_NAMES:
            raise ValueError(f"keypoint_names {self.keypoint_names!r} differ from facekp's {list(KEYPOINT_NAMES)}")
        if self.normalization != "standardize":
            raise ValueError(f"unknown normalization {self.normalization!r}; this facekp knows 'standardize'")
        if self.hourglass.num_keypoints != len(KEYPOINT_NAMES):
            raise ValueError(f"the network predicts {self.hourglass.num_keypoints} heatmaps, expected {len(KEYPOINT_NAMES)}")
        scored = None if self.presence is None else self.presence_model().num_keypoints
        if scored not in (None, len(KEYPOINT_NAMES)):
            raise ValueError(f"the presence model scores {scored} keypoints, expected {len(KEYPOINT_NAMES)}")

    def presence_model(self) -> PresenceModel | None:
        """The :class:`~facekp.presence.PresenceModel` of ``presence`` (None when the model has none)."""
        return None if self.presence is None else PresenceModel.from_dict(self.presence)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "architecture": "stacked_hourglass",
            "hourglass": self.hourglass.to_dict(),
            "sigma": self.sigma,
            "keypoint_names": list(self.keypoint_names),
            "normalization": self.normalization,
            "box_to_frame": self.box_to_frame,
        } | ({} if self.presence is None else {"presence": self.presence})

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        """The config of ``data`` (a parsed ``config.json``); ``ValueError`` or ``TypeError`` naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a facekp config must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("hourglass", "sigma", "keypoint_names", "normalization") if k not in data]
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"config format_version {version!r} is not supported; this facekp reads version {FORMAT_VERSION}")
        if data.get("architecture") != "stacked_hourglass":
            raise ValueError(f"unknown architecture {data.get('architecture')!r}; expected 'stacked_hourglass'")
        if missing:
            raise ValueError(f"the config lacks {missing}")
        return cls(
            hourglass=HourglassConfig.from_dict(data["hourglass"]),
            sigma=validate.sigma(data["sigma"]),
            keypoint_names=tuple(data["keypoint_names"]),
            normalization=data["normalization"],
            box_to_frame=data.get("box_to_frame"),
            presence=data.get("presence"),
        )
