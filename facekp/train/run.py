"""A training run folder: its settings (:class:`FitConfig`, ``fit_config.json``) and its model.

Shared by the training loop (:mod:`facekp.train.fit`) and the export (:mod:`facekp.train.export`),
so neither imports the other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import validate
from ..config import DetectorConfig
from ..model import HourglassConfig, StackedHourglass
from .checkpoint import read_checkpoint

#: Training data when --data is not given: ``$FACEKP_DATA``, else ``../shared/data/faces68`` of the
#: current directory (the project's layout, run from the repository root).
DEFAULT_DATA = Path(os.environ.get("FACEKP_DATA", Path("..") / "shared" / "data" / "faces68"))


@dataclass
class FitConfig:
    """Everything that defines a training run (saved as ``fit_config.json`` in the run folder)."""

    data: str
    out: str
    hourglass: HourglassConfig = field(default_factory=HourglassConfig)
    sigma: float = 1.0
    epochs: int = 100
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "cpu"
    checkpoint_minutes: float = 5.0
    max_steps: int | None = None  # stop early after this many optimizer steps (tests, smoke runs)
    flip: bool = True  # mirror half of the training crops (with the left/right keypoint swap)
    init: str | None = None  # start from these weights (a model file/folder) instead of random ones
    init_sha256: str | None = None  # of an --init weights file, recorded when the run starts (files get replaced)
    mirror_offsets: dict[str, float] = field(default_factory=dict)  # subset -> labels' x offset, px
    negatives: str | None = None  # face-free photos: negative crops come from its training ones
    negatives_per_batch: int = 0  # crops without a face added to each batch, taught all-zero heatmaps
    border_cut_p: float = 0.0  # share of training faces cut by their photo's border (augment.cut_at_border)

    def __post_init__(self) -> None:
        """Settings checked before any data is read or network built (``--batch-size 0`` would divide by zero)."""
        validate.sigma(self.sigma)
        validate.integer("epochs", self.epochs, 1)
        validate.integer("batch_size", self.batch_size, 1, 65536)
        validate.number("lr", self.lr, 0.0, 10.0, open_lo=True)
        validate.number("weight_decay", self.weight_decay, 0.0, 10.0)
        validate.number("warmup_epochs", self.warmup_epochs, 0.0)
        validate.number("val_fraction", self.val_fraction, 0.0, 1.0)
        validate.number("checkpoint_minutes", self.checkpoint_minutes, 0.0, open_lo=True)
        if self.max_steps is not None:
            validate.integer("max_steps", self.max_steps, 1)
        validate.integer("negatives_per_batch", self.negatives_per_batch, 0, 65536)
        validate.number("border_cut_p", self.border_cut_p, 0.0, 1.0)
        if self.negatives_per_batch and self.negatives is None:
            raise ValueError("negatives_per_batch needs a negatives folder (--negatives) to cut face-free crops from")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hourglass"] = self.hourglass.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        d = dict(d)
        d["hourglass"] = HourglassConfig.from_dict(d["hourglass"])
        return cls(**d)

    @classmethod
    def read(cls, run: str | Path) -> "FitConfig":
        """The config a run folder was trained with (its ``fit_config.json``)."""
        path = Path(run) / "fit_config.json"
        try:
            return cls.from_dict(validate.json_object(path.read_bytes(), str(path)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a facekp-train run config: {exc}") from None


#: What a resumed run may change; every other setting must be the one the run started with.
RESUMABLE_CHANGES = frozenset({"out", "epochs", "max_steps", "device", "checkpoint_minutes", "init_sha256"})
#: Files of a run folder: a fresh run never writes into a folder that holds one of them.
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "fit_config.json", "curves.png", "train.log")


def changed_settings(started: FitConfig, given: FitConfig) -> list[str]:
    """``name: started -> given`` for each setting a resumed run may not change (paths compared resolved)."""
    a, b = started.to_dict(), given.to_dict()

    def same(key: str) -> bool:
        if key in ("data", "init", "negatives") and a[key] and b[key]:
            return Path(a[key]).resolve() == Path(b[key]).resolve()
        return a[key] == b[key]

    return [f"{key}: {a[key]!r} -> {b[key]!r}" for key in a if key not in RESUMABLE_CHANGES and not same(key)]


def is_run_folder(path: str | Path) -> bool:
    """True for a folder written by :class:`Trainer` (it holds ``fit_config.json``)."""
    return (Path(path) / "fit_config.json").is_file()


def load_run(run: str | Path, checkpoint: str = "best.pt") -> tuple[StackedHourglass, DetectorConfig, FitConfig]:
    """The model of a run folder (``fit_config.json`` + ``best.pt``), ready to export."""
    run = Path(run)
    for name in ("fit_config.json", checkpoint):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a facekp-train run folder: {name} is missing")
    fit = FitConfig.read(run)
    model = StackedHourglass(fit.hourglass)
    state = read_checkpoint(run / checkpoint)
    try:
        model.load_state_dict(state["model"] if "model" in state else state)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{run / checkpoint} does not hold a {fit.hourglass} network ({str(exc).splitlines()[0]})") from None
    return model.eval(), DetectorConfig(hourglass=fit.hourglass, sigma=fit.sigma), fit


@contextmanager
def run_log(folder: Path, logger: logging.Logger, delay: bool = False) -> Iterator[None]:
    """``logger``'s records also go to ``folder/train.log`` (timestamped) while the block runs.

    ``delay``: open the file at the first record, so a run that is refused before it logs
    anything leaves no file behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "train.log", delay=delay)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
