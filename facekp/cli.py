"""The ``facekp`` command line: keypoints of face crops from the shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__, fileio
from .batch import add_batch_arguments, run_batch
from .cli_parser import ArgumentParser
from .errors import FacekpError, one_line
from .face_detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS
from .images import IMAGE_SUFFIXES, folder_photos
from .keypoints import KEYPOINT_NAMES
from .results import keypoints_to_dict


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="facekp", description="Find 15 facial keypoints on faces.")
    parser.add_argument("--version", action="version", version=f"facekp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="keypoints of face crops (one face filling each image)")
    p.add_argument("images", nargs="+", type=Path, help="face crop image files")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--draw", type=Path, metavar="OUT.png", help="save the image with the points drawn "
                   "(with several images: OUT_<image name>.png; default: no drawing)")
    p.add_argument("--names", action="store_true", help="with --draw, label each point")
    p.add_argument("--force", action="store_true", help="allow --draw to replace existing files")
    _add_model_args(p)
    p.set_defaults(run=_predict)

    p = sub.add_parser("detect", help="find the faces in photos (files or folders) and their keypoints")
    p.add_argument("inputs", nargs="+", type=Path, metavar="PHOTO|FOLDER", help="photos, or folders of photos")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", type=Path, nargs="?", const=Path("-"), metavar="OUT.json",
                     help="write the faces as JSON to OUT.json (or stdout without OUT; default: a summary on stdout)")
    fmt.add_argument("--csv", type=Path, nargs="?", const=Path("-"), metavar="OUT.csv",
                     help="write one row per face as CSV to OUT.csv (or stdout without OUT; default: a summary on stdout)")
    p.add_argument("--draw", type=Path, metavar="OUTDIR",
                   help="save annotated copies as OUTDIR/<name>_faces.png (default: no drawings)")
    p.add_argument("--names", action="store_true", help="with --draw, label each point")
    p.add_argument("--recursive", "-r", action="store_true", help="also look into subfolders")
    p.add_argument("--force", action="store_true", help="allow replacing existing output files")
    _add_detect_args(p)
    _add_model_args(p)
    p.set_defaults(run=_detect)

    p = sub.add_parser("batch", help="faces and keypoints of many photos on Ray Data (local or a cluster), to Parquet "
                                     "(needs facekp[ray])")
    add_batch_arguments(p)
    _add_detect_args(p)
    _add_model_args(p)
    p.set_defaults(run=lambda args: run_batch(args, _check_output_file))

    p = sub.add_parser("export-onnx", help="write the keypoint network as ONNX (dynamic batch; needs facekp[onnx])")
    p.add_argument("out", type=Path, metavar="OUT.onnx", help="the file to write")
    p.add_argument("--weights", help="a .safetensors file, save_pretrained folder or manifest model name (default: bundled)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    p.add_argument("--check", action="store_true", help="run the file with onnxruntime and compare it with torch")
    p.add_argument("--int8", type=Path, metavar="CROPS_DIR", help="quantize to int8 (faster on CPU), calibrating "
                   "activations on the face crop images in CROPS_DIR (a few hundred real faces; default: fp32)")
    p.set_defaults(run=_export_onnx)
    return parser


def _add_detect_args(p: argparse.ArgumentParser) -> None:
    """The options of :meth:`facekp.Detector.detect` that ``detect`` and ``batch`` share."""
    p.add_argument("--face-detector", choices=FACE_DETECTORS, default=DEFAULT_FACE_DETECTOR,
                   help="what finds the faces: facekp (its own learned finder, any rotation) or haar "
                        f"(OpenCV's cascade, upright faces) (default: {DEFAULT_FACE_DETECTOR})")
    p.add_argument("--min-score", type=float, default=None, metavar="S",
                   help="the facekp face detector's threshold, a face probability in (0, 1) "
                        "(default: its weights' own)")
    p.add_argument("--refine", type=int, default=None, help="re-framing passes per face (default: 1)")
    p.add_argument("--max-faces", type=int, default=None, help="keep only the N largest faces per photo (default: all)")
    p.add_argument("--min-presence", type=float, default=None, metavar="P",
                   help="drop faces whose presence score (0-1: does the keypoint network see a face?) is below P; "
                        "0 keeps all (default: 0.9 with a model that has a presence score)")
    p.add_argument("--no-face-check", action="store_true",
                   help="send every face detector candidate to the keypoint network, without the face check that "
                        "drops those it sees no face in (slower; more false faces)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a .safetensors file, save_pretrained folder or manifest model name (default: bundled)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("torch", "onnx", "auto"),
                   help="network runtime: torch, or onnx (onnxruntime); "
                        "default torch, or onnx with --precision int8")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16", "int8"), default="auto",
                   help="fp16/bf16 autocast the torch network; int8 runs the bundled quantized graph (onnx, CPU); "
                        "auto: fp16 on CUDA, else fp32")


def _detector(args):
    from .detector import Detector

    return Detector(args.weights, device=args.device, backend=args.backend, precision=args.precision,
                    face_check=not getattr(args, "no_face_check", False))


def output_path(requested: Path, source: Path, several: bool, inputs: list[Path], force: bool) -> Path:
    """Where to write a drawing for ``source``: never onto an input, never over a file unless forced."""
    out = requested.with_name(f"{requested.stem}_{source.stem}{requested.suffix or '.png'}") if several else requested
    if not out.suffix:
        out = out.with_suffix(".png")
    _check_output_file(out, inputs, force)
    return out


def _check_output_file(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse, before any work is done, an output file that cannot or must not be written
    (:func:`facekp.fileio.check_output`): an input, a folder, a path under a file, or an existing
    file without ``--force``."""
    fileio.check_output(out, inputs=inputs, overwrite=force, kind="images")


