"""The ``facekp`` command line: keypoints of face crops from the shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import FacekpError
from .keypoints import KEYPOINT_NAMES
from .results import keypoints_to_dict


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facekp", description="Find 15 facial keypoints on faces.")
    parser.add_argument("--version", action="version", version=f"facekp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="keypoints of face crops (one face filling each image)")
    p.add_argument("images", nargs="+", type=Path, help="face crop image files")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--draw", type=Path, metavar="OUT.png", help="save the image with the points drawn "
                   "(with several images: OUT_<image name>.png)")
    p.add_argument("--names", action="store_true", help="with --draw, label each point")
    p.add_argument("--force", action="store_true", help="allow --draw to replace existing files")
    _add_model_args(p)
    p.set_defaults(run=_predict)

    p = sub.add_parser("detect", help="find the faces in photos (files or folders) and their keypoints")
    p.add_argument("inputs", nargs="+", type=Path, metavar="PHOTO|FOLDER", help="photos, or folders of photos")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", type=Path, nargs="?", const=Path("-"), metavar="OUT.json",
                     help="write the faces as JSON to OUT.json (or stdout without OUT)")
    fmt.add_argument("--csv", type=Path, nargs="?", const=Path("-"), metavar="OUT.csv",
                     help="write one row per face as CSV to OUT.csv (or stdout without OUT)")
    p.add_argument("--draw", type=Path, metavar="OUTDIR", help="save annotated copies as OUTDIR/<name>_faces.png")
    p.add_argument("--names", action="store_true", help="with --draw, label each point")
    p.add_argument("--recursive", "-r", action="store_true", help="also look into subfolders")
    p.add_argument("--refine", type=int, default=None, help="re-framing passes per face (default: 1)")
    p.add_argument("--max-faces", type=int, default=None, help="keep only the N largest faces per photo")
    p.add_argument("--min-presence", type=float, default=None, metavar="P",
                   help="drop faces whose presence score (0-1: does the keypoint network see a face?) is below P; "
                        "0 keeps all (default: 0.5 with a model that has a presence score)")
    p.add_argument("--force", action="store_true", help="allow replacing existing output files")
    _add_model_args(p)
    p.set_defaults(run=_detect)

    p = sub.add_parser("export-onnx", help="write the keypoint network as ONNX (dynamic batch; needs facekp[onnx])")
    p.add_argument("out", type=Path, metavar="OUT.onnx", help="the file to write")
    p.add_argument("--weights", help="a .safetensors file, save_pretrained folder or manifest model name (default: bundled)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    p.add_argument("--check", action="store_true", help="run the file with onnxruntime and compare it with torch")
    p.add_argument("--int8", type=Path, metavar="CROPS_DIR", help="quantize to int8 (faster on CPU), calibrating "
                   "activations on the face crop images in CROPS_DIR (a few hundred real faces)")
    p.set_defaults(run=_export_onnx)
    return parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a .safetensors file, save_pretrained folder or manifest model name (default: bundled)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--backend", choices=("torch", "onnx", "auto"),
                   help="network runtime: onnx needs onnxruntime (pip install \"facekp[onnx]\"); "
                        "default torch, or onnx with --precision int8")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16", "int8"), default="auto",
                   help="fp16/bf16 autocast the torch network; int8 runs the bundled quantized graph (onnx, CPU)")


def _detector(args):
    from .detector import Detector

    return Detector(args.weights, device=args.device, backend=args.backend, precision=args.precision)


def output_path(requested: Path, source: Path, several: bool, inputs: list[Path], force: bool) -> Path:
    """Where to write a drawing for ``source``: never onto an input, never over a file unless forced."""
    out = requested.with_name(f"{requested.stem}_{source.stem}{requested.suffix or '.png'}") if several else requested
    if not out.suffix:
        out = out.with_suffix(".png")
    _check_output_file(out, inputs, force)
    return out


def _check_output_file(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse, before any work is done, an output file that cannot or must not be written: one of
    the ``inputs``, a folder, a path under a file, or an existing file without ``--force``."""
    if any(out.resolve() == i.resolve() for i in inputs):
        raise FacekpError(f"refusing to write {out}: it is one of the input images")
    if out.is_dir():
        raise FacekpError(f"cannot write {out}: {out} is a folder; expected a file path")
    folder = next(p for p in out.absolute().parents if p.exists())  # the root always exists
    if not folder.is_dir():
        raise FacekpError(f"cannot write {out}: {folder} is a file, not a folder")
    if out.exists() and not force:
        raise FacekpError(f"{out} exists; pass --force to replace it")


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
    results = []
    for i, path in enumerate(args.images):
        points, confidence = det.predict(path, return_confidence=True)
        results.append({"image": str(path), "keypoints": keypoints_to_dict(points, confidence, rounded=False)})
        if args.draw:
            from PIL import Image

            out = outs[i]
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw(load_rgb(path), points, names=args.names)).save(out)
            print(f"wrote {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(results if several else results[0], indent=2))
        return
    for r in results:
        print(r["image"])
        print(f"  {'keypoint':<26}{'x':>9}{'y':>9}{'conf':>7}")
        for name, v in r["keypoints"].items():
            print(f"  {name:<26}{v['x']:>9.2f}{v['y']:>9.2f}{v['confidence']:>7.2f}")


#: File types ``facekp detect`` picks up in folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _photos(inputs: list[Path], recursive: bool) -> tuple[list[tuple[Path, Path]], bool]:
    """``(photo, name relative to its input)`` pairs, and whether a folder was given."""
    found, folders = [], False
    for item in inputs:
        if item.is_dir():
            folders = True
            walk = item.rglob("*") if recursive else item.iterdir()
            found += [(p, p.relative_to(item)) for p in sorted(walk) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif item.exists():
            found.append((item, Path(item.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    if not found:
        raise FacekpError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return found, folders


def _detect(args) -> None:
    import csv

    from PIL import Image
    from tqdm import tqdm

    from .draw import draw
    from .images import load_rgb, upright_size

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
    min_presence = det.resolve_min_presence(args.min_presence)  # a bad value fails here, not once per photo
    results, failed = [], []
    for path, _ in tqdm(photos, desc="facekp detect", unit="photo", disable=not folders and len(photos) == 1,
                        file=sys.stderr):
        try:
            faces = det.detect(path, refine=args.refine, max_faces=args.max_faces, min_presence=min_presence)
            width, height = upright_size(path)
        except (FacekpError, OSError) as exc:
            failed.append(path)
            tqdm.write(f"facekp: skipping {path}: {exc}", file=sys.stderr)
            continue
        results.append({"image": str(path), "width": width, "height": height, "faces": [f.to_dict() for f in faces]})
        if path in drawings:
            drawings[path].parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw(load_rgb(path), faces, names=args.names)).save(drawings[path])

    if args.json is not None:
        text = json.dumps(results, indent=2)
        if str(table) == "-":
            print(text)
        else:
            table.parent.mkdir(parents=True, exist_ok=True)
            table.write_text(text + "\n")
    elif args.csv is not None:
        header = ["image", "face", "score", "presence", "box_x0", "box_y0", "box_x1", "box_y1"]
        header += [f"{n}_{c}" for n in KEYPOINT_NAMES for c in ("x", "y", "confidence")]
        rows = []
        for r in results:
            if not r["faces"]:
                rows.append([r["image"], ""] + [""] * (len(header) - 2))
            for i, f in enumerate(r["faces"]):
                kp = [v for n in KEYPOINT_NAMES for v in (f["keypoints"][n]["x"], f["keypoints"][n]["y"],
                                                        f["keypoints"][n]["confidence"])]
                presence = "" if f["presence"] is None else f["presence"]
                rows.append([r["image"], i, f["score"], presence, *f["box"], *kp])
        if str(table) == "-":
            csv.writer(sys.stdout).writerows([header, *rows])
        else:
            table.parent.mkdir(parents=True, exist_ok=True)
            with table.open("w", newline="") as fh:
                csv.writer(fh).writerows([header, *rows])
    else:
        for r in results:
            print(f"{r['image']}: {len(r['faces'])} face(s)")
            for i, f in enumerate(r["faces"]):
                x0, y0, x1, y1 = f["box"]
                presence = "" if f["presence"] is None else f" presence {f['presence']:.3f}"
                print(f"  face {i}: box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) score {f['score']:g}{presence}")
    n_faces = sum(len(r["faces"]) for r in results)
    done = [f"{n_faces} face(s) in {len(results)} photo(s)"]
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

    if args.out.exists() and not args.force:
        raise FacekpError(f"{args.out} exists; pass --force to replace it")
    det = Detector(args.weights, device="cpu")
    calibration = None
    if args.int8 is not None:
        if not args.int8.is_dir():
            raise FacekpError(f"--int8 needs a folder of face crop images, got {args.int8}")
        calibration = sorted(p for p in args.int8.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not calibration:
            raise FacekpError(f"no images (png, jpg, ...) under {args.int8}")
    out = export_onnx(args.out, det, opset=args.opset, overwrite=True, int8_calibration=calibration)
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
    except (FacekpError, OSError, ValueError) as exc:  # OSError: unwritable outputs, full disks...
        print(f"facekp: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
