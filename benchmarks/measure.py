"""What the benchmark scripts share: timing, memory and machine figures, the validation faces and
their scores in the canonical frame. Public facekp API only."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "faces68"
BATCHES = (1, 8, 64, 256)
GPU_BATCHES = (1, 8, 64, 256, 1024)
CROP_SIDE = 128  # side of the uint8 face crops used for latency/throughput (letterboxed to 96)


def timings(fn, min_time: float = 1.0, min_reps: int = 5, warmup: int = 3, max_reps: int = 2000) -> np.ndarray:
    """Seconds per call of ``fn``: at least ``min_reps`` calls and ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    out = []
    start = time.perf_counter()
    while (len(out) < min_reps or time.perf_counter() - start < min_time) and len(out) < max_reps:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out)


def ms_stats(seconds: np.ndarray) -> dict:
    return {"median_ms": float(np.median(seconds) * 1e3), "p90_ms": float(np.percentile(seconds, 90) * 1e3), "n": int(len(seconds))}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Read from /proc (VmHWM), which starts afresh at exec:
    getrusage's ru_maxrss would report the parent's size inherited through fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _lscpu(field: str) -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(f"{field}:")), None)


def cpu_model() -> str:
    return _lscpu("Model name") or platform.processor() or "unknown CPU"


def cpu_int8_kernels() -> str:
    """What onnxruntime's int8 convolutions run on: VNNI dot products, or AVX2 pair sums."""
    flags = set((_lscpu("Flags") or "").split())
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else "no AVX2"


def load_validation(data: Path, limit: int | None = None):
    from facekp.train.data import load_pts_folder, split_by_identity

    train, val = split_by_identity(load_pts_folder(data), 0.15, seed=0)
    return train, (val[:limit] if limit else val)


def canonical_truth(samples) -> tuple[np.ndarray, np.ndarray]:
    from facekp.geometry import apply_affine

    truth = np.stack([apply_affine(s.frame, s.points.astype(np.float64)) for s in samples])
    return truth, np.stack([s.mask for s in samples])


def to_frame(samples, points: np.ndarray) -> np.ndarray:
    """(N, 15, 2) points in each original image -> the canonical 96x96 frame of each sample."""
    from facekp.geometry import apply_affine

    return np.stack([apply_affine(s.frame, p.astype(np.float64)) for s, p in zip(samples, points)])


def metrics(samples, image_points: np.ndarray) -> dict:
    """RMSE / NME in the canonical frame over the samples whose prediction is finite."""
    from facekp.train.evaluate import keypoint_metrics

    found = np.isfinite(image_points).all(axis=(1, 2))
    truth, mask = canonical_truth(samples)
    if not found.any():
        return {"faces": 0, "found": 0, "rmse": float("nan"), "nme": float("nan")}
    pred = to_frame([s for s, f in zip(samples, found) if f], image_points[found])
    m = keypoint_metrics(pred, truth[found], mask[found])
    return {"faces": int(len(samples)), "found": int(found.sum()), "rmse": m["rmse"], "nme": m["nme"]}


def face_crops(samples, n: int, side: int = CROP_SIDE) -> list[np.ndarray]:
    """``n`` uint8 grayscale face crops (side x side), cut from the photos through their frames."""
    from facekp.geometry import compose_affine
    from facekp.preprocess import warp

    scale = np.array([[side / 96, 0, 0.5 * side / 96 - 0.5], [0, side / 96, 0.5 * side / 96 - 0.5]])
    out = []
    for i in range(n):
        s = samples[i % len(samples)]
        crop = warp(s.image.astype(np.float32) / 255, compose_affine(scale, s.frame), side)
        out.append(np.round(crop * 255).astype(np.uint8))
    return out


def bundled_int8(weights: str | None) -> Path | None:
    """The int8 graph bundled with a manifest model (None: the default), or None."""
    from facekp.weights import bundled_onnx, default_entry, find_entry

    if weights is not None and Path(weights).exists():
        return None
    entry = default_entry() if weights is None else find_entry(weights)
    return bundled_onnx(entry, "int8") if entry.int8_onnx else None


def gemm_flops(device: str = "cpu", n: int = 2048) -> float:
    """Measured fp32 GEMM FLOP/s (square n x n matmul, all threads)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def mm():
        torch.mm(a, b)
        sync()

    secs = timings(mm, min_time=1.0, min_reps=5)
    return 2 * n**3 / float(np.min(secs))


def model_flops(weights) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from facekp import Detector

    det = Detector(weights, device="cpu", backend="torch")  # the torch network: its ops are what is counted
    x = torch.zeros(1, 1, 96, 96)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        det.runner.net.predict_heatmaps(x)
    return float(counter.get_total_flops())


def machine_info(weights: str | None, det) -> dict:
    """The report's header figures: machine, versions, the model's size and FLOPs, GEMM rates."""
    import cv2
    import torch

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "int8_kernels": cpu_int8_kernels(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "weights": weights or "bundled default",
        "params": sum(p.numel() for p in det.model.parameters()),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    print("# machine figures", file=sys.stderr)
    info["flops"] = model_flops(weights)
    info["gemm"] = gemm_flops("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    info["gemm_1t"] = gemm_flops("cpu")
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        info["gemm_gpu"] = gemm_flops("cuda", 8192)

    return info
