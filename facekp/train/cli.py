"""``facekp-train``: fit, evaluate, export and submit facekp models."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..cli_parser import ArgumentParser
from ..errors import one_line
from ..model import HourglassConfig
from .run import DEFAULT_DATA

#: export writes into a repository checkout: these defaults are relative to the current directory (its root).
DOCS = Path("docs")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="facekp-train", description="Train and evaluate facekp keypoint models.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model (resumable)")
    fit.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a 68-point .pts folder or a Kaggle training.csv (default: $FACEKP_DATA, else "
                     "../shared/data/faces68 of the current directory)")
    fit.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, curves)")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    fit.add_argument("--epochs", type=int, default=120, help="passes over the training faces")
    fit.add_argument("--batch-size", type=int, default=32, help="faces per optimizer step")
    fit.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (warm-up, then cosine decay)")
    fit.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    fit.add_argument("--stacks", type=int, default=HourglassConfig.num_stacks, help="hourglass stacks")
    fit.add_argument("--depth", type=int, default=HourglassConfig.depth, help="down-sampling levels per hourglass")
    fit.add_argument("--channels", type=int, default=HourglassConfig.channels, help="feature channels")
    fit.add_argument("--stride", type=int, default=HourglassConfig.heatmap_stride, help="heatmap stride (1, 2 or 4)")
    fit.add_argument("--sigma", type=float, default=1.0, help="target Gaussian sigma, heatmap pixels")
    fit.add_argument("--val-fraction", type=_fraction, default=0.15, help="share of identities held out for validation")
    fit.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the augmentation")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    fit.add_argument("--checkpoint-minutes", type=float, default=5.0, help="also save last.pt this often within an epoch")
    fit.add_argument("--init", help="fine-tune from a run folder's best weights, a .safetensors file or a save_pretrained "
                     "folder (default: random initial weights)")
    fit.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    fit.add_argument("--mirror-offset", action="append", default=[], metavar="SUBSET=PX", type=_subset_offset,
                     help="a subset's labelling x offset (from 'eval --mirror-offsets'); mirrored crops keep it "
                          "(repeatable; default: none)")
    fit.add_argument("--max-steps", type=int, default=None,
                     help="stop after this many steps (smoke runs; default: after --epochs)")
    fit.add_argument("--negatives", type=Path, default=None,
                     help="face-free photos (e.g. ../shared/data/negatives; its held-out ones are never used) "
                          "to cut --negatives-per-batch crops from (default: none)")
    fit.add_argument("--negatives-per-batch", type=int, default=0,
                     help="crops without a face (face-free patches, badly framed faces) added to each batch and "
                          "taught all-zero heatmaps, so the points' confidence says when no face is there")
    fit.add_argument("--border-cut", type=_fraction, default=0.0, metavar="P",
                     help="share of training faces cut by their photo's border (15-45%% of the face past it, the "
                          "border's pixels repeated), as faces at the edge of a photo are (default: 0)")
    fit.set_defaults(handler=_fit)

    ev = sub.add_parser("eval", help="accuracy on the validation split (or all) of a dataset")
    ev.add_argument("--weights", required=True, help="a .safetensors file, save_pretrained folder, run folder or 'default'")
    ev.add_argument("--data", type=Path, help="default: a run folder's own data, else faces68")
    ev.add_argument("--split", choices=("val", "train", "all"), default="val", help="which faces to score")
    ev.add_argument("--val-fraction", type=_fraction, help="default: a run folder's own, else 0.15")
    ev.add_argument("--seed", type=int, help="split seed (must match training; default: a run folder's own, else 0)")
    ev.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's heatmaps")
    ev.add_argument("--mirror-offsets", action="store_true",
                    help="also measure each subset's labelling x offset (use --split train to feed 'fit --mirror-offset')")
    ev.add_argument("--json", type=Path, help="also write the metrics to this JSON file (default: none)")
    ev.add_argument("--plots", type=Path, metavar="DIR",
                    help="write val-predictions.png (a gallery) and val-errors.png (error distribution) here "
                         "(default: no plots)")
    ev.add_argument("--force", action="store_true", help="allow --json and --plots to replace existing files")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.set_defaults(handler=_eval)

    ex = sub.add_parser("export", help="ship a run's best weights in the package and the manifest")
    ex.add_argument("--run", type=Path, required=True, help="run folder written by 'fit'")
    ex.add_argument("--name", required=True, help="model name in weights_manifest.json")
    ex.add_argument("--data", type=Path, help="data for the metrics recorded in the manifest (default: the run's own)")
    ex.add_argument("--package", type=Path, default=Path("facekp"),
                    help="facekp package folder to write weights/NAME.safetensors into (default: ./facekp)")
    ex.add_argument("--manifest", type=Path, default=Path("weights_manifest.json"),
                    help="the manifest to record the model in (default: ./weights_manifest.json)")
    ex.add_argument("--model-card", type=Path,
                    help="default: docs/model-card.md for the default model, else docs/model-card-NAME.md")
    ex.add_argument("--hub-folder", type=Path,
                    help="also write config.json + model.safetensors here for a Hub upload (default: none)")
    ex.add_argument("--no-default", action="store_true", help="do not make this the default model")
    ex.add_argument("--no-onnx", action="store_true",
                    help="skip the ONNX graphs (otherwise written beside the weights: fp32, which Detector runs on "
                         "the CPU, and int8, for Detector(precision='int8'); both need the onnx extra)")
    ex.add_argument("--force", action="store_true", help="replace a packaged model of this name, its card and Hub folder")
    ex.set_defaults(handler=_export)

    pr = sub.add_parser("presence", help="fit a model's face-presence score (Face.presence) on faces and face-free crops")
    pr.add_argument("--weights", default="default", help="a run folder, save_pretrained folder, .safetensors file, "
                    "manifest model name or 'default'")
    pr.add_argument("--data", type=Path, help="default: a run folder's own data, else $FACEKP_DATA or ../shared/data/faces68")
    pr.add_argument("--val-fraction", type=_fraction, help="default: a run folder's own, else 0.15")
    pr.add_argument("--seed", type=int, help="split seed (must match training; default: a run folder's own, else 0)")
    pr.add_argument("--negatives", type=Path, default=DEFAULT_DATA.parent / "negatives",
                    help="folder of face-free photos (its held-out ones are only scored; default: beside the data)")
    where = pr.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the model with its presence entry here (config.json + model.safetensors; "
                       "default: none, one of --out and --manifest is needed)")
    where.add_argument("--manifest", type=Path, help="add the presence entry to this manifest's entry for the (manifest) "
                       "model of --weights; its weights file does not change (default: none)")
    pr.add_argument("--patches", type=int, default=3000, help="random face-free patches to train on")
    pr.add_argument("--badly-framed", type=int, default=1500, help="badly framed training faces to train on")
    pr.add_argument("--upside-down", type=int, default=1500, help="training faces turned 120-240 degrees to train on")
    pr.add_argument("--border-cut", type=_fraction, default=0.0, metavar="P",
                    help="share of the positive faces cut by their photo's border (default 0)")
    pr.add_argument("--low-res", type=_fraction, default=0.0, metavar="P",
                    help="share of the positive faces seen at the resolution of a face of 8-25 px eye distance (default 0)")
    pr.add_argument("--finder-views", action="store_true",
                    help="find the loose finder's false faces on each negative at longer sides 320, 640 and 1280 px and "
                         "the four quarter turns (as `finder --hard-negatives` mines them), not once at its own size")
    pr.add_argument("--json", type=Path, help="also write the fitted presence entry (with its held-out figures) here (default: none)")
    pr.add_argument("--force", action="store_true", help="replace existing files / an existing presence entry")
    pr.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    pr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    pr.set_defaults(handler=_presence)

    sm = sub.add_parser("submit", help="write a Kaggle submission CSV")
    sm.add_argument("--weights", default="default", help="a .safetensors file, save_pretrained folder or 'default'")
    sm.add_argument("--test", type=Path, required=True, help="Kaggle test.csv")
    sm.add_argument("--lookup", type=Path, required=True, help="Kaggle IdLookupTable.csv")
    sm.add_argument("--out", type=Path, required=True, help="submission CSV to write (must not exist)")
    sm.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sm.set_defaults(handler=_submit)

    from . import face_check, finder_export, finder_fit

    finder_fit.add_parser(sub)
    finder_export.add_parser(sub)
    face_check.add_parser(sub)
    return parser


def _fit(args) -> None:
    import torch

    from ..runtime import resolve_device
    from .distributed import process_group
    from .fit import Trainer
    from .run import FitConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    config = FitConfig(
        data=str(args.data.resolve()), out=str(args.out),
        hourglass=HourglassConfig(num_stacks=args.stacks, depth=args.depth, channels=args.channels, heatmap_stride=args.stride),
        sigma=args.sigma, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        val_fraction=args.val_fraction, seed=args.seed, device=str(resolve_device(args.device)),
        checkpoint_minutes=args.checkpoint_minutes, max_steps=args.max_steps, flip=not args.no_flip,
        mirror_offsets=dict(args.mirror_offset),
        init=None if args.init is None else str(Path(args.init).resolve()),
        negatives=None if args.negatives is None else str(args.negatives.resolve()),
        negatives_per_batch=args.negatives_per_batch, border_cut_p=args.border_cut,
    )
    with process_group(config.device) as world:  # a world of one unless started by torchrun
        Trainer(config, world=world).fit(resume=args.resume)  # rank 0 prints each epoch's record as it ends


def _load_eval_model(weights: str, device: str):
    """(model, codec) from a run folder, saved model, or 'default'."""
    from ..codec import HeatmapCodec
    from ..detector import Detector
    from ..runtime import resolve_device
    from .run import load_run

    path = Path(weights)
    if (path / "fit_config.json").exists():
        model, config, _ = load_run(path)
    else:
        det = Detector(None if weights == "default" else weights, device="cpu")
        model, config = det.model, det.config
    model = model.to(resolve_device(device)).eval()
    return model, HeatmapCodec(config.hourglass.input_size, config.hourglass.heatmap_stride, config.sigma)


def _validation_samples(args):
    """The faces ``eval`` scores: the split of a run folder's own data unless the flags say otherwise."""
    from .data import load_dataset, split_by_identity
    from .run import FitConfig, is_run_folder

    if is_run_folder(args.weights):
        fit = FitConfig.read(args.weights)
        data, val_fraction, seed = fit.data, fit.val_fraction, fit.seed
    else:
        data, val_fraction, seed = DEFAULT_DATA, 0.15, 0
    samples = load_dataset(args.data or data)
    if args.split == "all":
        return samples
    train, val = split_by_identity(samples, _given(args.val_fraction, val_fraction), _given(args.seed, seed))
    return train if args.split == "train" else val


