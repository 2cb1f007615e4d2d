"""Train the face check (:mod:`facekp.face_check`) and ship it: ``facekp-train face-check``.

The examples are what ``detect`` shows the face check: the candidates a face finder reports from a
loose score (:data:`CANDIDATE_SCORE`, under the weak faces' 0.15) on composed scenes of *training*
identities (:class:`~facekp.train.scenes.SceneComposer`: groups, faces down to 8 px eye distance, turned
anywhere, cut by the border, photo scenes, out-of-focus backgrounds) and on every mining view of the
training negatives (:func:`facekp.train.hard_negatives.views`) and :data:`RANDOM_VIEWS` random views of each
(:func:`~facekp.train.hard_negatives.random_views`: crops at any scale and quarter turn), each framed by the finder's
calibration into the 96x96 crop as :meth:`facekp.Detector.detect` frames it. A candidate is a face
when its box centre lies within half a scene face's eye distance of that face's keypoint centroid
(the benchmark's rule), and no face when no scene face's centroid lies within its box grown by half;
the ones between (a box on part of a face, or on several) teach nothing and are left out, and so are the
faces the keypoint network cannot read as one (:func:`readable`).

Held out, as everywhere: scenes of the validation identities on
:data:`~facekp.train.negatives.HELD_OUT_NEGATIVES`, and those negatives' views. The shipped threshold
keeps :data:`KEEP_SHARE` of the held-out faces that ``detect`` sees (finder score from 0.15) and keeps
without it (presence from 0.9 after its re-framing passes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..detector import DEFAULT_REFINE, Detector
from .. import fileio
from ..face_check import FaceCheckConfig, FaceCheckNet, face_check_onnx_bytes, network_input, save_face_check
from ..finder import WEAK_SCORE, FaceFinder
from ..geometry import box_side_centre
from ..onnx_graph import require_onnx
from ..preprocess import frame_crops
from ..presence import DEFAULT_MIN_PRESENCE, EVEN_ODDS
from ..turns import all_turns
from ..weights import put_manifest_entry, sha256_file
from .data import load_dataset, split_by_identity
from .finder_fit import box_centres
from .hard_negatives import random_views, views
from .negatives import negative_paths
from .run import DEFAULT_DATA
from .scenes import SceneComposer, SceneConfig, eye_distance, load_gray_u8

#: The finder's score from which candidates become examples: under detect's weak faces (0.15), so
#: that the check also learns the candidates just beside those detect sees.
CANDIDATE_SCORE = 0.1
#: Random views of each face-free photo beside its mining views (the false faces of photos cut from it).
RANDOM_VIEWS = 40
#: The share of held-out faces the shipped threshold keeps.
KEEP_SHARE = 0.995
#: The scenes of the training and of the held-out examples (scene photos and out-of-focus backgrounds
#: as the finder's own fine-tuning shows them).
SCENES = SceneConfig(photo_p=0.25, smooth_p=0.15)


@dataclass
class Examples:
    """Framed candidate crops ``(N, 96, 96)`` float32 in [0, 1], their labels ``(N,)`` (1: a face), the
    kind each came from (``"scenes"`` or ``"negative_views"``) and, when asked for, the presence ``detect``
    gives each after its re-framing passes (``(N,)``, else None)."""

    crops: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    presence: np.ndarray | None = None
    scores: np.ndarray | None = None  # the finder's

    @classmethod
    def join(cls, parts: Sequence["Examples"]) -> "Examples":
        joined = lambda name: None if any(getattr(p, name) is None for p in parts) else \
            np.concatenate([getattr(p, name) for p in parts])
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("crops", "labels", "kinds")),
                   joined("presence"), joined("scores"))


def label_candidates(boxes: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per box ``(N, 4)``: 1 a face of ``faces`` ``(F, 15, 2)`` (box centre within half its eye distance of its
    centroid), 0 no face (no centroid inside the box grown by half its side), -1 neither."""
    labels = np.zeros(len(boxes), np.int8)
    if not len(boxes) or not len(faces):
        return labels
    centres, sides = box_centres(boxes), box_side_centre(boxes)[0]
    centroids = faces.mean(axis=1)
    eyes = np.array([eye_distance(p) for p in faces])
    d = np.linalg.norm(centres[:, None] - centroids[None], axis=2)  # (N, F)
    inside = (np.abs(centres[:, None] - centroids[None]) <= 0.75 * sides[:, None, None]).all(axis=2)
    labels[inside.any(axis=1)] = -1
    labels[(d <= 0.5 * eyes[None]).any(axis=1)] = 1
    return labels