def _save_drawing(out: Path, rgb, inputs: list[Path], force: bool) -> None:
    from PIL import Image

    with fileio.atomic_path(out, inputs=inputs, overwrite=force) as tmp:
        Image.fromarray(rgb).save(tmp)


def _predict(args) -> None:
    from .draw import draw
    from .images import load_rgb

    several = len(args.images) > 1
    # Every drawing's path is checked before any work, so a refused run writes nothing.
    outs = [output_path(args.draw, p, several, args.images, args.force) for p in args.images] if args.draw else []
    clash = next((o for i, o in enumerate(outs) if o in outs[:i]), None)
    if clash is not None:
        raise FacekpError(f"several input images would be drawn to {clash}; give them different names")
    det = _detector(args)
    predicted, failed = [], []
    for i, path in enumerate(args.images):
        try:
            points, confidence = det.predict(path, return_confidence=True)
        except (FacekpError, OSError) as exc:
            if not several:
                raise
            failed.append(path)
            print(f"facekp: skipping {path}: {exc}", file=sys.stderr)
            continue
        predicted.append((path, points, confidence))
        if args.draw:
            _save_drawing(outs[i], draw(load_rgb(path), points, names=args.names), args.images, args.force)
            print(f"wrote {outs[i]}", file=sys.stderr)
    if args.json:
        results = [{"image": str(path), "keypoints": keypoints_to_dict(p, c)} for path, p, c in predicted]
        print(json.dumps(results if several else results[0], indent=2))
    else:
        for path, points, confidence in predicted:  # the table rounds the values themselves, once
            print(path)
            print(f"  {'keypoint':<26}{'x':>9}{'y':>9}{'conf':>7}")
            for name, (x, y), c in zip(KEYPOINT_NAMES, points, confidence):
                print(f"  {name:<26}{x:>9.2f}{y:>9.2f}{c:>7.2f}")
    if failed:
        raise FacekpError(f"{len(failed)} file(s) could not be read as images: {', '.join(map(str, failed[:5]))}")


