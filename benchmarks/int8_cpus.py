"""The int8 graph on CPUs without VNNI: does it give the same points as on this CPU?

    python benchmarks/int8_cpus.py [--graph FILE ...] [--control] [--cpu EPYC-Rome Haswell]
                                   [--data ../shared/data/faces68] [--limit N]

onnxruntime picks its int8 convolution kernels at run time from the CPU's features. With VNNI
(AVX-512 VNNI, AVX-VNNI) each uint8 x int8 product is summed in int32. Without it (AVX2 only:
AMD before Zen 4, Intel before Ice Lake) pairs of products are first added in int16 with
saturation (``vpmaddubsw``), which weights using all 8 bits can overflow. facekp quantizes weights
to 7 bits for that reason (:func:`facekp.onnx.quantize_int8`).

This script runs each graph on the validation crops (canonical and perturbed, as
``facekp-train eval``) on this CPU and under ``qemu-x86_64 -cpu MODEL`` (Debian/Ubuntu:
``apt-get install qemu-user``). The emulated CPUID makes onnxruntime dispatch that CPU model's
kernels. The script then compares the points. ``--control`` adds the same model quantized with full
8-bit weights, to show what the 7 bits guard against. Emulation is about 200 times slower than the
host: about 2 minutes per graph and CPU model for the 616 validation faces.
Writes ``docs/int8-cpus.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "faces68"
# Reported for each CPU as the kernels see it (numpy's run-time CPU detection names).
FEATURES = ("AVX2", "AVX512BW", "AVX512VNNI")
HOST = "this CPU (host)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, nargs="+", help="int8 ONNX graphs (default: the bundled one)")
    parser.add_argument("--control", action="store_true",
                        help="also quantize the default model with 8-bit weights (calibrated as the bundled graph)")
    parser.add_argument("--cpu", nargs="+", default=["EPYC-Rome", "Haswell"], help="qemu CPU models (qemu-x86_64 -cpu help)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, help="only the first N validation faces (smoke runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "int8-cpus.md")
    args = parser.parse_args(argv)

    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        sys.exit("needs an x86_64 host with qemu-x86_64 on PATH (Debian/Ubuntu: apt-get install qemu-user)")
    from facekp.weights import bundled_onnx, default_entry

    graphs = {str(g): g for g in args.graph} if args.graph else {"bundled (7-bit weights)": bundled_onnx(default_entry(), "int8")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs, truth = prepare_inputs(args.data, args.limit, work / "inputs.npz")
        if args.control:
            graphs["control (8-bit weights)"] = full_range_graph(args.data, work / "int8_8bit.onnx")
        rows = []
        for label, graph in graphs.items():
            native = run_worker(graph, inputs, work / "native.npz", qemu_cpu=None)
            rows.append(row(label, HOST, native, native, truth))
            for cpu in args.cpu:
                print(f"{label} on emulated {cpu} ...", flush=True)
                rows.append(row(label, cpu, run_worker(graph, inputs, work / f"{cpu}.npz", qemu, cpu), native, truth))
    report = render(rows, qemu, len(truth["canonical"][0]))
    print(report)
    args.out.write_text(report)
    print(f"wrote {args.out}")
    return 0


def prepare_inputs(data: Path, limit: int | None, out: Path) -> tuple[Path, dict]:
    """Standardized validation crops per crop protocol -> ``out``; returns it and the truth."""
    from facekp.preprocess import network_input
    from facekp.train.data import load_dataset, split_by_identity
    from facekp.train.evaluate import CROP_PROTOCOLS, make_eval_crops

    val = split_by_identity(load_dataset(data), 0.15, seed=0)[1][:limit]
    arrays, truth = {}, {}
    for name, (perturbation, seed) in CROP_PROTOCOLS.items():
        crops, points, mask = make_eval_crops(val, perturbation, seed=seed)
        arrays[name] = network_input(crops)
        truth[name] = (points, mask)
    np.savez(out, **arrays)
    return out, truth


def full_range_graph(data: Path, out: Path) -> Path:
    """The default model quantized with 8-bit weights, calibrated exactly as its bundled graph."""
    from facekp import Detector
    from facekp.onnx import onnx_bytes, quantize_int8
    from facekp.preprocess import network_input
    from facekp.train.data import load_dataset, split_by_identity
    from facekp.train.export import int8_calibration_crops

    train = split_by_identity(load_dataset(data), 0.15, seed=0)[0]
    calibration = network_input(int8_calibration_crops(train, seed=0))
    det = Detector(device="cpu")
    out.write_bytes(quantize_int8(onnx_bytes(det.model, det.config), calibration, weight_bits=8))
    return out


def run_worker(graph: Path, inputs: Path, out: Path, qemu: str | None = None, qemu_cpu: str | None = None) -> dict:
    """Run :func:`worker` in a subprocess, emulated when ``qemu_cpu`` is given; returns its results."""
    command = [sys.executable, __file__, "--worker", str(graph), str(inputs), str(out)]
    env = dict(os.environ)
    if qemu_cpu is not None:
        command = [qemu, "-cpu", qemu_cpu, *command]
        # Under qemu the interpreter cannot see it was started from a venv: hand it this one's path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    t = time.perf_counter()
    subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL if qemu_cpu else None)
    result = dict(np.load(out))
    result["seconds"] = time.perf_counter() - t
    return result


def worker(graph: str, inputs: str, out: str) -> None:
    """Points of ``graph`` for every array in ``inputs``, and the CPU features the process sees.

    Imports numpy and onnxruntime only: under emulation every import costs.
    """
    import onnxruntime as ort

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as cpu
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    results = {"features": np.array([f for f in FEATURES if cpu.get(f)])}
    for name, crops in np.load(inputs).items():
        batches = [session.run(["points"], {"crops": crops[i : i + 64]})[0] for i in range(0, len(crops), 64)]
        results[name] = np.concatenate(batches)
    np.savez(out, **results)


def row(label: str, cpu: str, result: dict, native: dict, truth: dict) -> dict:
    from facekp.train.evaluate import keypoint_metrics

    moved = np.concatenate([np.linalg.norm(result[k] - native[k], axis=-1).ravel() for k in truth])
    return {
        "graph": label,
        "cpu": cpu,
        "features": " ".join(result["features"]) or "none of " + "/".join(FEATURES),
        "rmse": {k: keypoint_metrics(result[k], *truth[k])["rmse"] for k in truth},
        "equal": float((moved == 0).mean()),
        "moved_mean": float(moved.mean()),
        "moved_max": float(moved.max()),
        "seconds": result["seconds"],
    }


def render(rows: list[dict], qemu: str, faces: int) -> str:
    import onnxruntime

    qemu_version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    protocols = list(rows[0]["rmse"])
    lines = [
        "# int8 graph on CPUs without VNNI",
        "",
        f"Generated by `python benchmarks/int8_cpus.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"host {_host_cpu()}, onnxruntime {onnxruntime.__version__}, "
        f"{qemu_version}. {faces} validation faces, canonical and perturbed crops.",
        "",
        "Other CPUs are emulated by `qemu-x86_64 -cpu MODEL`, whose CPUID makes onnxruntime choose that "
        "model's int8 kernels. Without VNNI they add pairs of uint8 x int8 products in int16 with "
        "saturation. 'Moved' is the distance of each point from the host's own output, in 96x96 crop px.",
        "",
        "| graph | CPU | features seen | " + " | ".join(f"RMSE {p} (px)" for p in protocols)
        + " | points equal to host | moved mean / max (px) | run time (s) |",
        "|---|---|---|" + "---|" * len(protocols) + "---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['graph']} | {r['cpu']} | {r['features']} | " + " | ".join(f"{r['rmse'][p]:.4f}" for p in protocols)
            + (" | reference | reference" if r["cpu"] == HOST else f" | {100 * r['equal']:.1f}% | {r['moved_mean']:.4f} / {r['moved_max']:.4f}")
            + f" | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        sys.exit(main())