def candidates(finder: FaceFinder, image: np.ndarray, faces: np.ndarray, kind: str,
               detector: Detector | None = None) -> Examples:
    """The crops of every face ``finder`` reports in the uint8 ``image`` from :data:`CANDIDATE_SCORE` up, framed
    by its calibration, labelled against ``faces`` (:func:`label_candidates`; the ambiguous ones left out);
    with a ``detector``, also the presence of each after ``detect``'s re-framing passes (for a face under even
    odds there, the best of that and of ``detect``'s turns)."""
    boxes, found, angles = finder(image, min_score=CANDIDATE_SCORE)
    labels = label_candidates(boxes, faces)
    keep = labels >= 0
    transforms = np.array([finder.calibration.frame(b, a) for b, a in zip(boxes[keep], angles[keep])]).reshape(-1, 2, 3)
    gray = image.astype(np.float32) / 255
    crops = frame_crops([gray] * len(transforms), transforms)
    presence = None
    if detector is not None:
        presence = detector.presence(*detector.predict_refined(gray, transforms, DEFAULT_REFINE)) if len(crops) \
            else np.empty(0, np.float32)
        low = np.flatnonzero((labels[keep] == 1) & (presence < EVEN_ODDS))
        if len(low):  # a face framed at a wrong angle: detect's turns may still read it
            p, q = all_turns(detector, gray, transforms[low], DEFAULT_REFINE)
            turned = detector.presence(p.reshape(-1, *p.shape[2:]), q.reshape(-1, q.shape[-1])).reshape(q.shape[:2])
            presence[low] = np.maximum(presence[low], turned.max(axis=1))
    return Examples(crops, labels[keep].astype(np.float32), np.full(int(keep.sum()), kind), presence, found[keep])


def collect(finder: FaceFinder, composer: SceneComposer, scenes: int, negatives: Sequence[np.ndarray], seed: int,
            detector: Detector | None = None, random_per_negative: int = RANDOM_VIEWS,
            progress: Callable[[str], None] = print) -> Examples:
    """The examples of ``scenes`` composed scenes (seeded ``[seed, i]``) and of the face-free ``negatives``: every
    mining view of each and ``random_per_negative`` random views (:func:`~facekp.train.hard_negatives.random_views`)
    (with ``detector``: and their presence, :func:`candidates`)."""
    parts, start = [], time.time()
    for i in range(scenes):
        image, points = composer(np.random.default_rng([seed, i]))
        parts.append(candidates(finder, image, points, "scenes", detector))
        if (i + 1) % 1000 == 0 or i + 1 == scenes:
            progress(f"  {i + 1}/{scenes} scenes, {sum(len(p.labels) for p in parts)} candidates, {time.time() - start:.0f} s")
    empty = np.zeros((0, 15, 2), np.float32)
    for i, photo in enumerate(negatives):
        shown = [image for _, _, image in views(photo)]
        shown += random_views(photo, random_per_negative, np.random.default_rng([seed, 7, i]))
        parts += [candidates(finder, image, empty, "negative_views", detector) for image in shown]
    progress(f"  and {len(negatives)} negatives' views: {sum(len(p.labels) for p in parts)} candidates in all")
    return Examples.join(parts)


def readable(examples: Examples) -> Examples:
    """``examples`` without the faces the keypoint network cannot read as one (presence under even odds at every
    framing ``detect`` tries): blurred to a blob, cut to a sliver. Taught as faces, they would teach the check to
    pass blobs and slivers, which presence drops anyway."""
    keep = (examples.labels == 0) | (examples.presence >= EVEN_ODDS)
    return Examples(examples.crops[keep], examples.labels[keep], examples.kinds[keep], examples.presence[keep],
                    None if examples.scores is None else examples.scores[keep])


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standardized crops ``(B, 1, S, S)`` mirrored half of the time (a face is a face either way round),
    each reframed by a small random similarity (scale +/-10%, rotation +/-10 degrees, shift +/-4 px: another
    candidate's framing of the same thing; the border repeated, as :func:`facekp.preprocess.warp` does) and noised."""
    n, size = len(x), x.shape[-1]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)
    scale, angle = u(0.9, 1.1), torch.deg2rad(u(-10.0, 10.0))
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle) * mirror, -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle) * mirror, scale * torch.cos(angle)
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * (8.0 / size)  # +/-4 px in [-1, 1] units
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x + u(0.0, 0.2)[:, None, None, None] * torch.randn(x.shape, generator=generator)


