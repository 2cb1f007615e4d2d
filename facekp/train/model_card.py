"""``docs/model-card.md`` for an exported model."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import format_report
from .fit import FitConfig


def write_model_card(path: str | Path, entry: dict, fit: FitConfig, report: dict, flip: dict, run: str | Path) -> None:
    """Write the model card: what the model is, how it was trained, how well it does, the licence."""
    run = Path(run)
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").exists() else []
    h = fit.hourglass
    best = min(history, key=lambda r: r.get("val_rmse", float("inf"))) if history else {}
    text = f"""# Model card: `{entry['name']}`

facekp's default keypoint model: a {h.num_stacks}-stack hourglass ({h.channels} channels, depth {h.depth},
{h.heatmap_size}x{h.heatmap_size} heatmaps for a {h.input_size}x{h.input_size} grayscale crop), predicting the
15 Kaggle facial keypoints with DARK sub-pixel decoding.

| | |
|---|---|
| file | `facekp/weights/{entry['file']}` ({entry['size'] / 1e6:.2f} MB, safetensors) |
| sha256 | `{entry['sha256']}` |
| parameters | {_count_params(h)} |
| input | 96x96 grayscale face crop in the canonical frame, standardized per crop |
| output | 15 heatmaps per stack; the last stack's are decoded |

## Data

`faces68` (see `../shared/data/faces68/README.md`): YouTube-Faces frames (ytf), HELEN and AFW
photos with 300-W 68-point annotations, mapped to the 15 keypoints (eye centres are the means of the six
eye-contour points). Split by identity with seed {fit.seed}: {fit.val_fraction:.0%} of the identities
are held out for validation; no identity is on both sides.

## Training recipe

- Canonical frame: a rotation-free similarity puts the 15 points' centroid at (48, 48) and their RMS
  radius at 26 px (the Kaggle mean face).
- Augmentation: scale +/-20%, rotation +/-25 deg, shift +/-9 px,{" horizontal flip with left/right swap," if fit.flip else ""}
  brightness, contrast, gamma, blur, noise, occlusion patches; points leaving the crop are masked.{_init_line(fit)}
- Loss: masked MSE between heatmaps and Gaussian targets (sigma {fit.sigma} heatmap px), summed over
  the {h.num_stacks} stacks (intermediate supervision).
- AdamW (lr {fit.lr}, weight decay {fit.weight_decay}), batch {fit.batch_size}, {fit.epochs} epochs,
  {fit.warmup_epochs:g}-epoch linear warm-up then cosine decay; seed {fit.seed}; device {fit.device}.
- Best validation epoch: {best.get('epoch', '?')} (of {len(history)} logged); training wall time
  {_wall_time(run)} (first to last line of `train.log`).

Reproduce:

```
facekp-train fit --data ../shared/data/faces68 --out runs/default --epochs {fit.epochs} --lr {fit.lr} \\
    --stacks {h.num_stacks} --channels {h.channels} --depth {h.depth} --stride {h.heatmap_stride} --sigma {fit.sigma}{_extra_flags(fit)}
facekp-train export --run runs/default --name {entry['name']}
```

## Accuracy (identity-held-out validation, 96x96 frame)

RMSE is Kaggle's (root mean square over x and y coordinates, px); NME is the mean point-to-point
error divided by the eye-centre distance. Perturbed crops: scale +/-13%, rotation +/-15 deg,
shift +/-6 px, one seeded draw per face. The exported checkpoint is the epoch with the best
validation RMSE, so these figures are slightly optimistic for unseen data.

{format_report(report)}

With flip test-time augmentation: RMSE {flip['canonical']['rmse']:.3f} px canonical,
{flip['perturbed']['rmse']:.3f} px perturbed (it doubles the network cost; the default does not use it).

![training curves](training-curves.png)

## Licence and intended use

The code is MIT-licensed. The photos and annotations behind these weights (YouTube Faces, HELEN, AFW
and the 300-W re-annotation) were published for research; the weights inherit that note:
**research use only**. Faces in the training data are mostly frontal to moderately turned adults;
expect larger errors on profiles, heavy occlusion, infants and very low resolution.
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if (run / "curves.png").exists():
        (path.parent / "training-curves.png").write_bytes((run / "curves.png").read_bytes())


def _init_line(fit: FitConfig) -> str:
    if fit.init is None:
        return ""
    return (f"\n- Fine-tuned: the run starts from the weights `{Path(fit.init).name}` (`--init`) rather than"
            " from random ones.")


def _extra_flags(fit: FitConfig) -> str:
    flags = ([] if fit.flip else ["--no-flip"]) + ([] if fit.init is None else [f"--init {Path(fit.init).name}"])
    return (" \\\n    " + " ".join(flags)) if flags else ""


def _wall_time(run: Path) -> str:
    """Time from the first to the last line of the run's ``train.log``, as "N min"."""
    from datetime import datetime

    log = run / "train.log"
    stamps = []
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                stamps.append(datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            except ValueError:
                continue
    if len(stamps) < 2:
        return "unknown"
    return f"{(stamps[-1] - stamps[0]).total_seconds() / 60:.0f} min"


def _count_params(h) -> str:
    from ..model import StackedHourglass

    n = sum(p.numel() for p in StackedHourglass(h).parameters())
    return f"{n / 1e6:.2f} M"