def _given(value, default):
    return default if value is None else value


def _subset_offset(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        offset = float(value)
        if not (name and sep and math.isfinite(offset)):
            raise ValueError
        return name, offset
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SUBSET=PX with a finite PX, such as ytf=1.3; got {text!r}") from None


def _fraction(text: str) -> float:
    """A validation fraction: strictly between 0 and 1."""
    try:
        value = float(text)
        if not 0.0 < value < 1.0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive), got {text!r}") from None
    return value


PLOT_NAMES = ("val-predictions.png", "val-errors.png")


def _eval(args) -> None:
    from .. import fileio
    from .evaluate import evaluation_report, format_report, mirror_offsets
    from .plots import require_matplotlib

    # Every output is checked before any work: never over the data, the weights, or a file without --force.
    inputs = [*fileio.files_of(args.data), *fileio.files_of(args.weights if Path(args.weights).exists() else None)]
    for out in ([args.json] if args.json else []) + ([args.plots / n for n in PLOT_NAMES] if args.plots else []):
        fileio.check_output(out, inputs=inputs, overwrite=args.force)
    if args.plots:
        require_matplotlib()  # before the evaluation, not after it
    model, codec = _load_eval_model(args.weights, args.device)
    samples = _validation_samples(args)
    report = evaluation_report(model, codec, samples, args.flip_test)
    print(format_report(report))
    if args.mirror_offsets:
        report["mirror_offsets"] = mirror_offsets(model, codec, samples)
        flags = " ".join(f"--mirror-offset {k}={v:.2f}" for k, v in report["mirror_offsets"].items())
        print(f"\nLabelling x offsets by subset (px): {flags}")
    if args.json:
        fileio.write_text(args.json, json.dumps(report, indent=2), inputs=inputs, overwrite=args.force)
    if args.plots:
        _write_plots(model, codec, samples, args.plots, args.flip_test, args.force)


