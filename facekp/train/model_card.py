"""``docs/model-card.md`` for an exported model."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from .evaluate import format_report
from .. import fileio
from .run import FitConfig, is_run_folder
from .plots import plot_history


def write_model_card(
    path: str | Path, entry: dict, fit: FitConfig, report: dict, flip: dict, run: str | Path, is_default: bool = True,
    overwrite: bool = False,
) -> None:
    """Write the model card: what the model is, how it was trained, how well it does, the licence.

    The training curves go beside it (:func:`curves_path`). Existing files are replaced only with
    ``overwrite``.
    """
    path, run = Path(path), Path(run)
    h = fit.hourglass
    stages = _stages(fit, run)
    text = f"""# Model card: `{entry['name']}`

{"facekp's default keypoint model" if is_default else "A facekp keypoint model"}: a {h.num_stacks}-stack hourglass ({h.channels} channels, depth {h.depth},
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
- Augmentation: scale +/-20%, rotation +/-25 deg, shift +/-9 px, brightness, contrast, gamma, blur,
  noise, occlusion patches; points leaving the crop are masked. Stages with flips also mirror half of
  the crops, swapping left and right keypoints; `--mirror-offset` gives each subset's labelling x
  offset (measured by `facekp-train eval --split train --mirror-offsets`), which mirrored crops keep.
- Loss: masked MSE between heatmaps and Gaussian targets (sigma {fit.sigma} heatmap px), summed over
  the {h.num_stacks} stacks (intermediate supervision).
- AdamW (weight decay {fit.weight_decay}), batch {fit.batch_size}, {fit.warmup_epochs:g}-epoch linear warm-up then
  cosine decay; seed {fit.seed}; device {fit.device}. Each stage after the first starts from the previous
  stage's best epoch (`--init`); the exported weights are the last stage's best epoch.

{_stage_table(stages)}
{_starting_weights(stages)}
Training wall time is the first to last line of each run's `train.log`.{_notes_link(path)} Reproduce:

```
{_reproduce(stages, entry['name'])}
```

## Accuracy (identity-held-out validation, 96x96 frame)

RMSE is Kaggle's (root mean square over x and y coordinates, px); NME is the mean point-to-point
error divided by the eye-centre distance. Perturbed crops: scale +/-13%, rotation +/-15 deg,
shift +/-6 px, one seeded draw per face. The exported checkpoint is the epoch with the best
validation RMSE, so these figures are slightly optimistic for unseen data.

{format_report(report)}

With flip test-time augmentation: RMSE {flip['canonical']['rmse']:.3f} px canonical,
{flip['perturbed']['rmse']:.3f} px perturbed (it doubles the network cost; the default does not use it).
{_onnx_lines(entry)}

![training curves]({curves_path(path).name})

## Licence and intended use

The code is MIT-licensed. The photos and annotations behind these weights (YouTube Faces, HELEN, AFW
and the 300-W re-annotation) were published for research; the weights inherit that note:
**research use only**. Faces in the training data are mostly frontal to moderately turned adults;
expect larger errors on profiles, heavy occlusion, infants and very low resolution.
"""
    fileio.write_text(path, text, overwrite=overwrite)
    histories = [_history(r) for _, r in stages]
    if all(histories):
        starts, combined = [], []
        for history in histories:
            starts.append(len(combined))
            combined += [{**h, "epoch": len(combined) + i} for i, h in enumerate(history)]
        plot_history(combined, curves_path(path), stage_starts=starts[1:], overwrite=overwrite)


def curves_path(card: Path) -> Path:
    """The training-curves picture of a model card: model-card[-NAME].md -> training-curves[-NAME].png."""
    name = card.stem.replace("model-card", "training-curves", 1) if "model-card" in card.stem else f"{card.stem}-curves"
    return card.with_name(f"{name}.png")


def _notes_link(card: Path) -> str:
    """A pointer to hand-written training notes (``training-notes.md`` beside the card), if any."""
    return " Why the stages are as they are: [training-notes.md](training-notes.md)." if (Path(card).parent / "training-notes.md").exists() else ""


def _onnx_lines(entry: dict) -> str:
    """The card's lines on the ONNX graphs bundled with the model (none without them)."""
    lines = ""
    fp32, int8 = entry.get("fp32_onnx"), entry.get("int8_onnx")
    if fp32:
        m = fp32["metrics"]
        lines += (f"\nThe fp32 ONNX graph `facekp/weights/{fp32['file']}` ({fp32['size'] / 1e6:.2f} MB; what `Detector` "
                  f"runs on the CPU, with onnxruntime): RMSE {m['val_rmse']:.3f} px canonical, "
                  f"{m['val_rmse_perturbed']:.3f} px perturbed.")
    if int8:
        m = int8["metrics"]
        lines += (f"\nThe int8 ONNX graph `facekp/weights/{int8['file']}` ({int8['size'] / 1e6:.2f} MB, "
                  f"`Detector(precision=\"int8\")`, calibrated on perturbed crops of {int8['calibration_faces']} training "
                  "faces, each activation range the mean of the faces' own ranges, 7-bit weights): RMSE "
                  f"{m['val_rmse']:.3f} px canonical, {m['val_rmse_perturbed']:.3f} px perturbed.")
    return lines


def _stages(fit: FitConfig, run: Path) -> list[tuple[FitConfig, Path]]:
    """The chain of runs that made ``run``, first stage first, following ``--init`` run folders."""
    stages = [(fit, run)]
    while stages[0][0].init is not None and is_run_folder(stages[0][0].init) and len(stages) < 10:
        parent = Path(stages[0][0].init)
        stages.insert(0, (FitConfig.read(parent), parent))
    return stages


def _history(run: Path) -> list[dict]:
    log = run / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _stage_table(stages: list[tuple[FitConfig, Path]]) -> str:
    rows = ["| stage | run | epochs | lr | flips | mirror offsets (px) | face-free crops per batch | best epoch | "
            "its val RMSE in training, canonical / perturbed | wall time |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (fit, run) in enumerate(stages, 1):
        history = _history(run)
        best = min(history, key=lambda r: r.get("val_rmse", float("inf"))) if history else {}
        offsets = ", ".join(f"{k} {v:+.2f}" for k, v in fit.mirror_offsets.items()) if fit.flip else ""
        rmse = f"{best['val_rmse']:.3f} / {best['val_rmse_perturbed']:.3f}" if "val_rmse" in best else "?"
        rows.append(f"| {i} | `runs/{run.name}` | {fit.epochs} | {fit.lr:g} | {'yes' if fit.flip else 'no'} | "
                    f"{offsets or '-'} | {fit.negatives_per_batch or '-'} | {best.get('epoch', '?')} | {rmse} | {_wall_time(run)} |")
    return "\n".join(rows)


def _starting_weights(stages: list[tuple[FitConfig, Path]]) -> str:
    """Where the first stage started when that was a weights file rather than random weights or a run."""
    fit = stages[0][0]
    if fit.init is None or is_run_folder(fit.init):
        return ""
    digest = f" (sha256 `{fit.init_sha256}`)" if fit.init_sha256 else ""
    return f"\nStage 1 starts from the weights `{Path(fit.init).name}`{digest}.\n"


#: fit flags the reproduce command gives only when the run did not use the default.
_OPTIONAL_FLAGS = {"--batch-size": "batch_size", "--weight-decay": "weight_decay", "--val-fraction": "val_fraction", "--seed": "seed"}
_FIT_DEFAULTS = {f.name: f.default for f in fields(FitConfig)}


def _reproduce(stages: list[tuple[FitConfig, Path]], name: str) -> str:
    commands = []
    for fit, run in stages:
        h = fit.hourglass
        flags = [f"--epochs {fit.epochs} --lr {fit.lr:g}",
                 f"--stacks {h.num_stacks} --channels {h.channels} --depth {h.depth} --stride {h.heatmap_stride} --sigma {fit.sigma:g}"]
        extra = [f"{flag} {getattr(fit, name):g}" for flag, name in _OPTIONAL_FLAGS.items()
                 if getattr(fit, name) != _FIT_DEFAULTS[name]]
        extra += [] if fit.flip else ["--no-flip"]
        extra += [f"--mirror-offset {k}={v:g}" for k, v in fit.mirror_offsets.items()] if fit.flip else []
        if fit.negatives_per_batch:
            extra.append(f"--negatives ../shared/data/negatives --negatives-per-batch {fit.negatives_per_batch}")
        if fit.border_cut_p:
            extra.append(f"--border-cut {fit.border_cut_p:g}")
        if fit.init is not None:
            extra.append(f"--init runs/{Path(fit.init).name}" if is_run_folder(fit.init) else f"--init {Path(fit.init).name}")
        if extra:
            flags.append(" ".join(extra))
        data = "../shared/data/faces68" if Path(fit.data).name == "faces68" else Path(fit.data).name
        commands.append(f"facekp-train fit --data {data} --out runs/{run.name} \\\n    " + " \\\n    ".join(flags))
    commands.append(f"facekp-train export --run runs/{stages[-1][1].name} --name {name}")
    return "\n".join(commands)


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
