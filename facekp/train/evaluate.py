"""Accuracy of a model on annotated faces, in the canonical 96x96 frame."""

from __future__ import annotations

import numpy as np
import torch

from ..codec import HeatmapCodec
from ..keypoints import KEYPOINT_NAMES
from ..runtime import TorchRunner, run_crops
from .augment import EVAL_PERTURBATION, MIRROR, Perturbation, make_crop
from .data import Sample


def make_eval_crops(
    samples: list[Sample], perturbation: Perturbation | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops (N, 96, 96), points (N, 15, 2) and masks (N, 15) for evaluation.

    Canonical crops when ``perturbation`` is None, else one seeded random perturbation per face.
    """
    rng = np.random.default_rng(seed)
    crops, points, masks = [], [], []
    for s in samples:
        jitter = perturbation.sample(rng) if perturbation is not None else None
        crop, pts, mask = make_crop(s.image, s.points, s.mask, s.frame, jitter)
        crops.append(crop)
        points.append(pts)
        masks.append(mask)
    return np.stack(crops), np.stack(points), np.stack(masks)


def predict_crops(
    model: torch.nn.Module, codec: HeatmapCodec, crops: np.ndarray, batch_size: int = 256, flip_test: bool = False
) -> np.ndarray:
    """(N, 15, 2) predicted points, in crop pixels, for (N, 96, 96) crops in [0, 1].

    ``model`` runs as it is (eval mode, on its device), through the same runner code as
    :class:`facekp.Detector`."""
    runner = TorchRunner(model, codec, next(model.parameters()).device, fuse=False)
    return run_crops(runner, crops, batch_size, flip_test)[0]


def keypoint_metrics(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """RMSE (Kaggle's, per coordinate, px), NME by eye-centre distance, and hit rates.

    Args:
        pred, truth: (N, 15, 2) points in the same pixel frame.
        mask: (N, 15) True where ``truth`` is labelled.
    """
    err = pred - truth
    err2 = (err**2).sum(-1)  # squared Euclidean error, (N, 15)
    m = mask.astype(bool)
    dist = np.sqrt(err2)
    eyes = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=-1)
    has_eyes = m[:, 0] & m[:, 1]
    per_face_nme = np.array(
        [dist[i, m[i]].mean() / eyes[i] for i in range(len(pred)) if has_eyes[i]]
    )
    per_kp = {
        name: float(np.sqrt(err2[m[:, k], k].mean() / 2)) if m[:, k].any() else float("nan")
        for k, name in enumerate(KEYPOINT_NAMES)
    }
    # Mean (x, y) error per keypoint: what a labelling convention different from the model's shows as.
    bias = np.array([err[m[:, k], k].mean(0) if m[:, k].any() else (0.0, 0.0) for k in range(len(KEYPOINT_NAMES))])
    return {
        "rmse": float(np.sqrt(err2[m].mean() / 2)),
        # The RMSE left once each keypoint's mean error is removed: the scatter, without the bias.
        "rmse_unbiased": float(np.sqrt((((err - bias) ** 2).sum(-1))[m].mean() / 2)),
        "per_keypoint_bias": {name: [float(v) for v in bias[k]] for k, name in enumerate(KEYPOINT_NAMES)},
        "nme": float(per_face_nme.mean()) if len(per_face_nme) else float("nan"),
        "within_1px": float((dist[m] <= 1).mean()),
        "within_2px": float((dist[m] <= 2).mean()),
        "within_3px": float((dist[m] <= 3).mean()),
        "faces": int(len(pred)),
        "per_keypoint_rmse": per_kp,
    }


def evaluate(
    model: torch.nn.Module,
    codec: HeatmapCodec,
    samples: list[Sample],
    perturbation: Perturbation | None = None,
    seed: int = 0,
    flip_test: bool = False,
) -> dict:
    """Metrics overall and per subset (``by_subset``) on canonical or perturbed crops.

    ``rmse_without_subset_bias`` pools the subsets' ``rmse_unbiased``: the RMSE if the model knew
    each annotation set's convention (its mean error per keypoint). The gap to ``rmse`` is the
    part of the error that is disagreement between the annotation sets rather than scatter.
    """
    crops, truth, mask = make_eval_crops(samples, perturbation, seed)
    pred = predict_crops(model, codec, crops, flip_test=flip_test)
    result = keypoint_metrics(pred, truth, mask)
    subsets = np.array([s.subset for s in samples])
    result["by_subset"] = {
        name: {k: v for k, v in keypoint_metrics(pred[subsets == name], truth[subsets == name], mask[subsets == name]).items() if k != "per_keypoint_rmse"}
        for name in sorted(set(subsets))
    }
    points = {name: int(mask[subsets == name].sum()) for name in result["by_subset"]}
    mse = sum(points[name] * r["rmse_unbiased"] ** 2 for name, r in result["by_subset"].items()) / max(sum(points.values()), 1)
    result["rmse_without_subset_bias"] = float(np.sqrt(mse))
    return result


def mirror_offsets(model: torch.nn.Module, codec: HeatmapCodec, samples: list[Sample]) -> dict[str, float]:
    """Each subset's systematic x offset of its labels, in canonical px (+ = image right).

    Labels placed ``b`` px right of the feature become ``b`` px left of it once the face is
    mirrored, whatever the model learned; half the change in mean x error between mirrored and
    plain crops measures ``b``. Annotation sets disagree on it (faces68: ytf 1.3, afw 1.0,
    helen 0.5 px), and flip augmentation that ignores it teaches a blur of the two.
    """
    subsets = np.array([s.subset for s in samples])
    x_error = {}
    for mirror in (None, MIRROR):
        crops, truth, mask = zip(*(make_crop(s.image, s.points, s.mask, s.frame, mirror) for s in samples))
        err = predict_crops(model, codec, np.stack(crops))[..., 0] - np.stack(truth)[..., 0]
        x_error[mirror is not None] = err, np.stack(mask)
    offsets = {}
    for name in sorted(set(subsets)):
        rows = subsets == name
        (plain, m0), (mirrored, m1) = x_error[False], x_error[True]
        offsets[name] = float((mirrored[rows][m1[rows]].mean() - plain[rows][m0[rows]].mean()) / 2)
    return offsets


#: The evaluation protocols: name -> (perturbation of the crops, seed of its draw).
CROP_PROTOCOLS: dict[str, tuple[Perturbation | None, int]] = {"canonical": (None, 0), "perturbed": (EVAL_PERTURBATION, 1)}


def evaluation_report(model, codec, samples, flip_test: bool = False) -> dict:
    """Metrics on canonical and on randomly perturbed crops (seeded), one entry per protocol."""
    return {
        name: evaluate(model, codec, samples, perturbation, seed=seed, flip_test=flip_test)
        for name, (perturbation, seed) in CROP_PROTOCOLS.items()
    }


def format_report(report: dict) -> str:
    """Markdown tables of an :func:`evaluation_report`."""
    lines = ["| crops | RMSE px | NME | <=1 px | <=2 px | <=3 px | faces |", "|---|---|---|---|---|---|---|"]
    for kind, r in report.items():
        rows = [(kind, r)] + [(f"{kind} / {name}", s) for name, s in r["by_subset"].items()]
        for label, m in rows:
            lines.append(
                f"| {label} | {m['rmse']:.3f} | {100 * m['nme']:.2f}% | {100 * m['within_1px']:.1f}% | "
                f"{100 * m['within_2px']:.1f}% | {100 * m['within_3px']:.1f}% | {m['faces']} |"
            )
    lines += ["", "| keypoint | RMSE canonical | RMSE perturbed |", "|---|---|---|"]
    for name, v in report["canonical"]["per_keypoint_rmse"].items():
        lines.append(f"| {name} | {v:.3f} | {report['perturbed']['per_keypoint_rmse'][name]:.3f} |")
    canonical = report["canonical"]
    subsets = canonical["by_subset"]
    lines += ["", "Mean error (x, y) px on canonical crops, by subset (+x = image right, +y = down):", "",
              "| keypoint | " + " | ".join(subsets) + " |", "|---" * (len(subsets) + 1) + "|"]
    for name in canonical["per_keypoint_bias"]:
        cells = (f"{r['per_keypoint_bias'][name][0]:+.2f}, {r['per_keypoint_bias'][name][1]:+.2f}" for r in subsets.values())
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Canonical RMSE {canonical['rmse']:.3f}, or {canonical['rmse_without_subset_bias']:.3f} once each subset's "
              "mean error per keypoint is removed: the difference is the annotation sets disagreeing."]
    return "\n".join(lines)
