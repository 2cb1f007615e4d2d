"""Training the face finder on composed scenes: targets, loss, a resumable loop with curves.

Targets follow CenterNet (Zhou et al., 2019) on three levels: a face of side ``s`` belongs to
one level (:data:`facekp.finder_model.LEVEL_SIDES`); there its score target is a Gaussian
around the centre cell (1 at the centre) and the cells near the centre regress the centre
offset, the log side and the angle's (cos, sin). The score loss is CenterNet's
penalty-reduced focal loss, the rest smooth-L1, both per face.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..calibration import BoxCalibration
from ..finder import FINDER_NAME, FaceFinder, decode
from ..finder_model import BOX_PER_RMS, LEVEL_SIDES, STRIDES, FaceFinderNet, FinderConfig, normalize
from ..finder_weights import load_finder_file
from ..geometry import face_angle, face_geometry
from ..weights import sha256_file
from .data import Sample, load_dataset, split_by_identity
from .hard_negatives import HardNegative, HardNegativeCrops, load_hard_negatives, mine, save_hard_negatives
from .negatives import negative_paths
from .run import DEFAULT_DATA, run_log
from .scenes import SceneComposer, SceneConfig, eye_distance, load_gray_u8

log = logging.getLogger("facekp.train")

#: Cells whose score target is at least this regress the face's geometry.
REGRESS_FLOOR = 0.3


@dataclass
class FinderFitConfig:
    """Everything that defines a finder training run (``fit_config.json`` in the run folder)."""

    data: str
    negatives: str
    out: str
    model: FinderConfig = field(default_factory=FinderConfig)
    scene_size: int = 256
    batch_size: int = 16
    steps: int = 4000  # length of the learning-rate schedule, and of the run
    minutes: float | None = None  # stop after this much training time (the schedule then runs on time)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    val_fraction: float = 0.15  # the keypoint model's split: validation identities never reach a scene
    seed: int = 0
    val_scenes: int = 64
    eval_every: int = 200
    checkpoint_minutes: float = 4.0
    photo_scenes: float = 0.0  # share of scenes that are one annotated photo, turned (SceneConfig.photo_p)
    hard_negatives: float = 0.0  # share of backgrounds cut around the init finder's false faces on training negatives
    smooth_backgrounds: float = 0.0  # share of backgrounds out of focus (SceneConfig.smooth_p)
    init: str | None = None  # fine-tune from these weights (a finder .safetensors file or run folder)
    init_sha256: str | None = None  # of the file the weights came from

    def scene_config(self, hard_negatives: bool = True) -> SceneConfig:
        """The training scenes' settings (without their hard-negative backgrounds: the scenes that
        measure the finder, validation and threshold choice, whose false faces show what mining taught)."""
        return SceneConfig(size=self.scene_size, photo_p=self.photo_scenes, smooth_p=self.smooth_backgrounds,
                           hard_negative_p=self.hard_negatives if hard_negatives else 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FinderFitConfig":
        d = dict(d)
        d["model"] = FinderConfig.from_dict(d["model"])
        return cls(**d)


#: Settings a resumed run may change.
RESUMABLE = frozenset({"out", "steps", "minutes", "checkpoint_minutes", "eval_every"})


def load_finder_run(run: str | Path, checkpoint: str = "best.pt") -> tuple[FaceFinderNet, FinderFitConfig]:
    """The network of a finder run folder (``fit_config.json`` + ``best.pt`` or ``last.pt``)."""
    run = Path(run)
    for name in ("fit_config.json", checkpoint):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a finder run folder: {name} is missing")
    config = FinderFitConfig.from_dict(json.loads((run / "fit_config.json").read_text()))
    model = FaceFinderNet(config.model)
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval(), config


def face_geometry_targets(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """What the finder learns to predict for a face with these 15 keypoints (x, y image pixels):
    the centre (their centroid), the box side (:data:`~facekp.finder_model.BOX_PER_RMS` RMS radii, px)
    and the in-plane angle in degrees (:func:`facekp.geometry.face_angle`)."""
    centre, rms = face_geometry(points)
    return centre, BOX_PER_RMS * rms, face_angle(points)


def encode_targets(points: list[np.ndarray], size: int, strides=STRIDES) -> list[np.ndarray]:
    """Per level a ``(7, size/s, size/s)`` float32 target: score, dx, dy, log side, cos, sin and
    the regression weight, for one scene whose faces have keypoints ``points`` (N, 15, 2)."""
    out = []
    for stride in strides:
        n = -(-size // stride)
        out.append(np.zeros((7, n, n), np.float32))
    for pts in points:
        centre, side, angle = face_geometry_targets(pts)
        level = next((k for k, s in enumerate(strides) if side < LEVEL_SIDES * s), len(strides) - 1)
        stride, t = strides[level], out[level]
        n = t.shape[1]
        gx, gy = (centre + 0.5) / stride - 0.5
        ci, cj = int(round(gy)), int(round(gx))
        if not (0 <= ci < n and 0 <= cj < n):
            continue  # centre outside the scene: nothing to find there
        yy, xx = np.mgrid[0:n, 0:n]
        sigma = max(0.5, 0.12 * side / stride)
        g = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sigma**2)).astype(np.float32)
        g[ci, cj] = 1.0
        stronger = g > t[0]
        t[0] = np.maximum(t[0], g)
        own = stronger & (g >= REGRESS_FLOOR)
        a = np.radians(angle)
        for k, v in enumerate((gx - xx, gy - yy, np.full_like(g, np.log(side / stride)),
                               np.full_like(g, np.cos(a)), np.full_like(g, np.sin(a))), start=1):
            t[k][own] = v[own]
        t[6][own] = g[own]
    return out


def finder_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Focal score loss + smooth-L1 geometry, both divided by the number of faces."""
    faces = sum(float((t[:, 0] == 1).sum()) for t in targets)
    norm = max(faces, 1.0)
    score = geometry = 0.0
    for out, t in zip(outputs, targets):
        logit, y = out[:, 0], t[:, 0]
        p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
        pos = (y == 1).float()
        score = score + (-(1 - p) ** 2 * torch.log(p) * pos
                         - p**2 * torch.log(1 - p) * (1 - y) ** 4 * (1 - pos)).sum()
        w = t[:, 6]
        reg = F.smooth_l1_loss(out[:, 1:6], t[:, 1:6], reduction="none", beta=0.1).sum(1)
        geometry = geometry + (reg * w).sum()
    score, geometry = score / norm, geometry / norm
    return score + geometry, {"score": float(score.detach()), "geometry": float(geometry.detach())}


