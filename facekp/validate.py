"""The checks every value from outside goes through: numbers, configs, boxes, calibrations, outputs.

A leaf module (it imports only numpy and :mod:`facekp.errors`), so any layer can call it with a
one-line call site. Each check raises ``ValueError`` (``TypeError`` for a wrong type) whose message
names the value, what it was and what is expected; it never lets NaN, infinity or a size that
would hang or exhaust memory through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from .errors import FacekpError

#: Bounds of each :class:`facekp.model.HourglassConfig` field (inclusive). Far beyond any useful
#: model, but small enough that building the network takes at most seconds and fits in memory.
HOURGLASS_LIMITS: dict[str, tuple[int, int]] = {
    "num_stacks": (1, 16),
    "depth": (1, 8),
    "channels": (1, 1024),
    "heatmap_stride": (1, 4),
    "input_size": (8, 1024),
    "num_keypoints": (1, 1024),
    "blocks": (1, 16),
}
#: Target Gaussian sigma, in heatmap pixels.
SIGMA_LIMITS = (0.05, 64.0)
#: Box calibration: keypoint RMS radius / box side, and centroid offset from the box centre in box sides.
CALIBRATION_SCALE_LIMITS = (1e-3, 1e3)
CALIBRATION_OFFSET_LIMIT = 10.0
#: A face box's side is at least this many pixels and at most this many times the image's longer side.
MIN_BOX_SIDE = 1.0
MAX_BOX_RATIO = 10.0
#: Deepest nesting accepted in a config's JSON (a real config nests 3 levels).
MAX_JSON_DEPTH = 32


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``; bools, floats and strings are refused (``16.5``, ``"3"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in [{_bound(lo, '-inf')}, {_bound(hi, 'inf')}], got {value}")
    return value


def number(name: str, value, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
           open_hi: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``open_lo`` / ``open_hi`` leave that end out)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:  # a huge int
        raise ValueError(f"{name} must be a finite number, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    low_fails = lo is not None and (value <= lo if open_lo else value < lo)
    high_fails = hi is not None and (value >= hi if open_hi else value > hi)
    if low_fails or high_fails:
        raise ValueError(f"{name} must be in {'(' if open_lo else '['}{_bound(lo, '-inf')}, {_bound(hi, 'inf')}"
                         f"{')' if open_hi else ']'}, got {value:g}")
    return value


def _bound(v, unbounded: str) -> str:
    return unbounded if v is None else f"{v:g}"


def hourglass(values: Mapping[str, object]) -> None:
    """Types and bounds of an hourglass architecture (see :data:`HOURGLASS_LIMITS`), checked before
    any network is built: a config of 2**31 stacks or a million channels would hang or exhaust memory."""
    for name, (lo, hi) in HOURGLASS_LIMITS.items():
        if name in values:
            integer(name, values[name], lo, hi)


def sigma(value) -> float:
    """The heatmap Gaussian's sigma (heatmap pixels), finite and within :data:`SIGMA_LIMITS`."""
    return number("sigma", value, *SIGMA_LIMITS)


def json_object(text: str | bytes, where: str) -> dict:
    """Parse ``text`` (UTF-8 bytes or str) as a JSON object; ``ValueError`` naming ``where`` otherwise.

    Refuses bad encodings, non-objects and nesting deeper than :data:`MAX_JSON_DEPTH` (which would
    otherwise end in a ``RecursionError``).
    """
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8-sig")
        if not isinstance(text, str):
            raise TypeError(f"expected JSON text, got {type(text).__name__}")
        if _nesting(text) > MAX_JSON_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError are ValueErrors
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} holds a JSON {type(data).__name__}; expected an object")
    return data


def _nesting(text: str) -> int:
    """Upper bound of the JSON nesting depth (brackets inside strings count too, which only errs high)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def calibration(scale, offset) -> tuple[float, tuple[float, float]]:
    """A box calibration's ``scale`` (RMS radius / box side) and ``offset`` (two box-side fractions)."""
    scale = number("calibration scale", scale, *CALIBRATION_SCALE_LIMITS)
    if isinstance(offset, (str, bytes, Mapping)) or not hasattr(offset, "__len__") or len(offset) != 2:
        raise ValueError(f"calibration offset must be two numbers (x, y) in box sides, got {offset!r}")
    lim = CALIBRATION_OFFSET_LIMIT
    x, y = (number("calibration offset", v, -lim, lim) for v in offset)
    return scale, (x, y)