def _write_plots(model, codec, samples, folder: Path, flip_test: bool, overwrite: bool = False) -> None:
    import numpy as np

    from .evaluate import make_eval_crops, predict_crops
    from .plots import plot_error_distribution, plot_gallery

    folder.mkdir(parents=True, exist_ok=True)
    crops, truth, mask = make_eval_crops(samples)
    pred = predict_crops(model, codec, crops, flip_test=flip_test)
    pick = np.random.default_rng(0).choice(len(samples), size=min(32, len(samples)), replace=False)
    plot_gallery(crops[pick], pred[pick], truth[pick], mask[pick], folder / PLOT_NAMES[0], overwrite=overwrite)
    dist = np.linalg.norm(pred - truth, axis=-1)
    subsets = np.array([s.subset for s in samples])
    by_subset = {"all": dist[mask]} | {n: dist[(subsets == n)[:, None] & mask] for n in sorted(set(subsets))}
    plot_error_distribution(by_subset, folder / PLOT_NAMES[1], overwrite=overwrite)
    print(f"wrote {folder / PLOT_NAMES[0]} and {folder / PLOT_NAMES[1]}")


def _export(args) -> None:
    from ..codec import HeatmapCodec
    from .data import load_dataset, split_by_identity
    from .evaluate import evaluation_report
    from .export import export_graph, export_run, int8_calibration_crops
    from .run import load_run
    from .model_card import write_model_card

    from .. import fileio
    from .model_card import curves_path

    card = args.model_card or DOCS / ("model-card.md" if not args.no_default else f"model-card-{args.name}.md")
    for out in (Path(args.package) / "weights" / f"{args.name}.safetensors", card, curves_path(card)):
        fileio.check_output(out, overwrite=args.force)  # before any work: a refused export changes nothing
    model, config, fit = load_run(args.run)
    train, samples = split_by_identity(load_dataset(args.data or fit.data), fit.val_fraction, fit.seed)
    codec = HeatmapCodec(config.hourglass.input_size, config.hourglass.heatmap_stride, config.sigma)
    report = evaluation_report(model, codec, samples)
    flip = evaluation_report(model, codec, samples, flip_test=True)
    metrics = {
        "val_rmse": report["canonical"]["rmse"],
        "val_rmse_perturbed": report["perturbed"]["rmse"],
        "val_nme": report["canonical"]["nme"],
        "val_rmse_flip_test": flip["canonical"]["rmse"],
        "val_rmse_perturbed_flip_test": flip["perturbed"]["rmse"],
        "val_rmse_by_subset": {k: v["rmse"] for k, v in report["canonical"]["by_subset"].items()},
        "val_faces": len(samples),
    }
    entry = export_run(args.run, args.name, args.package, args.manifest, metrics, not args.no_default, args.hub_folder,
                       overwrite=args.force)
    summary = {k: entry[k] for k in ("name", "file", "sha256", "size")} | {"metrics": metrics}
    if not args.no_onnx:
        weights = Path(args.package) / "weights" / entry["file"]
        for calibration in (None, int8_calibration_crops(train, fit.seed)):
            record = export_graph(weights, args.manifest, args.name, samples, calibration, overwrite=args.force)
            key = "fp32_onnx" if calibration is None else "int8_onnx"
            entry[key] = summary[key] = record
    write_model_card(card, entry, fit, report, flip, args.run, is_default=not args.no_default, overwrite=args.force)
    print(json.dumps(summary, indent=2))


