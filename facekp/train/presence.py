"""Fit the face-presence model (:mod:`facekp.presence`) of a keypoint network: ``facekp-train presence``.

Positives are training faces framed as in training (:class:`~facekp.train.augment.Augmenter`'s
geometry). Negatives are what ``detect`` must reject: random rotated patches of face-free photos,
badly framed training faces (zoomed out, zoomed in on a part, shifted far), training faces turned
upside down, and the false faces a loose
Haar cascade and the face finder at a low threshold find on face-free photos, run through ``detect``'s
own framing and refinement (the finder optionally on every view of each photo the finder's own hard
negatives are mined on: :func:`negative_views`). Held out:
the validation faces and :data:`~facekp.train.negatives.HELD_OUT_NEGATIVES`, never trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..calibration import BoxCalibration, resolve_calibration
from ..detector import DEFAULT_REFINE, Detector
from ..face_detection import HaarFaceDetector, to_u8
from ..geometry import apply_affine
from ..presence import DEFAULT_MIN_PRESENCE, PresenceModel
from ..turns import RETRY_TURNS, all_turns
from .augment import Augmenter, cut_at_border, make_crop
from .data import Sample
from .hard_negatives import MINING_SIDES, views
from .negative_crops import badly_framed_crops, load_negatives, patch_crops, upside_down_crops


def loose_haar() -> HaarFaceDetector:
    """The loose Haar cascade whose false faces on the training negatives become hard negatives
    (about 2,000 of them on the 26 training wallpapers)."""
    return HaarFaceDetector(min_neighbors=1, scale_factor=1.05, angles=(-90, -60, -30, 0, 30, 60, 90, 180))


#: The bundled face finder's threshold for hard negatives: far below its own, so that its false faces
#: on the training negatives (any angle, any size) are many.
LOOSE_FINDER_SCORE = 0.05
#: The name of the loose finder among :func:`hard_detectors`.
LOOSE_FINDER = "finder_loose"


def hard_detectors() -> dict[str, Callable]:
    """The face detectors whose false faces on face-free photos are the hard negatives, by name:
    :func:`loose_haar` and the bundled face finder at :data:`LOOSE_FINDER_SCORE`."""
    from ..finder import FaceFinder

    return {"haar_loose": loose_haar(), LOOSE_FINDER: FaceFinder(min_score=LOOSE_FINDER_SCORE)}


def negative_views(photos: Sequence[np.ndarray], sides: Sequence[int] = MINING_SIDES) -> list[np.ndarray]:
    """Each face-free photo shrunk to each longer side of ``sides`` (not enlarged) and turned by each
    quarter turn, as the finder's hard negatives are mined (:func:`facekp.train.hard_negatives.mine`):
    a finder's false faces depend on the scale and the turn it sees a photo at."""
    return [image for photo in photos for _, _, image in views(photo, sides)]


#: Figures reported on held-out data: at the default threshold and at the ones keeping these shares of faces.
KEEP_SHARES = (0.99, 0.995)


def positive_crops(samples: Sequence[Sample], rng: np.random.Generator, per_face: int = 1, border_cut: float = 0.0,
                   low_res: float = 0.0) -> np.ndarray:
    """``(len * per_face, 96, 96)`` crops of the faces framed with the training augmentation's geometry;
    a ``border_cut`` share of them cut by their photo's border (:func:`~facekp.train.augment.cut_at_border`),
    a ``low_res`` share seen at a small face's resolution (:func:`low_resolution`)."""
    geometry = Augmenter().geometry
    crops = []
    for s in samples:
        for _ in range(per_face):
            image = cut_at_border(s.image, s.points, rng) if border_cut and rng.random() < border_cut else s.image
            crop = make_crop(image, s.points, s.mask, s.frame, geometry.sample(rng))[0]
            crops.append(low_resolution(crop, rng) if low_res and rng.random() < low_res else crop)
    return np.stack(crops)