def make_batch(composer: SceneComposer, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, list[torch.Tensor], list]:
    """Inputs (B, 1, S, S), per-level targets (B, 7, h, w) and each scene's face keypoints for
    training step ``step``; the scenes depend only on (seed, step, position), so a resumed run
    sees the batches the interrupted one would have."""
    images, targets, faces = [], [], []
    for i in range(batch_size):
        image, pts = composer(np.random.default_rng([seed, step, i]))
        images.append(image)
        targets.append(encode_targets(list(pts), composer.config.size))
        faces.append(pts)
    x = torch.from_numpy(normalize(np.stack(images)))[:, None]
    levels = [torch.from_numpy(np.stack([t[k] for t in targets])) for k in range(len(STRIDES))]
    return x, levels, faces


def match_centres(centres: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's rule: a face (its (15, 2) keypoints) is found when one of ``centres`` (M, 2)
    lies within half its eye distance of its keypoint centroid. Returns, for each face, whether it
    was found, and for each centre, whether it found a face (else it is a false face)."""
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    near = np.zeros((len(faces), len(centres)), bool)
    for k, pts in enumerate(faces):
        near[k] = np.linalg.norm(centres - pts.mean(axis=0), axis=1) <= 0.5 * eye_distance(pts)
    return near.any(axis=1), near.any(axis=0)


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """``(N, 2)`` centres of ``(N, 4)`` boxes ``x0, y0, x1, y1``."""
    return 0.5 * (boxes[:, :2] + boxes[:, 2:])


class FinderTrainer:
    """Runs (or resumes) one face-finder training run in ``config.out``."""

    def __init__(self, config: FinderFitConfig, train: list[Sample] | None = None, val: list[Sample] | None = None,
                 backgrounds: list[np.ndarray] | None = None, val_backgrounds: list[np.ndarray] | None = None) -> None:
        if config.hard_negatives and config.init is None:
            raise ValueError("hard negatives are the false faces of the finder a run starts from: give --init")
        self.config = config
        self.out = Path(config.out)
        if train is None or val is None:
            train, val = split_by_identity(load_dataset(config.data), config.val_fraction, config.seed)
        if backgrounds is None or val_backgrounds is None:
            backgrounds = [load_gray_u8(p) for p in negative_paths(config.negatives, held_out=False)]
            val_backgrounds = [load_gray_u8(p) for p in negative_paths(config.negatives, held_out=True)]
        torch.manual_seed(config.seed)
        self.model = FaceFinderNet(config.model)
        if config.init is not None:
            self._load_init(config.init)
        self.hard_negatives = self._hard_negatives(backgrounds) if config.hard_negatives else None
        crops = HardNegativeCrops(backgrounds, self.hard_negatives) if self.hard_negatives else None
        self.composer = SceneComposer(train, backgrounds, config.scene_config(), crops)
        self.val_composer = SceneComposer(val, val_backgrounds, config.scene_config(hard_negatives=False))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.best = -float("inf")
        self._val = None

    def _load_init(self, weights: str) -> None:
        """Fine-tuning: the network's weights from a finder run folder (its best checkpoint) or a
        finder ``.safetensors`` file (:func:`facekp.finder_weights.save_finder`)."""
        path = Path(weights)
        if path.is_dir():
            model, _ = load_finder_run(path)
            source = path / "best.pt"
        else:
            model = load_finder_file(path).model
            source = path
        if model.config != self.config.model:
            raise ValueError(f"--init {weights} is a finder of widths {model.config}, but this run trains {self.config.model}")
        self.model.load_state_dict(model.state_dict())
        self.config.init_sha256 = sha256_file(source)  # a resumed run checks the file is still the one it started from

    @property
    def hard_negatives_path(self) -> Path:
        return self.out / "hard_negatives.json"

    def _hard_negatives(self, backgrounds: list[np.ndarray]) -> list[HardNegative]:
        """The false faces the initial network reports on the training negatives: mined now, or those
        of the run being resumed (its ``hard_negatives.json``)."""
        if self.hard_negatives_path.exists():
            return load_hard_negatives(self.hard_negatives_path)
        calibration = BoxCalibration(1.0, (0.0, 0.0), FINDER_NAME)  # mining uses the boxes only
        finder = FaceFinder(self.model, calibration, max_side=None, weak_score=None)
        return mine(finder, backgrounds)

    # -- schedule ----------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done: by steps, or by training time when ``minutes`` is set."""
        cfg = self.config
        by_steps = self.step / max(1, cfg.steps)
        if cfg.minutes is None:
            return by_steps
        return max(by_steps, self.train_seconds / (60.0 * cfg.minutes))

    def lr(self) -> float:
        cfg = self.config
        if self.step < cfg.warmup_steps:
            return cfg.lr * (self.step + 1) / cfg.warmup_steps
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, self.progress())))

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "train_seconds": self.train_seconds, "history": json.dumps(self.history), "best": self.best,
                 "config": json.dumps(self.config.to_dict())}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # atomic: an interrupted save never corrupts last.pt

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved = FinderFitConfig.from_dict(json.loads(state["config"])).to_dict()  # settings added since: their defaults
        given = self.config.to_dict()
        changed = [f"{k}: {saved[k]!r} -> {given[k]!r}" for k in given
                   if k not in RESUMABLE and saved.get(k) != given[k] and k not in ("data", "negatives")]
        changed += [f"{k}: {saved[k]!r} -> {given[k]!r}" for k in ("data", "negatives")
                    if Path(saved[k]).resolve() != Path(given[k]).resolve()]
        if changed:
            raise ValueError(f"{self.checkpoint_path} was started with other settings ({'; '.join(changed)}); "
                             f"resume with the same ones (only {', '.join(sorted(RESUMABLE - {'out'}))} may change)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.history = json.loads(state["history"])
        self.best = float(state["best"])

    # -- the loop ----------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``steps`` (or ``minutes``); log in ``train.log``, curves in ``curves.png``."""
        with run_log(self.out, log):
            return self._fit(resume)

    def _fit(self, resume: bool) -> list[dict]:
        cfg = self.config
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
        elif self.checkpoint_path.exists() or (self.out / "fit_config.json").exists():
            raise FileExistsError(f"{self.out} holds a finder run: pass --resume to continue it, or choose another --out")
        (self.out / "fit_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if self.hard_negatives:
            if not self.hard_negatives_path.exists():
                save_hard_negatives(self.hard_negatives, self.hard_negatives_path)
            log.info("hard negatives: %d false faces of the initial finder on %d training negatives (scores %s: "
                     "min, median, 90th percentile, max)", len(self.hard_negatives), len(self.composer.backgrounds),
                     np.round(np.percentile([h.score for h in self.hard_negatives], [0, 50, 90, 100]), 2).tolist())
        log.info("finder: %d training faces, %d validation faces, %d parameters, config %s", len(self.composer.faces),
                 len(self.val_composer.faces), sum(p.numel() for p in self.model.parameters()), json.dumps(cfg.to_dict()))
        last_save = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="finder", unit="step", dynamic_ncols=True, mininterval=10)
        losses: list[float] = []
        while self.step < cfg.steps and self.progress() < 1.0:
            started = time.monotonic()
            x, targets, _ = make_batch(self.composer, cfg.seed, self.step, cfg.batch_size)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr()
            self.model.train()
            loss, _ = finder_loss(self.model(x), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            self.train_seconds += time.monotonic() - started
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", lr=f"{self.lr():.1e}")
            done = self.step >= cfg.steps or self.progress() >= 1.0
            if self.step % cfg.eval_every == 0 or done:
                self._evaluate(losses)
                losses = []
                self.save_checkpoint()
                last_save = time.monotonic()
            elif time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                last_save = time.monotonic()
        bar.close()
        return self.history

    def validation_batches(self) -> list:
        """Fixed validation scenes (validation identities on held-out negatives), composed once."""
        if self._val is None:
            cfg = self.config
            self._val = [make_batch(self.val_composer, cfg.seed + 10_000, b, cfg.batch_size)
                         for b in range(math.ceil(cfg.val_scenes / cfg.batch_size))]
        return self._val

    def _evaluate(self, losses: list[float]) -> None:
        self.model.eval()
        val_loss, found, faces, false, scenes = [], 0, 0, 0, 0
        with torch.no_grad():
            for x, targets, batch_faces in self.validation_batches():
                out = self.model(x)
                val_loss.append(float(finder_loss(out, targets)[0]))
                for k, pts in enumerate(batch_faces):
                    boxes, _, _ = decode([o[k].numpy() for o in out], STRIDES, 0.5)
                    hit, true = match_centres(box_centres(boxes), pts)
                    found += int(hit.sum())
                    faces += len(pts)
                    false += int((~true).sum())
                    scenes += 1
        record = {"step": self.step, "minutes": round(self.train_seconds / 60, 2),
                  "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_loss": float(np.mean(val_loss)),
                  "val_recall": found / max(faces, 1), "val_false_per_scene": false / max(scenes, 1), "lr": self.lr()}
        quality = record["val_recall"] - record["val_false_per_scene"] / 10
        if quality > self.best:
            self.best = quality
            torch.save(self.model.state_dict(), self.out / "best.pt")
        self.history.append(record)
        tmp = self.out / "log.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        tmp.replace(self.out / "log.jsonl")
        log.info("eval %s", json.dumps(record))
        tqdm.write(json.dumps(record))
        plot_finder_history(self.history, self.out / "curves.png")


def plot_finder_history(history: list[dict], path: Path) -> None:
    """Losses, validation recall and false faces per scene against training steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, [h["train_loss"] for h in history], label="train")
    ax1.plot(steps, [h["val_loss"] for h in history], label="validation scenes")
    ax1.set_yscale("log")
    ax1.set_title("focal score + box/angle loss")
    ax1.legend()
    ax2.plot(steps, [h["val_recall"] for h in history], label="recall (score >= 0.5)")
    ax2.plot(steps, [h["val_false_per_scene"] for h in history], label="false faces per scene")
    ax2.set_title("validation scenes")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- facekp-train finder ----------------------------------------------------------------
def add_parser(sub) -> None:
    """The ``finder`` subcommand of ``facekp-train``."""
    p = sub.add_parser("finder", help="train the face finder on composed scenes (resumable)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="faces68-style .pts folder (training identities are used)")
    p.add_argument("--negatives", type=Path, default=DEFAULT_DATA.parent / "negatives", help="face-free photos")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, curves)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=int, default=FinderFitConfig.steps, help="training steps")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time (schedule by time; default: no limit)")
    p.add_argument("--batch-size", type=int, default=FinderFitConfig.batch_size, help="scenes per step")
    p.add_argument("--scene-size", type=int, default=FinderFitConfig.scene_size, help="scene side in pixels")
    p.add_argument("--lr", type=float, default=FinderFitConfig.lr, help="peak learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="split and scene seed (0: the keypoint model's split)")
    p.add_argument("--val-fraction", type=float, default=FinderFitConfig.val_fraction, help="identities held out for validation")
    p.add_argument("--eval-every", type=int, default=FinderFitConfig.eval_every, help="steps between validations")
    p.add_argument("--checkpoint-minutes", type=float, default=FinderFitConfig.checkpoint_minutes, help="minutes between checkpoints")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--photo-scenes", type=float, default=FinderFitConfig.photo_scenes, metavar="P",
                   help="share of scenes that are one annotated photo, cut near its face and turned (edge pixels "
                        "repeated or a flat colour around it), instead of faces pasted on a background")
    p.add_argument("--hard-negatives", type=float, default=FinderFitConfig.hard_negatives, metavar="P",
                   help="share of backgrounds cut around the false faces the --init finder reports on the training "
                        "negatives (mined at the start, kept in the run folder's hard_negatives.json)")
    p.add_argument("--smooth-backgrounds", type=float, default=FinderFitConfig.smooth_backgrounds, metavar="P",
                   help="share of backgrounds out of focus, as behind a portrait: a wallpaper blurred hard, or "
                        "smooth random tones")
    p.add_argument("--init", type=Path, help="fine-tune from a finder .safetensors file (such as the bundled "
                   "facekp/weights/finder-s8.safetensors) or a finder run folder (default: random initial weights)")
    p.set_defaults(handler=_run)


def _run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 < args.val_fraction < 1.0:
        raise SystemExit(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    for flag, value in (("--photo-scenes", args.photo_scenes), ("--hard-negatives", args.hard_negatives),
                        ("--smooth-backgrounds", args.smooth_backgrounds)):
        if not 0.0 <= value <= 1.0:
            raise SystemExit(f"{flag} must lie in [0, 1], got {value}")
    config = FinderFitConfig(data=str(args.data), negatives=str(args.negatives), out=str(args.out),
                             scene_size=args.scene_size, batch_size=args.batch_size, steps=args.steps,
                             minutes=args.minutes, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                             eval_every=args.eval_every, checkpoint_minutes=args.checkpoint_minutes,
                             photo_scenes=args.photo_scenes, hard_negatives=args.hard_negatives,
                             smooth_backgrounds=args.smooth_backgrounds,
                             init=None if args.init is None else str(args.init.resolve()))
    history = FinderTrainer(config).fit(resume=args.resume)
    if history:
        print(json.dumps(history[-1]))