def _photos(inputs: list[Path], recursive: bool) -> tuple[list[tuple[Path, Path]], bool]:
    """``(photo, name relative to its input)`` pairs (folders: :func:`facekp.images.folder_photos`),
    and whether a folder was given."""
    found, folders = [], False
    for item in inputs:
        if item.is_dir():
            folders = True
            found += [(p, p.relative_to(item)) for p in folder_photos(item, recursive)]
        elif item.exists():
            found.append((item, Path(item.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    if not found:
        raise FacekpError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return found, folders


def _detect(args) -> None:
    import csv

    from tqdm import tqdm

    from .draw import draw
    from .images import load_rgb, upright_size
    from .table import CSV_COLUMNS, csv_rows

    photos, folders = _photos(args.inputs, args.recursive)
    sources = [p for p, _ in photos]
    table = args.json or args.csv
    if table is not None and str(table) != "-":
        _check_output_file(table, sources, args.force)
    drawings: dict[Path, Path] = {}
    if args.draw:
        for path, rel in photos:
            out = output_path(args.draw / rel.parent / f"{rel.stem}_faces.png", path, False, sources, args.force)
            if out in drawings.values():
                raise FacekpError(f"several photos would be drawn to {out}; draw them in separate runs")
            drawings[path] = out

    det = _detector(args)
    options = det.detect_options(args.face_detector, args.refine, args.max_faces, args.min_presence,
                                 args.min_score)._asdict()  # checked and built once, not per photo
    results, failed = [], []
    # disable=None: a bar on a terminal only; in a log its redrawn line would repeat.
    for path, _ in tqdm(photos, desc="facekp detect", unit="photo", disable=None if folders or len(photos) > 1 else True,
                        file=sys.stderr):
        try:
            faces = det.detect(path, **options)
            width, height = upright_size(path)
        except (FacekpError, OSError) as exc:
            failed.append(path)
            results.append({"image": str(path), "error": str(exc)})
            tqdm.write(f"facekp: skipping {path}: {exc}", file=sys.stderr)
            continue
        results.append({"image": str(path), "width": width, "height": height, "faces": [f.to_dict() for f in faces]})
        if path in drawings:
            _save_drawing(drawings[path], draw(load_rgb(path), faces, names=args.names), sources, args.force)

    if args.json is not None:
        text = json.dumps(results, indent=2)
        if str(table) == "-":
            print(text)
        else:
            fileio.write_text(table, text + "\n", inputs=sources, overwrite=args.force)
    elif args.csv is not None:
        header, rows = CSV_COLUMNS, [row for r in results for row in csv_rows(r)]
        if str(table) == "-":
            csv.writer(sys.stdout).writerows([header, *rows])
        else:
            with fileio.atomic_path(table, inputs=sources, overwrite=args.force) as tmp, tmp.open("w", newline="") as fh:
                csv.writer(fh).writerows([header, *rows])
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: could not be read ({r['error']})")
                continue
            print(f"{r['image']}: {len(r['faces'])} face(s)")
            for i, f in enumerate(r["faces"]):
                x0, y0, x1, y1 = f["box"]
                presence = "" if f["presence"] is None else f" presence {f['presence']:.3f}"
                print(f"  face {i}: box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) score {f['score']:g}{presence}")
    n_faces = sum(len(r.get("faces", ())) for r in results)
    done = [f"{n_faces} face(s) in {len(results) - len(failed)} photo(s)"]
    if table is not None and str(table) != "-":
        done.append(f"wrote {table}")
    if drawings:
        done.append(f"drawings in {args.draw}")
    print("facekp: " + "; ".join(done), file=sys.stderr)
    if failed:
        raise FacekpError(f"{len(failed)} file(s) could not be read as images: {', '.join(map(str, failed[:5]))}")


def _export_onnx(args) -> None:
    from .detector import Detector
    from .onnx import export_onnx
    from .onnx_graph import require_onnx

    require_onnx()  # before the model is loaded
    inputs = fileio.files_of(args.weights) if args.weights and Path(args.weights).exists() else []
    fileio.check_output(args.out, inputs=inputs, overwrite=args.force, kind="weights")
    det = Detector(args.weights, device="cpu")
    calibration = None
    if args.int8 is not None:
        if not args.int8.is_dir():
            raise FacekpError(f"--int8 needs a folder of face crop images, got {args.int8}")
        calibration = sorted(p for p in args.int8.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not calibration:
            raise FacekpError(f"no images (png, jpg, ...) under {args.int8}")
    out = export_onnx(args.out, det, opset=args.opset, overwrite=args.force, int8_calibration=calibration)
    h = det.config.hourglass
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): input 'crops' (N, 1, {h.input_size}, {h.input_size}) "
          f"standardized float32 -> 'heatmaps' (N, {h.num_keypoints}, {h.heatmap_size}, {h.heatmap_size})", file=sys.stderr)
    if args.check and calibration is not None:
        import numpy as np

        sample = calibration[:: max(1, len(calibration) // 64)]
        want = det.predict_batch(sample)
        got = Detector(args.weights, device="cpu", backend="onnx", onnx_model=out).predict_batch(sample)
        err = np.linalg.norm(got - want, axis=-1)
        print(f"int8 onnxruntime vs fp32 torch on {len(sample)} calibration crops: point difference mean "
              f"{err.mean():.3f} px, max {err.max():.3f} px", file=sys.stderr)
    elif args.check:
        import numpy as np
        import torch

        from .runtime import OnnxRunner

        x = torch.randn(4, 1, h.input_size, h.input_size)
        with torch.inference_mode():
            want = det.runner.heatmaps(x).numpy()
            got = OnnxRunner(out).heatmaps(x).numpy()
        err = float(np.abs(got - want).max())
        print(f"onnxruntime vs torch: max |heatmap difference| {err:.2e}", file=sys.stderr)
        if err > 1e-3:
            raise FacekpError(f"the exported model differs from torch by {err:.2e} (> 1e-3)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. `| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except KeyboardInterrupt:
        print("facekp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line, never a traceback
        print(f"facekp: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