def train_face_check(train: Examples, config: FaceCheckConfig = FaceCheckConfig(), epochs: int = 8,
                     batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                     progress: Callable[[str], None] = print) -> FaceCheckNet:
    """A :class:`FaceCheckNet` fitted on ``train``: class-balanced binary cross-entropy, AdamW, cosine learning rate."""
    if not (train.labels == 1).any() or not (train.labels == 0).any():
        raise ValueError(f"the face check needs faces and non-faces to learn from; got {int(train.labels.sum())} faces "
                         f"among {len(train.labels)} examples")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = FaceCheckNet(config)
    x, y = network_input(train.crops), torch.from_numpy(train.labels.astype(np.float32))
    positive_weight = float((y == 0).sum() / (y == 1).sum())
    steps = epochs * -(-len(y) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    for epoch in range(epochs):
        order, total, start = torch.randperm(len(y), generator=generator), 0.0, time.time()
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(augment(x[idx], generator)), y[idx],
                                                      pos_weight=torch.tensor(positive_weight))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(idx)
        progress(f"  epoch {epoch + 1}/{epochs}: loss {total / len(y):.4f}, {time.time() - start:.0f} s")
    return model.eval()


def scores(model: FaceCheckNet, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """``(N,)`` probabilities of the model for float crops in [0, 1]."""
    with torch.inference_mode():
        return np.concatenate([torch.sigmoid(model(network_input(crops[i:i + batch_size]))).numpy()
                               for i in range(0, len(crops), batch_size)] or [np.empty(0, np.float32)])


def held_out_figures(probabilities: np.ndarray, held: Examples, keep_share: float = KEEP_SHARE) -> dict:
    """Over the candidates ``detect`` sees (finder scores from :data:`~facekp.finder.WEAK_SCORE`, when ``held``
    has them): the threshold keeping ``keep_share`` of the held-out faces ``detect`` would keep (presence from
    :data:`~facekp.presence.DEFAULT_MIN_PRESENCE`, when ``held`` has presence; else of all), and what it and a
    few fixed thresholds keep: of those faces, of all faces, of the false candidates of each kind and of the false
    candidates presence would pass (the false faces ``detect`` would return)."""
    if held.scores is not None:  # the candidates detect sees: from the weak faces' score up
        seen = held.scores >= WEAK_SCORE
        probabilities, held = probabilities[seen], Examples(held.crops[seen], held.labels[seen], held.kinds[seen],
                                                           None if held.presence is None else held.presence[seen])
    face = held.labels == 1
    passes = np.ones(len(face), bool) if held.presence is None else held.presence >= DEFAULT_MIN_PRESENCE
    kept_faces = probabilities[face & passes]
    threshold = float(np.quantile(kept_faces, 1 - keep_share))
    share = lambda v, t: round(float((v >= t).mean()), 4) if len(v) else None
    rows = {}
    for name, t in {"shipped": threshold, "0.05": 0.05, "0.1": 0.1, "0.2": 0.2, "0.5": 0.5}.items():
        row = {"threshold": round(t, 4), "faces_detect_keeps_kept": share(kept_faces, t),
               "all_faces_kept": share(probabilities[face], t)}
        for kind in np.unique(held.kinds):
            false = (held.labels == 0) & (held.kinds == kind)
            row[f"false_kept_{kind}"] = share(probabilities[false], t)
            row[f"false_passing_presence_kept_{kind}"] = int((probabilities[false & passes] >= t).sum())
        rows[name] = row
    return {"threshold": threshold, "faces": int(face.sum()), "faces_detect_keeps": int(len(kept_faces)),
            "false": {str(k): int(((held.labels == 0) & (held.kinds == k)).sum()) for k in np.unique(held.kinds)},
            "false_passing_presence": {str(k): int(((held.labels == 0) & (held.kinds == k) & passes).sum())
                                       for k in np.unique(held.kinds)},
            "at": rows}


def fit_and_ship(data: Path, negatives: Path, name: str, package_dir: Path, manifest_path: Path, *, scenes: int = 16000,
                 val_scenes: int = 600, epochs: int = 8, seed: int = 0, random_views: int = RANDOM_VIEWS,
                 force: bool = False,
                 progress: Callable[[str], None] = print) -> dict:
    """Collect the examples with the bundled finder, train, choose the threshold on the held-out examples and write
    ``package_dir/weights/NAME.safetensors``, its ONNX graph ``NAME.onnx`` (needs the ``onnx`` extra) and the
    manifest's ``face_checks`` entry; returns the entry."""
    path = Path(package_dir) / "weights" / f"{name}.safetensors"
    for out in (path, path.with_suffix(".onnx")):
        fileio.check_output(out, overwrite=force)  # refused before any work
    require_onnx()  # the graph shipped beside the weights: refused now, not after the training
    train_faces, val_faces = split_by_identity(load_dataset(data), 0.15, seed=0)  # the keypoint model's split
    train_negs = [load_gray_u8(p) for p in negative_paths(negatives, held_out=False)]
    held_negs = [load_gray_u8(p) for p in negative_paths(negatives, held_out=True)]
    finder = FaceFinder(max_side=None, weak_score=None)
    progress(f"training examples: {scenes} scenes of {len(train_faces)} training faces, views of {len(train_negs)} negatives")
    detector = Detector(device="cpu", face_check=False)
    collected = collect(finder, SceneComposer(train_faces, train_negs, SCENES), scenes, train_negs, seed, detector,
                        random_views, progress)
    train = readable(collected)
    unreadable = int(collected.labels.sum() - train.labels.sum())
    progress(f"held out: {val_scenes} scenes of {len(val_faces)} validation faces, views of {len(held_negs)} negatives")
    held = collect(finder, SceneComposer(val_faces, held_negs, SCENES), val_scenes, held_negs, seed + 1,
                   detector, random_views, progress)
    progress(f"training on {int(train.labels.sum())} faces ({unreadable} unreadable ones left out) and "
             f"{int((train.labels == 0).sum())} false candidates")
    start = time.time()
    model = train_face_check(train, epochs=epochs, seed=seed, progress=progress)
    figures = held_out_figures(scores(model, held.crops), held)
    stats = {"trained_on": {"scenes": scenes, "faces": int(train.labels.sum()),
                            "unreadable_faces_left_out": unreadable, "false": int((train.labels == 0).sum()),
                            "candidate_score": CANDIDATE_SCORE, "epochs": epochs, "seed": seed,
                            "random_views_per_negative": random_views,
                            "minutes": round((time.time() - start) / 60, 1), "finder_sha256": finder_sha256()},
             "held_out": figures}
    save_face_check(model, figures["threshold"], path, stats, overwrite=force)
    graph = fileio.write_bytes(path.with_suffix(".onnx"), face_check_onnx_bytes(model), overwrite=force)
    entry = {"name": name, "file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
             "onnx": {"file": graph.name, "sha256": sha256_file(graph), "size": graph.stat().st_size},
             "threshold": round(figures["threshold"], 6), "stats": stats}
    put_manifest_entry(manifest_path, "face_checks", entry)
    return entry


def finder_sha256() -> str:
    """The sha256 of the bundled finder the examples come from."""
    from ..finder_weights import finder_entry

    return finder_entry()["sha256"]


def add_parser(sub) -> None:
    """The ``face-check`` subcommand of ``facekp-train``."""
    p = sub.add_parser("face-check", help="train the face check on the finder's candidates and ship it (package + manifest)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the 68-point .pts folder; its training identities "
                   "make the scenes (default: $FACEKP_DATA, else ../shared/data/faces68 of the current directory)")
    p.add_argument("--negatives", type=Path, default=DEFAULT_DATA.parent / "negatives",
                   help="the face-free photos; the held-out ones only measure (default: negatives beside --data's default)")
    p.add_argument("--name", default="check-c64", help="name in the manifest's face_checks (default: check-c64)")
    p.add_argument("--scenes", type=int, default=16000, help="composed training scenes (default: 16000)")
    p.add_argument("--val-scenes", type=int, default=600, help="composed held-out scenes (default: 600)")
    p.add_argument("--random-views", type=int, default=RANDOM_VIEWS,
                   help=f"random views (crops, scales, quarter turns) of each negative beside its mining views (default: {RANDOM_VIEWS})")
    p.add_argument("--epochs", type=int, default=8, help="passes over the examples (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes and the training (default: 0)")
    p.add_argument("--package", type=Path, default=Path("facekp"), help="facekp package folder (default: ./facekp)")
    p.add_argument("--manifest", type=Path, default=Path("weights_manifest.json"), help="the manifest (default: ./weights_manifest.json)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="replace an existing weights file of that name")
    p.set_defaults(handler=_run)


def _run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    entry = fit_and_ship(args.data, args.negatives, args.name, args.package, args.manifest, scenes=args.scenes,
                         val_scenes=args.val_scenes, epochs=args.epochs, seed=args.seed,
                         random_views=args.random_views, force=args.force)
    print(json.dumps({k: entry[k] for k in ("name", "file", "sha256", "size", "threshold")}
                     | {"held_out": entry["stats"]["held_out"]["at"]}, indent=2))
