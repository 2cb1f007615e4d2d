"""One facekp configuration measured in its own process (clean peak-memory figures and thread
settings): ``python benchmarks/workers.py SPEC.json RESULT.json``, started by benchmarks/run.py.
A spec with ``"mode": "ablation"`` measures what each CPU optimization of the torch path is worth."""

from __future__ import annotations

import copy
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from measure import BATCHES, GPU_BATCHES, metrics, ms_stats, peak_rss_mb, timings



def worker(spec: dict) -> dict:
    import cv2
    import torch

    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    from facekp import Detector

    result = {"spec": spec, "threads": torch.get_num_threads()}
    t = time.perf_counter()
    det = Detector(spec["weights"], device=spec["device"], backend=spec["backend"], precision=spec["precision"],
                   compile=spec.get("compile", False), onnx_model=spec.get("onnx_model"),
                   threads=int(threads) if threads else None)
    result["init_s"] = time.perf_counter() - t
    result["precision"] = det.precision
    if spec["backend"] == "onnx":
        result["threads"] = int(threads) if threads else os.cpu_count()  # onnxruntime: one per core by default
    # Timing inputs come from a small pickle (crops, photos); the validation set is read only after
    # the timings, so that the peak RSS figure is the model's, not the dataset's.
    inputs = pickle.loads(Path(spec["inputs"]).read_bytes())
    crops, photos = inputs["crops"], inputs["photos"]
    cuda = det.device.type == "cuda"
    quick = spec.get("quick", False)
    tmin = 0.3 if quick else 1.5

    if not spec.get("accuracy_only"):
        # -- single crop: end to end and its parts ------------------------------------------
        one = crops[0]
        i = iter(range(10**9))
        result["single"] = ms_stats(timings(lambda: det.predict(crops[next(i) % 64]), min_time=2 * tmin, min_reps=50))
        result["parts"] = single_crop_parts(det, one, tmin)
        # -- batched throughput ---------------------------------------------------------------
        result["throughput"] = {}
        batches = GPU_BATCHES if cuda else BATCHES
        for b in batches:
            batch = (crops * (b // len(crops) + 1))[:b]
            secs = timings(lambda: det.predict_batch(batch, batch_size=b), min_time=tmin, min_reps=3 if b >= 256 else 10)
            result["throughput"][str(b)] = b / float(np.median(secs))
        # network + decode only, on crops already warped to 96x96 (what the FLOP share uses)
        b = 1024 if cuda else 256
        size = det.config.hourglass.input_size
        small = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in (crops * 4)[:b]]
        ready = np.stack(small).astype(np.float32) / 255  # warped crops: standardize, network, decode

        def net():
            det.predict_crops(ready, b)  # returns points on the host: synchronized

        result["network_throughput"] = {"batch": b, "crops_per_s": b / float(np.median(timings(net, min_time=tmin, min_reps=3)))}
        # -- full photo: detect + keypoints ------------------------------------------------
        result["photo"] = photo_latency(det, photos, tmin)
    result["peak_rss_mb"] = peak_rss_mb()
    # -- accuracy on the validation faces, oracle (annotation) framing -------------------------
    if spec.get("samples"):
        samples = pickle.loads(Path(spec["samples"]).read_bytes())
        grays = [s.image.astype(np.float32) / 255 for s in samples]
        frames = np.stack([s.frame for s in samples])
        points, _ = det.predict_framed(grays, frames)
        result["accuracy"] = metrics(samples, points)
        if spec.get("save_points"):
            np.save(spec["save_points"], points)
        if spec.get("boxes"):
            result["accuracy_dlib_boxes"] = accuracy_on_boxes(det, samples, spec["boxes"])
        if spec.get("photo_accuracy") and "median_ms" in result.get("photo", {}):
            result["accuracy_photo"] = accuracy_full_photo(det, samples)
    if cuda:
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["device_name"] = torch.cuda.get_device_name(det.device)
    return result


def single_crop_parts(det, crop: np.ndarray, tmin: float) -> dict:
    """Median ms of the stages of Detector.predict on one crop."""
    import torch

    from facekp.geometry import apply_affine, invert_affine
    from facekp.images import load_gray
    from facekp.preprocess import frame_crops, letterbox_transforms, network_input

    size = det.config.hourglass.input_size
    ms = letterbox_transforms([load_gray(crop)], size)

    def prep():  # what predict does before the network: load, letterbox, warp, normalize
        grays = [load_gray(crop)]
        crops = frame_crops(grays, letterbox_transforms(grays, size), size)
        return torch.from_numpy(network_input(crops, det.config.normalization))

    x = prep().to(det.device)
    sync = torch.cuda.synchronize if det.device.type == "cuda" else (lambda: None)

    def net():
        with torch.inference_mode():
            det.runner.heatmaps(x)
        sync()

    with torch.inference_mode():
        hm = det.runner.heatmaps(x)

    def decode():
        with torch.inference_mode():
            det.codec.decode(hm)
        sync()

    pts = np.zeros((1, 15, 2), np.float32)
    return {
        "preprocess": float(np.median(timings(prep, min_time=tmin, min_reps=50)) * 1e3),
        "network": float(np.median(timings(net, min_time=tmin, min_reps=50)) * 1e3),
        "decode": float(np.median(timings(decode, min_time=tmin, min_reps=50)) * 1e3),
        "unwarp": float(np.median(timings(lambda: apply_affine(invert_affine(ms), pts), min_time=0.2, min_reps=50)) * 1e3),
    }


def photo_latency(det, photos, tmin: float) -> dict:
    if not photos:
        return {"note": "needs the validation photos (--data)"}
    i = iter(range(10**9))
    det.detect(photos[0])  # warm-up
    out = ms_stats(timings(lambda: det.detect(photos[next(i) % len(photos)]), min_time=2 * tmin, min_reps=20))
    out["photo_size"] = f"{int(np.median([p.shape[1] for p in photos]))}x{int(np.median([p.shape[0] for p in photos]))}"
    return out


def accuracy_on_boxes(det, samples, boxes_file: str) -> dict:
    """facekp framed by dlib's HOG boxes (calibrated box -> frame), on the faces dlib found."""
    from facekp import BoxCalibration

    data = np.load(boxes_file)
    boxes, calib = data["boxes"], BoxCalibration.from_dict(json.loads(str(data["calibration"])))
    found = np.isfinite(boxes).all(axis=1)
    pts = np.full((len(samples), 15, 2), np.nan)
    idx = np.flatnonzero(found)
    frames = [calib.frame(boxes[i]) for i in idx]
    grays = [samples[i].image.astype(np.float32) / 255 for i in idx]
    if len(idx):
        pts[idx], _ = det.predict_framed(grays, np.stack(frames))
    return metrics(samples, pts)


def accuracy_full_photo(det, samples) -> dict:
    """facekp's own pipeline on each photo (Detector.detect), the face nearest the annotation kept."""
    pts = np.full((len(samples), 15, 2), np.nan)
    for i, s in enumerate(samples):
        faces = det.detect(s.image)
        if faces:
            hint = s.points.astype(np.float64).mean(axis=0)
            best = min(faces, key=lambda f: float(np.linalg.norm(np.asarray(f.points, np.float64).mean(axis=0) - hint)))
            pts[i] = np.asarray(best.points)
    return metrics(samples, pts)


def ablation(spec: dict) -> dict:
    import torch

    from facekp import Detector
    from facekp.model import fuse_conv_bn

    det = Detector(spec["weights"], device="cpu", backend="torch")  # the ablation is of the torch network's settings
    tmin = 0.3 if spec.get("quick") else 1.0
    rng = np.random.default_rng(0)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for b in (1, 64):
            x = torch.from_numpy(rng.standard_normal((b, 1, 96, 96)).astype(np.float32))
            variants = {
                "unfused, contiguous, no_grad": (copy.deepcopy(det.model), torch.contiguous_format, torch.no_grad),
                "unfused, channels-last, inference_mode": (copy.deepcopy(det.model), torch.channels_last, torch.inference_mode),
                "fused, contiguous, inference_mode": (fuse_conv_bn(copy.deepcopy(det.model)), torch.contiguous_format, torch.inference_mode),
                "fused, channels-last, inference_mode": (det.runner.net, torch.channels_last, torch.inference_mode),
            }
            for name, (net, fmt, ctx) in variants.items():
                net = net.to(memory_format=fmt)
                xx = x.contiguous(memory_format=fmt)

                def run(net=net, xx=xx, ctx=ctx):
                    with ctx():
                        net.predict_heatmaps(xx)

                out[f"network | {name} | threads {threads} | batch {b}"] = float(np.median(timings(run, min_time=tmin, min_reps=10)) * 1e3)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                out[f"network | fused, channels-last, bf16 autocast | threads {threads} | batch {b}"] = float(
                    np.median(timings(lambda: det.runner.net.predict_heatmaps(x.contiguous(memory_format=torch.channels_last)), min_time=tmin, min_reps=10)) * 1e3)
            with torch.inference_mode():
                hm = det.runner.net.predict_heatmaps(x)
            out[f"decode | windowed DARK | threads {threads} | batch {b}"] = float(
                np.median(timings(lambda: det.codec.decode(hm), min_time=tmin, min_reps=20)) * 1e3)
    return out


def main(argv: list[str]) -> int:
    spec_path, result_path = (Path(a) for a in argv)
    spec = json.loads(spec_path.read_text())
    res = ablation(spec) if spec.get("mode") == "ablation" else worker(spec)
    result_path.write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