def _presence(args) -> None:
    import time
    from dataclasses import replace

    from ..calibration import default_calibration
    from ..detector import Detector
    from ..weights import CONFIG_NAME, WEIGHTS_NAME, ResolvedWeights, read_manifest, resolve_weights, save_model
    from .data import load_dataset, split_by_identity
    from .negatives import negative_paths
    from .presence import LOOSE_FINDER, fit_presence, format_held_out, manifest_with_presence
    from .run import is_run_folder, load_run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for flag in ("patches", "badly_framed", "upside_down"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.json is not None and args.json.exists() and not args.force:
        raise FileExistsError(f"{args.json} already exists; pass --force to replace it")
    if is_run_folder(args.weights):
        model, config, fit = load_run(args.weights)
        # As `export` does: the run's model frames detector boxes with the shipped Haar calibration.
        resolved = ResolvedWeights(model, replace(config, box_to_frame=default_calibration().to_dict()))
        data, val_fraction, seed = fit.data, fit.val_fraction, fit.seed
    else:
        resolved = resolve_weights(None if args.weights == "default" else args.weights)
        data, val_fraction, seed = DEFAULT_DATA, 0.15, 0
    if args.manifest is not None and resolved.entry is None:
        raise ValueError(f"--manifest needs a manifest model as --weights (a name or 'default'), got {args.weights!r}; "
                         "write a model folder with --out instead")
    # Refuse before the fit what would be refused after it.
    if args.out is not None and not args.force:
        existing = [str(args.out / n) for n in (CONFIG_NAME, WEIGHTS_NAME) if (args.out / n).exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist; pass --force to replace them")
    if args.manifest is not None:
        manifest = read_manifest(args.manifest)
        manifest_with_presence(manifest, resolved.entry.name, None, args.force)
    train, val = split_by_identity(load_dataset(args.data or data), _given(args.val_fraction, val_fraction),
                                   _given(args.seed, seed))
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    detector = Detector(resolved, device=args.device, backend="torch", precision="fp32")
    presence = fit_presence(detector, train, val, negative_paths(args.negatives, held_out=False),
                            negative_paths(args.negatives, held_out=True), patches=args.patches,
                            badly_framed=args.badly_framed, upside_down=args.upside_down, seed=_given(args.seed, seed),
                            border_cut=args.border_cut, low_res=args.low_res,
                            hard_views=(LOOSE_FINDER,) if args.finder_views else (), progress=progress)
    print(format_held_out(presence.stats))
    if args.out is not None:
        save_model(resolved.model, replace(resolved.config, presence=presence.to_dict()), args.out, overwrite=True)
        print(f"wrote {args.out}")
    else:
        manifest = manifest_with_presence(manifest, resolved.entry.name, presence, args.force)
        args.manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"added the presence model to {resolved.entry.name!r} in {args.manifest}")
    if args.json is not None:
        args.json.write_text(json.dumps(presence.to_dict(), indent=2) + "\n")


def _submit(args) -> None:
    from ..detector import Detector
    from .submit import write_submission

    det = Detector(None if args.weights == "default" else args.weights, device=args.device)
    n = write_submission(det, args.test, args.lookup, args.out)
    print(f"wrote {n} rows to {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print("facekp-train: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line, never a traceback
        print(f"facekp-train: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
