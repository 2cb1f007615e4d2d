"""OpenCV Haar cascades, evaluated by OpenCV when it can and by numpy when it cannot.

OpenCV 4.x ships ``cv2.CascadeClassifier`` and the cascade files in ``cv2.data``; OpenCV 5
moved both out of the ``opencv-python(-headless)`` wheels. facekp therefore bundles
``haarcascade_frontalface_default.xml`` (Intel License, kept in the file's header) and carries a
vectorised numpy evaluator of OpenCV's cascade format that follows ``detectMultiScale``: the same
image pyramid, window steps, variance normalisation, early rejection, and
``groupRectangles`` merging. Both backends find the same boxes to within a pixel or two (see
``tests/test_faces.py``), so one box calibration serves both.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

#: The cascade bundled with facekp (``facekp/data``), gzip-compressed.
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml.gz"

#: Whether this OpenCV build has the C++ cascade detector (OpenCV 4.x does, 5.x does not).
HAS_OPENCV_CASCADE = hasattr(cv2, "CascadeClassifier")

_GROUP_EPS = 0.2  # OpenCV's GROUP_EPS in detectMultiScale
_CHUNK = 1 << 21  # elements per gather block in the sparse evaluation
_DENSE = 0.1  # evaluate a stage on every window while more than this fraction is alive


def bundled_cascade_path(name: str = DEFAULT_CASCADE) -> Path:
    return Path(str(resources.files("facekp") / "data" / name))


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8")


@dataclass
class _Stage:
    threshold: float
    stumps: bool
    feature: np.ndarray  # (M,) feature index of every node of the stage's trees
    node_threshold: np.ndarray  # (M,)
    trees: list  # per tree: (first node in `feature`, nodes (n, 2) int children, leaves (L,))
    left: np.ndarray | None = None  # stumps only: (T,) leaf value when feature < threshold
    right: np.ndarray | None = None


class HaarCascade:
    """A boosted Haar cascade in OpenCV's XML format (``.xml`` or ``.xml.gz``), numpy evaluator.

    Only the format written by ``opencv_traincascade`` (``type_id="opencv-cascade-classifier"``,
    every file of ``cv2.data`` since OpenCV 3) with upright Haar features is supported.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            root = ET.fromstring(_read_text(self.path))
        except (OSError, ET.ParseError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the cascade file {self.path}: {exc}") from exc
        node = root.find("cascade")
        if node is None or node.get("type_id") != "opencv-cascade-classifier":
            raise ValueError(f"{self.path} is not a cascade in OpenCV's current format (opencv-cascade-classifier)")
        if (node.findtext("stageType") or "").strip() != "BOOST" or (node.findtext("featureType") or "").strip() != "HAAR":
            raise ValueError(f"{self.path}: only boosted Haar cascades are supported")
        self.width = int(node.findtext("width"))
        self.height = int(node.findtext("height"))

        rects, weights = [], []
        for feat in node.find("features"):
            if int((feat.findtext("tilted") or "0").strip()):
                raise ValueError(f"{self.path} uses tilted Haar features, which facekp's evaluator does not support")
            r = [[float(v) for v in item.text.split()] for item in feat.find("rects")]
            if not 1 <= len(r) <= 3:
                raise ValueError(f"{self.path}: a Haar feature has {len(r)} rectangles (expected 1 to 3)")
            r += [[0, 0, 0, 0, 0.0]] * (3 - len(r))
            rects.append([x[:4] for x in r])
            weights.append([x[4] for x in r])
        self._rects = np.array(rects, dtype=np.int64)  # (F, 3, 4) x, y, w, h
        self._weights = np.array(weights, dtype=np.float64)  # (F, 3)

        self.stages: list[_Stage] = []
        for stage in node.find("stages"):
            feature, thr, trees, left, right = [], [], [], [], []
            for weak in stage.find("weakClassifiers"):
                nodes = np.array(weak.findtext("internalNodes").split(), dtype=np.float64).reshape(-1, 4)
                leaves = np.array(weak.findtext("leafValues").split(), dtype=np.float64)
                trees.append((len(feature), nodes[:, :2].astype(np.int64), leaves))
                feature.extend(nodes[:, 2].astype(np.int64))
                thr.extend(nodes[:, 3])
                if len(nodes) == 1:
                    left.append(leaves[0])
                    right.append(leaves[1])
            stumps = all(len(t[1]) == 1 for t in trees)
            self.stages.append(_Stage(
                float(stage.findtext("stageThreshold")), stumps, np.array(feature), np.array(thr), trees,
                np.array(left) if stumps else None, np.array(right) if stumps else None,
            ))

    # -- detection ---------------------------------------------------------------------------
    def detect(
        self,
        gray: np.ndarray,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_size: tuple[int, int] = (0, 0),
        max_size: tuple[int, int] = (0, 0),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``cv2.CascadeClassifier.detectMultiScale2``: ``(N, 4)`` int ``x, y, w, h`` and ``(N,)`` neighbours."""
        if gray.dtype != np.uint8 or gray.ndim != 2:
            raise ValueError("HaarCascade.detect takes an (H, W) uint8 image")
        if scale_factor <= 1:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        h, w = gray.shape
        max_w, max_h = (max_size if max_size[0] > 0 and max_size[1] > 0 else (w, h))
        candidates = []
        factor = 1.0
        while True:
            win_w, win_h = _round(self.width * factor), _round(self.height * factor)
            if win_w > max_w or win_h > max_h or win_w > w or win_h > h:
                break
            if win_w >= min_size[0] and win_h >= min_size[1]:
                candidates.append(self._detect_scale(gray, np.float32(factor)))
            factor *= scale_factor
        rects = np.concatenate(candidates) if candidates else np.empty((0, 4), np.int64)
        return group_rectangles(rects, min_neighbors, _GROUP_EPS)

    def _detect_scale(self, gray: np.ndarray, scale: np.float32) -> np.ndarray:
        """Raw hits at one pyramid level, as (n, 4) x, y, w, h in the original image."""
        h0, w0 = gray.shape
        w, h = _round(w0 / scale), _round(h0 / scale)
        step = 1 if scale >= 2 else 2
        if w < self.width or h < self.height:
            return np.empty((0, 4), np.int64)
        img = gray if (w, h) == (w0, h0) else cv2.resize(gray, (w, h), interpolation=cv2.INTER_LINEAR_EXACT)
        s, sq = cv2.integral2(img, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        nx, ny = (w - self.width) // step + 1, (h - self.height) // step + 1

        def dense(table, x, y, rw, rh):
            def sl(a, b):
                return table[a : a + (ny - 1) * step + 1 : step, b : b + (nx - 1) * step + 1 : step]
            return (sl(y + rh, x + rw) - sl(y, x + rw) - sl(y + rh, x) + sl(y, x)).ravel()

        # Variance normalisation over the window less a one-pixel border, as OpenCV does.
        area = float((self.width - 2) * (self.height - 2))
        vsum = dense(s, 1, 1, self.width - 2, self.height - 2)
        vsq = dense(sq, 1, 1, self.width - 2, self.height - 2)
        nf = area * vsq - vsum * vsum
        valid = nf > 100.0 * area * area  # OpenCV rejects flat windows: area / sqrt(nf) >= 0.1
        inv_nf = 1.0 / np.sqrt(np.maximum(nf, 1.0))

        ys, xs = np.divmod(np.arange(nx * ny), nx)
        base = ys * step * (w + 1) + xs * step
        flat = s.ravel()

        def features_dense(fids):
            out = np.zeros((len(fids), nx * ny))
            for row, f in enumerate(fids):
                for (x, y, rw, rh), wt in zip(self._rects[f], self._weights[f]):
                    if wt != 0:
                        out[row] += wt * dense(s, x, y, rw, rh)
            return out * inv_nf

        def features_sparse(fids, idx):
            r = self._rects[fids]  # (M, 3, 4)
            x0, y0 = r[..., 0], r[..., 1]
            x1, y1 = x0 + r[..., 2], y0 + r[..., 3]
            corners = np.stack([y0 * (w + 1) + x0, y0 * (w + 1) + x1, y1 * (w + 1) + x0, y1 * (w + 1) + x1], -1)
            out = np.empty((len(fids), len(idx)))
            per = max(1, _CHUNK // corners.size)
            for start in range(0, len(idx), per):
                sel = idx[start : start + per]
                v = flat[base[sel, None, None, None] + corners[None]]  # (n, M, 3, 4)
                rs = v[..., 3] - v[..., 1] - v[..., 2] + v[..., 0]
                out[:, start : start + per] = ((rs * self._weights[fids]).sum(-1) * inv_nf[sel, None]).T
            return out

        alive = valid.copy()
        for k, stage in enumerate(self.stages):
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if k == 0 or n_alive > _DENSE * alive.size:
                idx = None
                values = features_dense(stage.feature)
            else:
                idx = np.flatnonzero(alive)
                values = features_sparse(stage.feature, idx)
            below = values < stage.node_threshold[:, None]
            if stage.stumps:
                score = np.where(below, stage.left[:, None], stage.right[:, None]).sum(0)
            else:
                score = sum(_tree_value(below, first, children, leaves, 0) for first, children, leaves in stage.trees)
            passed = score >= stage.threshold
            if idx is None:
                if k == 0:
                    alive &= passed
                    alive &= _visited(~passed & valid, ny, nx)
                else:
                    alive &= passed
            else:
                alive[idx[~passed]] = False
        hits = np.flatnonzero(alive)
        x = xs[hits] * step
        y = ys[hits] * step
        out = np.empty((len(hits), 4), np.int64)
        out[:, 0] = np.rint(x * scale)
        out[:, 1] = np.rint(y * scale)
        out[:, 2] = _round(self.width * float(scale))
        out[:, 3] = _round(self.height * float(scale))
        return out


def _round(v: float) -> int:
    return int(np.rint(v))


def _tree_value(below: np.ndarray, first: int, children: np.ndarray, leaves: np.ndarray, node: int) -> np.ndarray:
    """Leaf values of one tree for every window (OpenCV's node/leaf indexing: child <= 0 is leaf -child)."""
    left, right = children[node]
    a = leaves[-left] if left <= 0 else _tree_value(below, first, children, leaves, left)
    b = leaves[-right] if right <= 0 else _tree_value(below, first, children, leaves, right)
    return np.where(below[first + node], a, b)


def _visited(rejected_first: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """The windows OpenCV evaluates: after a rejection at the first stage it skips the next one in the row.

    ``v[i] = not (v[i-1] and r[i-1])`` along each row, with ``v[0]`` true, solved in closed form:
    inside a run of positions whose predecessor was rejected, visits alternate.
    """
    r = rejected_first.reshape(ny, nx)
    g = np.zeros_like(r)
    g[:, 1:] = r[:, :-1]
    col = np.broadcast_to(np.arange(nx), r.shape)
    starts = np.where(g & ~np.concatenate([np.zeros((ny, 1), bool), g[:, :-1]], axis=1), col, 0)
    run_start = np.maximum.accumulate(starts, axis=1)
    return (~g | ((col - run_start) % 2 == 1)).ravel()


def group_rectangles(rects: np.ndarray, group_threshold: int, eps: float = _GROUP_EPS) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``groupRectangles``: merge similar ``x, y, w, h`` rectangles; returns them and their counts.

    Clusters of at most ``group_threshold`` rectangles are dropped, and so are small clusters
    inside a much better supported one.
    """
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    if len(rects) == 0:
        return np.empty((0, 4), np.int64), np.empty(0, np.int64)
    if group_threshold <= 0:
        return rects, np.ones(len(rects), np.int64)
    x, y, w, h = rects.T
    delta = eps * (np.minimum(w[:, None], w[None]) + np.minimum(h[:, None], h[None])) * 0.5
    similar = (
        (np.abs(x[:, None] - x[None]) <= delta)
        & (np.abs(y[:, None] - y[None]) <= delta)
        & (np.abs(x[:, None] + w[:, None] - x[None] - w[None]) <= delta)
        & (np.abs(y[:, None] + h[:, None] - y[None] - h[None]) <= delta)
    )
    labels = np.arange(len(rects))
    while True:  # connected components: propagate the smallest label
        new = np.where(similar, labels[None], len(rects)).min(axis=1)
        new = new[new]
        if np.array_equal(new, labels):
            break
        labels = new
    classes, labels = np.unique(labels, return_inverse=True)
    counts = np.bincount(labels)
    sums = np.zeros((len(classes), 4))
    np.add.at(sums, labels, rects)
    # OpenCV averages in float32: sum * (1.f / count), rounded to nearest.
    mean = np.rint(sums.astype(np.float32) * (np.float32(1.0) / counts.astype(np.float32))[:, None]).astype(np.int64)
    keep = []
    for i in range(len(classes)):
        n1 = counts[i]
        if n1 <= group_threshold:
            continue
        r1 = mean[i]
        inside = False
        for j in range(len(classes)):
            n2 = counts[j]
            if j == i or n2 <= group_threshold:
                continue
            r2 = mean[j]
            dx, dy = int(np.rint(r2[2] * eps)), int(np.rint(r2[3] * eps))
            if (r1[0] >= r2[0] - dx and r1[1] >= r2[1] - dy and r1[0] + r1[2] <= r2[0] + r2[2] + dx
                    and r1[1] + r1[3] <= r2[1] + r2[3] + dy and (n2 > max(3, n1) or n1 < 3)):
                inside = True
                break
        if not inside:
            keep.append(i)
    return mean[keep], counts[keep]


class OpenCVCascade:
    """``cv2.CascadeClassifier`` (OpenCV 4.x) behind :class:`HaarCascade`'s ``detect``."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.suffix == ".gz":
            stock = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".") / path.stem
            if stock.is_file() and stock.read_bytes() == gzip.decompress(path.read_bytes()):
                path = stock
            else:
                fd, tmp = tempfile.mkstemp(suffix=".xml", prefix="facekp_")
                with os.fdopen(fd, "wb") as f:
                    f.write(gzip.decompress(path.read_bytes()))
                path = Path(tmp)
        self.path = path
        self._cc = cv2.CascadeClassifier(str(path))
        if self._cc.empty():
            raise ValueError(f"OpenCV cannot load the cascade {path}")

    def detect(self, gray, scale_factor=1.1, min_neighbors=3, min_size=(0, 0), max_size=(0, 0)):
        rects, counts = self._cc.detectMultiScale2(
            gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=tuple(min_size), maxSize=tuple(max_size)
        )
        return np.asarray(rects, np.int64).reshape(-1, 4), np.asarray(counts, np.int64).reshape(-1)


def load_cascade(path: str | os.PathLike | None = None, backend: str = "auto"):
    """A cascade evaluator: ``backend`` ``"opencv"`` (needs OpenCV 4.x), ``"numpy"``, or ``"auto"``."""
    path = bundled_cascade_path() if path is None else Path(path)
    if backend not in ("auto", "opencv", "numpy"):
        raise ValueError(f"backend must be 'auto', 'opencv' or 'numpy', got {backend!r}")
    if backend == "opencv" or (backend == "auto" and HAS_OPENCV_CASCADE):
        if not HAS_OPENCV_CASCADE:
            raise ValueError(f"this OpenCV ({cv2.__version__}) has no CascadeClassifier; use backend='numpy'")
        return OpenCVCascade(path)
    return HaarCascade(path)
