"""facekp speed and accuracy benchmark, with dlib and MediaPipe beside it.

    python benchmarks/run.py [--weights W] [--data ../shared/data/faces68]
                             [--dlib-python /work/peers/dlib-venv/bin/python]
                             [--mediapipe-python /work/peers/mediapipe-venv/bin/python]

Prints a markdown report and writes it to docs/benchmarks.md, with the accuracy-vs-speed plot
docs/benchmarks.png. Each facekp configuration (backend, device, precision, threads) is measured
in its own subprocess (clean peak-memory figures and thread settings); the peers run in their own
virtualenvs through benchmarks/peers/*_runner.py (create them with benchmarks/peers/setup.sh),
exchanging data through JSON and .npz files. Machine-dependent: run on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from measure import CROP_SIDE, DEFAULT_DATA, ROOT, bundled_int8, face_crops, load_validation, machine_info
from peer_results import measure_peers, peer_rows
from report import plot, report, targets



def run_worker_process(spec: dict, work: Path, env: dict | None = None) -> dict:
    spec_path = work / f"spec_{spec['label'].replace(' ', '_')}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("workers.py")), str(spec_path), str(out_path)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['label']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out_path.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="model folder/.safetensors (default: the bundled default model)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEKP_DATA", DEFAULT_DATA)))
    ap.add_argument("--dlib-python", default="/work/peers/dlib-venv/bin/python")
    ap.add_argument("--mediapipe-python", default="/work/peers/mediapipe-venv/bin/python")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks.png")
    ap.add_argument("--quick", action="store_true", help="short timings and 100 validation faces (smoke test)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile on CPU)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                    help="devices to measure (cuda: the GPU rows alone, without peers or the CPU ablation)")
    args = ap.parse_args(argv)

    import torch

    from facekp import Detector

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device on this machine")
    cpu_rows, cuda_rows = args.device != "cuda", args.device != "cpu" and torch.cuda.is_available()
    weights = args.weights
    if weights is None:
        try:
            Detector(device="cpu")
        except Exception as exc:
            ap.error(f"no bundled default weights ({exc}); pass --weights")
    det = Detector(weights, device="cpu")
    limit = 100 if args.quick else None
    have_data = args.data.is_dir()
    work = Path(tempfile.mkdtemp(prefix="facekp_bench_"))
    print(f"# working in {work}", file=sys.stderr)
    info = machine_info(weights, det)

    samples = train = None
    if have_data:
        train, samples = load_validation(args.data, limit)
        info["val_faces"] = len(samples)
        from collections import Counter

        info["val_subsets"] = ", ".join(f"{k} {v}" for k, v in sorted(Counter(s.subset for s in samples).items()))

    # -- peers first: facekp reuses dlib's boxes ----------------------------------------------
    peers_raw = {}
    if have_data and cpu_rows and not args.no_peers:
        peers_raw = measure_peers(args.dlib_python, args.mediapipe_python, samples, train, args.data, work, info, args.quick)

    # -- facekp configurations ---------------------------------------------------------------
    if samples is not None:
        (work / "val.pkl").write_bytes(pickle.dumps(samples))
        inputs = {"crops": face_crops(samples, 256), "photos": [s.image for s in samples[:50]]}
    else:
        rng = np.random.default_rng(0)
        inputs = {"crops": [rng.integers(0, 256, (CROP_SIDE, CROP_SIDE), dtype=np.uint8) for _ in range(256)], "photos": []}
    (work / "inputs.pkl").write_bytes(pickle.dumps(inputs))
    base = {"weights": weights, "samples": str(work / "val.pkl") if samples is not None else None,
            "inputs": str(work / "inputs.pkl"), "quick": args.quick}
    specs = cpu_specs(base, work, weights, det, train, "dlib" in peers_raw, args.compile) if cpu_rows else []
    if cuda_rows:
        for prec in ("fp32", "fp16", "bf16"):
            specs.append(dict(base, label=f"torch cuda {prec}", backend="torch", device="cuda", precision=prec))
        if args.compile:
            specs.append(dict(base, label="torch cuda fp16 compiled", backend="torch", device="cuda", precision="fp16",
                              compile="max-autotune-no-cudagraphs"))
    results = []
    for spec in specs:
        print(f"# facekp: {spec['label']}", file=sys.stderr)
        try:
            results.append(run_worker_process(spec, work))
        except RuntimeError as exc:
            print(f"# {exc}", file=sys.stderr)
    abl = None
    if cpu_rows and not args.no_ablation:
        print("# ablation", file=sys.stderr)
        abl = run_worker_process(dict(base, label="ablation", mode="ablation"), work)

    peers = peer_rows(info, results, peers_raw, samples, work)
    info["targets"] = targets(info, results)
    text = report(info, results, peers, abl)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    if peers["plot"]:
        plot(peers["plot"], args.plot)
    (work / "info.json").write_text(json.dumps({"info": info, "results": results, "ablation": abl}, default=str, indent=1))
    print(f"# wrote {args.out}" + (f" and {args.plot}" if peers["plot"] else "") + f"; raw figures in {work / 'info.json'}", file=sys.stderr)
    return 0


def cpu_specs(base: dict, work: Path, weights: str | None, det, train, dlib_boxes: bool, compile: bool) -> list[dict]:
    """The facekp configurations measured on the CPU: torch, onnxruntime fp32 and int8, threads."""
    specs = [
        dict(base, label="torch fp32", backend="torch", device="cpu", precision="fp32",
             save_points=str(work / "facekp_points.npy"), boxes=str(work / "dlib_boxes.npz") if dlib_boxes else None,
             photo_accuracy=True),
        dict(base, label="torch fp32 1 thread", backend="torch", device="cpu", precision="fp32", threads=1),
        dict(base, label="torch bf16", backend="torch", device="cpu", precision="bf16"),
    ]
    if importlib.util.find_spec("onnxruntime") is not None:
        specs.append(dict(base, label="onnx fp32", backend="onnx", device="cpu", precision="fp32"))
        specs.append(dict(base, label="onnx fp32 1 thread", backend="onnx", device="cpu", precision="fp32", threads=1))
        int8 = bundled_int8(weights)
        if int8 is None and train is not None:
            # Weights without a bundled int8 graph: calibrate one as facekp-train export would.
            from facekp.onnx import export_onnx
            from facekp.train.export import int8_calibration_crops

            cal_crops = int8_calibration_crops(train, seed=0)
            int8 = export_onnx(work / "int8.onnx", det, int8_calibration=list(cal_crops), overwrite=True)
        if int8 is not None:
            specs.append(dict(base, label="onnx int8", backend="onnx", device="cpu", precision="int8", onnx_model=str(int8)))
            specs.append(dict(base, label="onnx int8 1 thread", backend="onnx", device="cpu", precision="int8",
                              onnx_model=str(int8), threads=1))
    if compile:
        specs.append(dict(base, label="torch fp32 compiled", backend="torch", device="cpu", precision="fp32", compile=True))
    specs.append(dict(base, label="torch fp16 (CPU emulation)", backend="torch", device="cpu", precision="fp16", accuracy_only=True))
    return specs


if __name__ == "__main__":
    sys.exit(main())
