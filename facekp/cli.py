"""The ``facekp`` command line: keypoints of face crops from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import FacekpError
from .keypoints import KEYPOINT_NAMES


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

    p = sub.add_parser("export-onnx", help="write the keypoint network as ONNX (dynamic batch; needs facekp[onnx])")
    p.add_argument("out", type=Path, metavar="OUT.onnx", help="the file to write")
    p.add_argument("--weights", help="a .safetensors file, save_pretrained folder or manifest model name (default: bundled)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    p.add_argument("--check", action="store_true", help="run the file with onnxruntime and compare it with torch")
    p.set_defaults(run=_export_onnx)
    return parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a .safetensors file, save_pretrained folder or manifest model name (default: bundled)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def _detector(args):
    from .detector import Detector

    return Detector(args.weights, device=args.device)


def output_path(requested: Path, source: Path, several: bool, inputs: list[Path], force: bool) -> Path:
    """Where to write a drawing for ``source``: never onto an input, never over a file unless forced."""
    out = requested.with_name(f"{requested.stem}_{source.stem}{requested.suffix or '.png'}") if several else requested
    if not out.suffix:
        out = out.with_suffix(".png")
    if any(out.resolve() == i.resolve() for i in inputs):
        raise FacekpError(f"refusing to write {out}: it is one of the input images")
    if out.exists() and not force:
        raise FacekpError(f"{out} exists; pass --force to replace it")
    return out


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
        results.append({
            "image": str(path),
            "keypoints": {n: {"x": float(x), "y": float(y), "confidence": float(c)}
                          for n, (x, y), c in zip(KEYPOINT_NAMES, points, confidence)},
        })
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


def _export_onnx(args) -> None:
    from .detector import Detector
    from .onnx import export_onnx

    if args.out.exists() and not args.force:
        raise FacekpError(f"{args.out} exists; pass --force to replace it")
    det = Detector(args.weights, device="cpu")
    out = export_onnx(args.out, det, opset=args.opset, overwrite=True)
    h = det.config.hourglass
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): input 'crops' (N, 1, {h.input_size}, {h.input_size}) "
          f"standardized float32 -> 'heatmaps' (N, {h.num_keypoints}, {h.heatmap_size}, {h.heatmap_size})", file=sys.stderr)
    if args.check:
        import numpy as np
        import torch

        from .onnx import OnnxBackend

        x = torch.randn(4, 1, h.input_size, h.input_size)
        with torch.inference_mode():
            want = det._forward(x).numpy()
        got = OnnxBackend(out)(x.numpy())
        err = float(np.abs(got - want).max())
        print(f"onnxruntime vs torch: max |heatmap difference| {err:.2e}", file=sys.stderr)
        if err > 1e-3:
            raise FacekpError(f"the exported model differs from torch by {err:.2e} (> 1e-3)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (FacekpError, FileNotFoundError, ValueError) as exc:
        print(f"facekp: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