def low_resolution(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A float crop in [0, 1] as a face of 8-25 px eye distance fills it: shrunk 2-5x (area averaging),
    enlarged back (bilinear, as :func:`facekp.preprocess.warp` does) and noised."""
    size = crop.shape[0]
    small = max(8, round(size / np.exp(rng.uniform(np.log(2.0), np.log(5.0)))))
    crop = cv2.resize(cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    return np.clip(crop + rng.normal(0.0, rng.uniform(0.0, 0.04), crop.shape), 0.0, 1.0).astype(np.float32)


def detect_features(detector: Detector, model: PresenceModel, grays: Sequence[np.ndarray],
                    face_detector: Callable, calibration: BoxCalibration) -> tuple[np.ndarray, list[int]]:
    """Presence features of every face ``face_detector`` reports in ``grays``, framed and refined as
    :meth:`Detector.detect` does, at the face detector's angle and at each of detect's
    turns (:func:`facekp.turns.all_turns`): ``(faces, 1 + turns, features)``; and the number of faces per photo."""
    feats, per_photo = [], []
    for g in grays:
        boxes, _, angles = face_detector(to_u8(g))
        per_photo.append(len(boxes))
        if len(boxes):
            frames = [calibration.frame(b, a) for b, a in zip(boxes, angles)]
            first = detector.predict_refined(g, np.stack(frames), DEFAULT_REFINE)
            p, q = all_turns(detector, g, np.stack(frames), DEFAULT_REFINE)
            turned = model.features(p.reshape(-1, *p.shape[2:]), q.reshape(-1, q.shape[-1])).reshape(*q.shape[:2], -1)
            feats.append(np.concatenate([model.features(*first)[:, None], turned], axis=1))
    return (np.concatenate(feats) if feats else np.empty((0, 1 + len(RETRY_TURNS), model.num_keypoints + 1))), per_photo


def crop_features(detector: Detector, model: PresenceModel, crops: np.ndarray) -> np.ndarray:
    """Presence features of network-sized crops."""
    return model.features(*detector.predict_crops(crops))


def mean_shape(samples: Sequence[Sample]) -> np.ndarray:
    """``(15, 2)`` mean keypoints, canonical frame, of the faces with all 15 points labelled."""
    full = [apply_affine(s.frame, s.points) for s in samples if s.mask.all()]
    if not full:
        raise ValueError("no training face has all 15 keypoints labelled; cannot compute the mean shape")
    return np.mean(full, axis=0)


def fit_logistic(positives: np.ndarray, negatives: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, ...]:
    """Class-balanced L2-regularised logistic regression on standardised features (L-BFGS, float64).

    Returns ``(feature_mean, feature_scale, weights, bias)``.
    """
    x = np.concatenate([positives, negatives])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    balance = np.r_[np.full(len(positives), len(negatives) / len(positives)), np.ones(len(negatives))]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xt, yt, bt = torch.tensor((x - mean) / scale), torch.tensor(y), torch.tensor(balance / balance.mean())
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xt @ w[:-1] + w[-1]
        loss = (bt * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).mean()
        loss = loss + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wv = w.detach().numpy()
    return mean, scale, wv[:-1], float(wv[-1])


def kept(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` at or above ``threshold`` (0 for none)."""
    return float((scores >= threshold).mean()) if len(scores) else 0.0


def fit_presence(
    detector: Detector,
    train: Sequence[Sample],
    val: Sequence[Sample],
    train_negatives: Sequence[Path],
    held_negatives: Sequence[Path],
    *,
    patches: int = 3000,
    badly_framed: int = 1500,
    upside_down: int = 1500,
    seed: int = 0,
    border_cut: float = 0.0,
    low_res: float = 0.0,
    hard: dict[str, Callable] | None = None,
    hard_views: Sequence[str] = (),
    progress: Callable[[str], None] = print,
) -> PresenceModel:
    """Fit a :class:`PresenceModel` for ``detector``'s network and score it on the held-out data.

    ``train``/``val``: the model's own split (never pass validation faces as ``train``);
    ``train_negatives``/``held_negatives``: face-free photos (:func:`~facekp.train.negatives.negative_paths`).
    ``hard``: the face detectors (by name) whose false faces on ``train_negatives`` are hard negatives,
    each framed with its own calibration (default :func:`hard_detectors`); those named in ``hard_views``
    search every :func:`negative_views` view of each photo (training and held-out) instead of the photo
    once. ``border_cut``/``low_res``:
    the shares of positives cut by their photo's border / seen at a small face's resolution
    (:func:`positive_crops`). ``stats`` of the result
    records the held-out figures.
    """
    rng = np.random.default_rng(seed)
    hard = hard_detectors() if hard is None else hard
    unknown = set(hard_views) - set(hard)
    if unknown:
        raise ValueError(f"hard_views names {sorted(unknown)}, which are not hard detectors (those are {sorted(hard)})")
    # The features need only the mean shape; standardisation and weights come from the fit below.
    k = detector.config.hourglass.num_keypoints
    blank = PresenceModel(mean_shape(train), np.zeros(k + 1), np.ones(k + 1), np.zeros(k + 1), 0.0)
    neg_train, neg_held = load_negatives(train_negatives), load_negatives(held_negatives)

    progress(f"positives: {len(train)} training faces")
    pos = crop_features(detector, blank, positive_crops(train, rng, border_cut=border_cut, low_res=low_res))
    progress(f"negatives: {patches} patches of {len(neg_train)} photos, {badly_framed} badly framed faces, "
             f"{upside_down} faces upside down")
    neg = [crop_features(detector, blank, patch_crops(neg_train, patches, rng)),
           crop_features(detector, blank, badly_framed_crops(train, badly_framed, rng)),
           crop_features(detector, blank, upside_down_crops(train, upside_down, rng))]
    hard_counts = {}
    searched = lambda name, photos: negative_views(photos) if name in hard_views else photos
    for name, fd in hard.items():
        photos = searched(name, neg_train)
        progress(f"hard negatives: {fd!r} on {len(photos)} views of {len(neg_train)} face-free photos")
        feats, _ = detect_features(detector, blank, photos, fd, resolve_calibration(detector, fd))
        neg.append(feats.reshape(-1, feats.shape[-1]))  # every framing detect may try is a negative
        hard_counts[name] = len(feats)
    mean, scale, weights, bias = fit_logistic(pos, np.concatenate(neg))
    stats = {"trained_on": {"faces": len(train), "patches": patches, "badly_framed": badly_framed,
                            "upside_down": upside_down, "hard_negatives": hard_counts, "negative_photos": len(neg_train), "seed": seed,
                            "border_cut": border_cut, "low_res": low_res, "hard_views": sorted(hard_views)}}
    model = PresenceModel(blank.mean_shape, mean, scale, weights, bias, stats)

    progress(f"held out: {len(val)} validation faces, {len(neg_held)} face-free photos")
    faces = model.probability(crop_features(detector, blank, positive_crops(val, rng, per_face=2)))
    false = {"random_patches": model.probability(crop_features(detector, blank, patch_crops(neg_held, 2000, rng))),
             "badly_framed_val_faces": model.probability(crop_features(detector, blank, badly_framed_crops(val, 1000, rng))),
             "upside_down_val_faces": model.probability(crop_features(detector, blank, upside_down_crops(val, 1000, rng)))}
    per_photo = {}
    for name, fd in {"haar_default": HaarFaceDetector(), "haar_angles_30": HaarFaceDetector(angles=(-30, 0, 30)),
                     **hard}.items():
        feats, counts = detect_features(detector, blank, searched(name, neg_held), fd, resolve_calibration(detector, fd))
        # detect keeps a false face when any of its framings clears the threshold
        false[name] = model.probability(feats.reshape(-1, feats.shape[-1])).reshape(feats.shape[:2]).max(axis=1, initial=0.0)
        per_photo[name] = counts
    thresholds = {"default": DEFAULT_MIN_PRESENCE} | {f"keep_{s}": float(np.quantile(faces, 1 - s)) for s in KEEP_SHARES}
    model.stats["held_out"] = {
        "val_faces": len(faces),
        "negative_photos": [p.name for p in held_negatives],
        "false_faces_found": {name: int(sum(c)) for name, c in per_photo.items()},
        "at": {name: {"threshold": round(t, 4), "val_faces_kept": round(kept(faces, t), 4),
                      "false_kept": {kind: round(kept(s, t), 4) for kind, s in false.items()}}
               for name, t in thresholds.items()},
    }
    return model


def manifest_with_presence(manifest: dict, name: str, model: PresenceModel | None, force: bool = False) -> dict:
    """``manifest`` with the entry ``name``'s config given ``model`` as its ``presence`` (None: only check
    that it may be); the weights file and its sha256 stay (:func:`facekp.weights.load_bundled` checks
    the rest of the config against the file's own). Replacing an existing presence model needs ``force``."""
    entry = next((m for m in manifest.get("models", []) if m["name"] == name), None)
    if entry is None:
        raise ValueError(f"no model named {name!r} in the manifest; known: {[m['name'] for m in manifest.get('models', [])]}")
    if entry["config"].get("presence") is not None and not force:
        raise FileExistsError(f"the manifest entry {name!r} already has a presence model; pass --force to replace it")
    if model is not None:
        entry["config"]["presence"] = model.to_dict()
    return manifest


def format_held_out(stats: dict) -> str:
    """The held-out figures of a fitted model's ``stats`` as a table."""
    held = stats["held_out"]
    kinds = list(next(iter(held["at"].values()))["false_kept"])
    lines = [f"held out: {held['val_faces']} validation face crops; false faces found on "
             f"{len(held['negative_photos'])} face-free photos: "
             + ", ".join(f"{k} {v}" for k, v in held["false_faces_found"].items()),
             f"{'threshold':>18s} {'faces kept':>10s} " + " ".join(f"{k:>22s}" for k in kinds)]
    for name, row in held["at"].items():
        lines.append(f"{name + ' ' + format(row['threshold'], '.3f'):>18s} {row['val_faces_kept']:>10.4f} "
                     + " ".join(f"{row['false_kept'][k]:>22.4f}" for k in kinds))
    return "\n".join(lines)
