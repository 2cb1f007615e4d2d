"""The training loop: masked heatmap MSE with intermediate supervision, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import fileio
from ..codec import HeatmapCodec
from ..model import StackedHourglass
from ..preprocess import network_input
from .augment import EVAL_PERTURBATION, Augmenter, cut_at_border, make_crop
from .checkpoint import read_checkpoint
from .data import Sample, load_dataset, split_by_identity
from .distributed import World
from .evaluate import evaluate
from .negative_crops import load_negatives, negative_crops
from .negatives import negative_paths
from .plots import plot_history, require_matplotlib
from .run import RESUMABLE_CHANGES, RUN_FILES, FitConfig, changed_settings, is_run_folder, load_run, run_log

log = logging.getLogger("facekp.train")


def heatmap_loss(outputs: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor,
                 visible: torch.Tensor | None = None) -> torch.Tensor:
    """MSE over visible keypoints' heatmaps, summed over stacks (intermediate supervision).

    ``visible``: the visible keypoints of the whole global batch when this is a rank's share of it
    (default: ``mask``'s); the shares' losses then add up to the global batch's.
    """
    weight = mask.to(target.dtype)[..., None, None]
    visible = (weight.sum() if visible is None else visible.to(target.dtype)).clamp_min(1.0)
    visible = visible * target.shape[-1] * target.shape[-2]
    return sum(((out - target) ** 2 * weight).sum() / visible for out in outputs)


def make_batch(
    samples: list[Sample], indices: np.ndarray, augmenter: Augmenter, codec: HeatmapCodec, seed: int, epoch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented inputs (B, 1, 96, 96), target heatmaps (B, K, h, w) and masks (B, K).

    Each sample's randomness comes from (seed, epoch, index), so a resumed run sees exactly
    the batches the interrupted one would have.
    """
    crops, points, masks = [], [], []
    for i in indices:
        rng = np.random.default_rng([seed, epoch, int(i)])
        s = samples[i]
        offset = augmenter.mirror_offsets.get(s.subset, 0.0)
        # (no draw without border cuts: the batches of runs from before the option stay as they were)
        cut = augmenter.border_cut_p and rng.random() < augmenter.border_cut_p
        image = cut_at_border(s.image, s.points, rng) if cut else s.image
        crop, pts, mask = make_crop(image, s.points, s.mask, s.frame, augmenter.transform(rng), offset)
        crops.append(augmenter.photometric(crop, rng))
        points.append(pts)
        masks.append(mask)
    x = torch.from_numpy(network_input(np.stack(crops)))
    mask = torch.from_numpy(np.stack(masks))
    return x, codec.encode(torch.from_numpy(np.stack(points)), mask), mask


def add_negatives(
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], crops: np.ndarray, augmenter: Augmenter, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` (inputs, targets, masks) with ``crops`` (N, 96, 96) appended: photometric
    augmentation, all-zero target heatmaps and every keypoint counted, so the loss teaches the
    network to place no peak where there is no face."""
    x, target, mask = batch
    neg = torch.from_numpy(network_input(np.stack([augmenter.photometric(c, rng) for c in crops])))
    n = len(crops)
    return (torch.cat([x, neg]), torch.cat([target, target.new_zeros((n, *target.shape[1:]))]),
            torch.cat([mask, mask.new_ones((n, mask.shape[1]))]))


@torch.no_grad()
def peak_height(model: StackedHourglass, x: torch.Tensor, batch_size: int = 64) -> float:
    """Mean over crops and keypoints of the last stack's heatmap maximum (the points' confidence)."""
    peaks = [model(x[i : i + batch_size])[-1].amax(dim=(-2, -1)) for i in range(0, len(x), batch_size)]
    return float(torch.cat(peaks).mean())


class Trainer:
    """Runs (or resumes) one training run in ``config.out``; ``world``: this rank of a torchrun launch
    (:mod:`facekp.train.distributed`), where ``batch_size`` is the global batch, split over the ranks."""

    def __init__(self, config: FitConfig, train: list[Sample] | None = None, val: list[Sample] | None = None,
                 world: World = World()) -> None:
        self.config = config
        self.world = world
        if config.batch_size < world.size:
            raise ValueError(f"batch size {config.batch_size} is smaller than the {world.size} ranks sharing each batch")
        self.out = Path(config.out)
        if train is None:
            train, val = split_by_identity(load_dataset(config.data), config.val_fraction, config.seed)
        self.train, self.val = train, val or []
        if not self.train:
            raise ValueError("the training split is empty")
        if not self.val:
            raise ValueError(f"the validation split is empty (val_fraction {config.val_fraction}): a run picks its "
                             "best epoch on validation faces, so it needs some")
        torch.manual_seed(config.seed)
        self.device = world.device(config.device)
        self.model = StackedHourglass(config.hourglass).to(self.device)
        self.codec = HeatmapCodec(config.hourglass.input_size, config.hourglass.heatmap_stride, config.sigma)
        if config.init is not None:
            self._load_init(config.init)
        self.net = world.wrap(self.model)  # what trains: DDP around self.model across ranks
        self.augmenter = Augmenter(flip=config.flip, mirror_offsets=config.mirror_offsets, border_cut_p=config.border_cut_p)
        self.negative_photos: list[np.ndarray] = []
        self.val_negatives: torch.Tensor | None = None  # fixed crops of held-out photos and validation faces
        if config.negatives_per_batch:
            self.negative_photos = load_negatives(negative_paths(config.negatives, held_out=False))
            held = load_negatives(negative_paths(config.negatives, held_out=True))
            crops = negative_crops(held, self.val, 256, np.random.default_rng([config.seed, 1]))
            self.val_negatives = torch.from_numpy(network_input(crops))
        self.steps_per_epoch = math.ceil(len(self.train) / config.batch_size)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total = config.epochs * self.steps_per_epoch
        warmup = max(1, int(config.warmup_epochs * self.steps_per_epoch))

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.step = 0
        self.history: list[dict] = []
        self.best_rmse = float("inf")

    def _load_init(self, weights: str) -> None:
        """Fine-tuning: take the network's weights from a run folder (its best epoch) or a saved model."""
        from ..weights import WEIGHTS_NAME, load_model, sha256_file
        if is_run_folder(weights):
            model, config = load_run(weights)[:2]
        else:
            model, config = load_model(weights)
            path = Path(weights)
            self.config.init_sha256 = sha256_file(path / WEIGHTS_NAME if path.is_dir() else path)
        if config.hourglass != self.config.hourglass:
            raise ValueError(f"--init {weights} is a {config.hourglass}, but this run trains a {self.config.hourglass}")
        self.model.load_state_dict(model.state_dict())

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self) -> None:
        if not self.world.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "history": json.dumps(self.history),
            "best_rmse": self.best_rmse,
            "config": json.dumps(self.config.to_dict()),
        }
        with fileio.atomic_path(self.checkpoint_path, overwrite=True) as tmp:  # an interrupted save never corrupts last.pt
            torch.save(state, tmp)

    def load_checkpoint(self) -> None:
        state = read_checkpoint(self.checkpoint_path, self.device)
        saved = FitConfig.from_dict(json.loads(state["config"]))
        if saved.hourglass != self.config.hourglass:
            raise ValueError(
                f"{self.checkpoint_path} holds a {saved.hourglass} model, but this run asks for {self.config.hourglass}"
            )
        changed = changed_settings(saved, self.config)
        if changed:
            raise ValueError(f"{self.checkpoint_path} was started with other settings ({'; '.join(changed)}); resume "
                             f"with the same ones (only {', '.join(sorted(RESUMABLE_CHANGES - {'out', 'init_sha256'}))} may change)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.best_rmse = float(state["best_rmse"])
        if saved.init_sha256:  # the weights the run started from, not what the --init path holds now
            self.config.init_sha256 = saved.init_sha256

    # -- the loop ----------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``epochs`` (or ``max_steps``); logs to ``train.log`` in the run folder."""
        require_matplotlib()  # for curves.png, written at the end of each epoch
        if not self.world.is_main:
            return self._fit(resume)
        with run_log(self.out, log, delay=True):  # the file opens once _fit has checked the folder
            return self._fit(resume)

    def _fit(self, resume: bool) -> list[dict]:
        cfg = self.config
        existing = [name for name in RUN_FILES if (self.out / name).exists()]
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
        elif self.checkpoint_path.exists():
            raise FileExistsError(f"{self.checkpoint_path} exists: pass --resume to continue that run, or choose another --out")
        elif existing:
            raise FileExistsError(f"{self.out} holds a run without last.pt to resume from ({', '.join(existing)}): "
                                  "choose another --out")
        self.world.agree(self.step, "the step to resume from")
        self.world.barrier()  # every rank has looked at the folder before rank 0 writes into it
        log.info("training %d faces on %d rank(s), validating on %d, config %s", len(self.train), self.world.size,
                 len(self.val), json.dumps(cfg.to_dict()))
        if self.world.is_main:
            fileio.write_text(self.out / "fit_config.json", json.dumps(cfg.to_dict(), indent=2), overwrite=True)  # the run's own
        total = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        last_save = time.monotonic()
        # A bar on rank 0's terminal only (disable=None); in a log its redrawn line would repeat.
        bar = tqdm(total=total, initial=self.step, desc="fit", unit="step", dynamic_ncols=True,
                   disable=None if self.world.is_main else True)
        while self.step < total:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.train))
            self.net.train()
            losses = []
            for b in range(pos, self.steps_per_epoch):
                if self.step >= total:
                    break
                idx, counted = self.world.shard(order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
                x, target, mask = make_batch(self.train, idx, self.augmenter, self.codec, cfg.seed, epoch)
                if cfg.negatives_per_batch:  # the global batch's negatives, drawn alike on every rank, then shared out
                    rng = np.random.default_rng([cfg.seed, epoch, b, 1])
                    crops = negative_crops(self.negative_photos, self.train, cfg.negatives_per_batch, rng)
                    own, share = self.world.shard(np.arange(len(crops)))
                    if share:
                        x, target, mask = add_negatives((x, target, mask), crops[own], self.augmenter, rng)
                mask = (mask & counted).to(self.device)
                loss = heatmap_loss(self.net(x.to(self.device)), target.to(self.device), mask, self.world.total(mask.sum()))
                self.optimizer.zero_grad(set_to_none=True)
                (loss * self.world.size).backward()  # DDP averages the ranks' gradients: this makes it their sum
                loss = self.world.total(loss.detach())
                if not torch.isfinite(loss):  # the ranks' total: every rank stops at the same step
                    raise FloatingPointError(f"the training loss became {float(loss)} at step {self.step} (epoch {epoch}); "
                                             f"lower --lr (now {cfg.lr:g}) or check the labels; {self.checkpoint_path} "
                                             "holds the last finite state")
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.2e}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                if time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_save = time.monotonic()
            if self.step % self.steps_per_epoch == 0 or self.step >= total:
                self._end_epoch(epoch, losses)
                self.save_checkpoint()
                last_save = time.monotonic()
                if self.world.is_main:  # after the checkpoint: the run stays resumable
                    plot_history(self.history, self.out / "curves.png", overwrite=True)
        bar.close()
        self.world.barrier()  # rank 0 has written the last checkpoint before any rank leaves
        return self.history

    def _end_epoch(self, epoch: int, losses: list[float]) -> None:
        if not self.world.is_main:
            return
        if self.history and self.history[-1]["epoch"] == epoch:
            # The epoch was cut short by max_steps and has now been resumed: one record for all of it.
            cut = self.history.pop()
            steps_before = cut["step"] - epoch * self.steps_per_epoch
            losses = [cut["train_loss"]] * steps_before + losses
        record = {"epoch": epoch, "step": self.step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                  "world_size": self.world.size}
        self.model.eval()
        record["val_rmse"] = evaluate(self.model, self.codec, self.val)["rmse"]
        record["val_rmse_perturbed"] = evaluate(self.model, self.codec, self.val, EVAL_PERTURBATION, seed=1)["rmse"]
        if self.val_negatives is not None:
            record["val_negative_peak"] = peak_height(self.model, self.val_negatives.to(self.device))
        if record["val_rmse"] < self.best_rmse:
            self.best_rmse = record["val_rmse"]
            with fileio.atomic_path(self.out / "best.pt", overwrite=True) as tmp:  # the run's own file
                torch.save(self.model.state_dict(), tmp)
        self.history.append(record)
        fileio.write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history), overwrite=True)
        log.info("epoch %s", record)
        tqdm.write(json.dumps(record))

