"""A face-presence score from the keypoint network's own outputs: "is there a face in this frame?".

The network was trained on faces only, so it always places 15 points. On a face they are confident
and form a face's shape; on a wall, a texture or a badly framed face they are weaker and scattered.
:class:`PresenceModel` turns that into a probability: a logistic regression on 16 features,

- the 15 keypoint confidences (heatmap peak heights, in [0, 1]), and
- the shape residual: the RMS distance of the 15 points from the training mean shape after the
  best similarity alignment (least squares over translation, rotation and scale), divided by the
  mean shape's RMS radius (0: a perfect mean face; 1: no resemblance at all).

Both are invariant to a similarity of the points, so the score is the same for points in crop or in
image pixels, and for any runner that gives points and confidences (torch, the ONNX and int8 graphs).
Fitted by ``facekp-train presence`` (:mod:`facekp.train.presence`) and stored as the optional
``presence`` entry of the model's ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The features, in order: 15 confidences, then the shape residual.
FEATURES = ("confidence", "shape_residual")
#: The ``detect(min_presence=...)`` default. Face-free photos offer many more candidates than photos
#: offer faces, so the default sits well above the logistic model's even odds (0.5): on the
#: face-finding benchmark 0.9 left no false face on 50 face-free photos (0.5: 3), found as many plain
#: and turned faces, and 4.5 points fewer group faces (``docs/detection.md``).
DEFAULT_MIN_PRESENCE = 0.9
#: The logistic model's even-odds point: above it a framing more likely holds a face than not.
EVEN_ODDS = 0.5


def shape_residual(points: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """``(N,)`` RMS residual of ``points`` ``(N, K, 2)`` after the best similarity alignment onto
    ``mean_shape`` ``(K, 2)``, in units of the mean shape's RMS radius (in [0, 1]).

    Points are complex numbers ``z``; the alignment ``a * z`` (centred) that best fits the centred mean
    shape ``w`` has ``a = sum(conj(z) w) / sum(|z|^2)`` (complex Procrustes). Coincident points
    (all at one place) give ``a = 0`` and a residual of 1.
    """
    pts = np.asarray(points, dtype=np.float64)
    z = pts[..., 0] + 1j * pts[..., 1]
    z = z - z.mean(axis=-1, keepdims=True)
    w = mean_shape[:, 0] + 1j * mean_shape[:, 1]
    w = w - w.mean()
    energy = (np.abs(z) ** 2).sum(axis=-1)
    a = np.where(energy > 1e-12, (np.conj(z) * w).sum(axis=-1) / np.maximum(energy, 1e-12), 0.0)
    residual = np.abs(a[:, None] * z - w)
    return np.sqrt((residual ** 2).mean(axis=-1)) / np.sqrt((np.abs(w) ** 2).mean())


@dataclass(frozen=True, eq=False)
class PresenceModel:
    """Logistic regression from keypoints and confidences to the probability that a face is there.

    Attributes:
        mean_shape: ``(K, 2)`` the training faces' mean keypoints (canonical frame pixels; only its
            shape matters, not its position or size).
        feature_mean, feature_scale: ``(K + 1,)`` standardisation of the features (scale > 0).
        weights: ``(K + 1,)`` logistic weights of the standardised features; ``bias``: the intercept.
        stats: how it was fitted and what it scored on held-out data (free-form, JSON-ready).
    """

    mean_shape: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    weights: np.ndarray
    bias: float
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = np.asarray(self.mean_shape, dtype=np.float64)
        if shape.ndim != 2 or shape.shape[1] != 2 or len(shape) < 3:
            raise ValueError(f"presence mean_shape must be (K, 2) with K >= 3, got shape {shape.shape}")
        n = len(shape) + 1
        arrays = {"feature_mean": self.feature_mean, "feature_scale": self.feature_scale, "weights": self.weights}
        for name, value in arrays.items():
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"presence {name} must hold {n} values (K confidences + shape residual), got shape {arr.shape}")
            object.__setattr__(self, name, arr)
        if not all(np.isfinite(v).all() for v in (shape, self.feature_mean, self.feature_scale, self.weights)) \
                or not np.isfinite(float(self.bias)):
            raise ValueError("presence model holds NaN or infinite values")
        if (self.feature_scale <= 0).any():
            raise ValueError("presence feature_scale must be > 0")
        if np.sqrt(((shape - shape.mean(0)) ** 2).sum(1).mean()) < 1e-6:
            raise ValueError("presence mean_shape has all points at one place")
        object.__setattr__(self, "mean_shape", shape)
        object.__setattr__(self, "bias", float(self.bias))

    @property
    def num_keypoints(self) -> int:
        return len(self.mean_shape)

    def features(self, points: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """``(N, K + 1)``: the confidences and the shape residual of ``points`` ``(N, K, 2)`` (any
        pixel frame) and ``confidence`` ``(N, K)``."""
        points, confidence = self._check(points, confidence)
        return np.concatenate([confidence, shape_residual(points, self.mean_shape)[:, None]], axis=1)

    def score(self, points: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 probabilities in [0, 1] that each of the N framings holds a face.

        ``points``: ``(N, K, 2)`` (or one face's ``(K, 2)``, giving ``(1,)``) in any pixel frame;
        ``confidence``: ``(N, K)`` (or ``(K,)``).
        """
        return self.probability(self.features(points, confidence))

    def probability(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 probabilities of ``(N, K + 1)`` features from :meth:`features`."""
        z = ((features - self.feature_mean) / self.feature_scale) @ self.weights + self.bias
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # the logistic, without exp overflow

    def _check(self, points, confidence) -> tuple[np.ndarray, np.ndarray]:
        pts = np.asarray(points, dtype=np.float64)
        conf = np.asarray(confidence, dtype=np.float64)
        if pts.ndim == 2:
            pts, conf = pts[None], conf[None]
        k = self.num_keypoints
        if pts.ndim != 3 or pts.shape[1:] != (k, 2) or conf.shape != pts.shape[:2]:
            raise ValueError(f"presence needs points (N, {k}, 2) and confidences (N, {k}); got {pts.shape} and {conf.shape}")
        if not (np.isfinite(pts).all() and np.isfinite(conf).all()):
            raise ValueError("presence got NaN or infinite points or confidences")
        return pts, conf

    def to_dict(self) -> dict:
        """JSON-ready form (the ``presence`` entry of ``config.json``)."""
        return {
            "features": list(FEATURES),
            "mean_shape": np.round(self.mean_shape, 4).tolist(),
            "feature_mean": [round(float(v), 6) for v in self.feature_mean],
            "feature_scale": [round(float(v), 6) for v in self.feature_scale],
            "weights": [round(float(v), 6) for v in self.weights],
            "bias": round(self.bias, 6),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PresenceModel":
        """The model of :meth:`to_dict`'s form; ``ValueError`` saying what is wrong otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"presence must be a JSON object, got {type(data).__name__}")
        if data.get("features") != list(FEATURES):
            raise ValueError(f"presence features {data.get('features')!r} are not the {list(FEATURES)} this facekp computes")
        missing = [k for k in ("mean_shape", "feature_mean", "feature_scale", "weights", "bias") if k not in data]
        if missing:
            raise ValueError(f"presence lacks {missing}")
        try:
            arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean_shape", "feature_mean", "feature_scale", "weights")}
            bias = float(data["bias"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"presence holds non-numeric values: {exc}") from None
        stats = data.get("stats") or {}
        if not isinstance(stats, dict):
            raise ValueError(f"presence stats must be a JSON object, got {type(stats).__name__}")
        return cls(**arrays, bias=bias, stats=stats)