def calibration_dict(data) -> None:
    """A calibration's dict form (``config.json``'s ``box_to_frame``): ``scale``, optional ``offset``,
    ``detector`` (a string) and ``stats`` (an object)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a box calibration must be a JSON object with 'scale' and 'offset', got {data!r}")
    if "scale" not in data:
        raise ValueError(f"box calibration {dict(data)!r} lacks 'scale'")
    calibration(data["scale"], data.get("offset", (0.0, 0.0)))
    if not isinstance(data.get("detector", ""), str):
        raise ValueError(f"box calibration 'detector' must be a string, got {data['detector']!r}")
    if not isinstance(data.get("stats", {}), Mapping):
        raise ValueError(f"box calibration 'stats' must be an object, got {data['stats']!r}")


def boxes(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which of the finite, ordered ``(N, 4)`` boxes ``x0, y0, x1, y1`` a ``width`` x ``height``
    image can frame: overlapping it, each side at least :data:`MIN_BOX_SIDE` pixels and at most
    :data:`MAX_BOX_RATIO` times the image's longer side. Returns the (N,) bool mask; raises
    ``ValueError`` for NaN/inf or unordered boxes."""
    arr = np.asarray(arr, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(arr).all():
        raise ValueError("face boxes contain NaN or infinite values")
    if ((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])).any():
        raise ValueError("face boxes must have x1 > x0 and y1 > y0 (x0, y0, x1, y1 order)")
    w, h = arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]
    longest = MAX_BOX_RATIO * max(width, height)
    sized = (np.minimum(w, h) >= MIN_BOX_SIDE) & (np.maximum(w, h) <= longest)
    # Pixel-centre convention: the image spans -0.5 .. width - 0.5.
    overlaps = (arr[:, 2] > -0.5) & (arr[:, 0] < width - 0.5) & (arr[:, 3] > -0.5) & (arr[:, 1] < height - 0.5)
    return sized & overlaps


def describe_box_problem(box: np.ndarray, width: int, height: int) -> str:
    """Why :func:`boxes` rejected ``box``, for an error message."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x1 - x0, y1 - y0) < MIN_BOX_SIDE:
        return f"box {box.tolist()} is smaller than {MIN_BOX_SIDE:g} pixel"
    if max(x1 - x0, y1 - y0) > MAX_BOX_RATIO * max(width, height):
        return f"box {box.tolist()} is over {MAX_BOX_RATIO:g} times the image's longer side ({max(width, height)} px)"
    return f"box {box.tolist()} lies wholly outside the {width}x{height} image"


def angles(values: np.ndarray) -> np.ndarray:
    """Face angles in degrees: finite, returned in [-180, 180)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"face angles must be finite degrees, got {a[~np.isfinite(a)][:3].tolist()}")
    return (a + 180.0) % 360.0 - 180.0


def transforms(m: np.ndarray) -> np.ndarray:
    """``(N, 2, 3)`` image -> crop affines: finite, invertible, scale within 1e-6 .. 1e6."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] != (2, 3):
        raise ValueError(f"transforms must be (N, 2, 3) affines, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("transforms contain NaN or infinite values")
    det = np.abs(m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0])  # cheaper than np.linalg.det for 2x2
    if m.size and not ((det >= 1e-12) & (det <= 1e12)).all():
        raise ValueError(f"transforms must scale by 1e-6 .. 1e6 (|det| {det.min():.3g} .. {det.max():.3g})")
    return m


def finite_points(points: np.ndarray, confidence: np.ndarray) -> None:
    """The last guard of every prediction: facekp never returns NaN or infinite points."""
    if not (np.isfinite(points).all() and np.isfinite(confidence).all()):
        raise FacekpError("the network produced non-finite keypoints; the inputs passed every check, please report this")


def keypoints(points: np.ndarray, mask: np.ndarray, width: int, height: int, where: str) -> None:
    """Training labels: visible points finite, within one image size of the ``width`` x ``height``
    image, and at least two distinct (a face whose points coincide has no size to frame)."""
    pts = np.asarray(points, dtype=np.float64)[np.asarray(mask, bool)]
    if not np.isfinite(pts).all():
        raise ValueError(f"{where}: keypoints contain NaN or infinite values")
    if len(pts) < 2:
        raise ValueError(f"{where}: fewer than two labelled keypoints")
    span = max(width, height)
    if (pts < -span).any() or (pts[:, 0] > width + span).any() or (pts[:, 1] > height + span).any():
        raise ValueError(f"{where}: keypoints lie far outside the {width}x{height} image "
                         f"(x {pts[:, 0].min():.4g} .. {pts[:, 0].max():.4g}, y {pts[:, 1].min():.4g} .. {pts[:, 1].max():.4g})")
    if np.sqrt(((pts - pts.mean(0)) ** 2).sum(1).mean()) < 1e-3:
        raise ValueError(f"{where}: all labelled keypoints lie on one spot")


def radius(value) -> float | None:
    """A drawing radius in pixels: None (automatic) or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (0 <= value < math.inf):
        raise ValueError(f"radius must be >= 0 pixels and finite (or None for the default), got {value!r}")
    return float(value)
