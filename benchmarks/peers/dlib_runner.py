"""dlib 68-point shape predictor on the benchmark's faces (runs in its own venv: dlib-bin,
face-recognition-models, numpy, pillow). Not part of facekp; see benchmarks/README.md.

    python dlib_runner.py JOB.json OUT.npz

JOB.json: {"images": [paths], "hints": [[cx, cy], ...] (where the face to measure is: the
detection nearest to it is kept), "timing_images": [indices], "repeats": int}.
OUT.npz: points (N, 68, 2) float64 pixel-centre coordinates (NaN where no face was found),
boxes (N, 4) [left, top, right, bottom], and "timing" (a JSON string).

With "all_faces": true in JOB.json (no hints), every face of every image instead: points (M, 68, 2),
image (M,) the index of each face's image, photo_ms (T,) the median time of detection + landmarks
on each of "timing_images", and "timing".
"""

from __future__ import annotations

import json
import platform
import sys
import time

import dlib
import face_recognition_models
import numpy as np
from PIL import Image

UPSAMPLE = 1  # dlib's usual setting for faces under ~80 px; the benchmark's faces are 60-110 px


def load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def nearest(dets, hint) -> dlib.rectangle | None:
    if len(dets) == 0:
        return None
    centres = [((d.left() + d.right()) / 2, (d.top() + d.bottom()) / 2) for d in dets]
    dist = [np.hypot(cx - hint[0], cy - hint[1]) for cx, cy in centres]
    return dets[int(np.argmin(dist))]


def shape_points(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM restarts at exec; ru_maxrss keeps the parent's)."""
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def stats(ms: list[float]) -> dict:
    if not ms:  # nothing timed (a calibration-only job, or no face found)
        return {"median_ms": None, "p90_ms": None, "n": 0}
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "n": int(len(a))}


def main(job_path: str, out_path: str) -> None:
    job = json.loads(open(job_path).read())
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    if job.get("all_faces"):
        return all_faces(job, out_path, detector, predictor)
    images = [load(p) for p in job["images"]]
    n = len(images)
    points = np.full((n, 68, 2), np.nan)
    boxes = np.full((n, 4), np.nan)
    rects: list[dlib.rectangle | None] = []
    for i, (img, hint) in enumerate(zip(images, job["hints"])):
        rect = nearest(detector(img, UPSAMPLE), hint)
        rects.append(rect)
        if rect is not None:
            boxes[i] = [rect.left(), rect.top(), rect.right(), rect.bottom()]
            points[i] = shape_points(predictor(img, rect))
    # -- timing -------------------------------------------------------------------------------
    timed = [i for i in job["timing_images"] if rects[i] is not None]
    repeats = int(job.get("repeats", 5))
    crop_ms, photo_ms = [], []
    for i in timed:
        for _ in range(repeats):
            t = time.perf_counter()
            predictor(images[i], rects[i])
            crop_ms.append(1e3 * (time.perf_counter() - t))
    for i in job["timing_images"]:
        for _ in range(max(1, repeats // 2)):
            t = time.perf_counter()
            for rect in detector(images[i], UPSAMPLE):
                predictor(images[i], rect)
            photo_ms.append(1e3 * (time.perf_counter() - t))
    # sequential throughput: dlib has no batch API, one face after another on one thread
    t = time.perf_counter()
    count = 0
    while timed and time.perf_counter() - t < 2.0:
        for i in timed:
            predictor(images[i], rects[i])
            count += 1
    throughput = count / (time.perf_counter() - t)
    timing = {
        "method": "dlib shape_predictor_68_face_landmarks",
        "version": dlib.__version__,
        "python": platform.python_version(),
        "detector": f"dlib HOG frontal face detector, upsample {UPSAMPLE}",
        "crop": stats(crop_ms),
        "photo": stats(photo_ms),
        "throughput": throughput,
        "threads": 1,
        "peak_rss_mb": peak_rss_mb(),
    }
    np.savez(out_path, points=points, boxes=boxes, timing=json.dumps(timing))
    print(json.dumps(timing))


def all_faces(job: dict, out_path: str, detector, predictor) -> None:
    """Every face dlib finds in every image, and the whole-photo time on the timing images."""
    points, owner = [], []
    for i, path in enumerate(job["images"]):
        img = load(path)
        for rect in detector(img, UPSAMPLE):
            points.append(shape_points(predictor(img, rect)))
            owner.append(i)
    photo_ms = []
    for i in job["timing_images"]:
        img = load(job["images"][i])
        ms = []
        for _ in range(int(job.get("repeats", 5))):
            t = time.perf_counter()
            for rect in detector(img, UPSAMPLE):
                predictor(img, rect)
            ms.append(1e3 * (time.perf_counter() - t))
        photo_ms.append(float(np.median(ms)))
    timing = {"method": "dlib shape_predictor_68_face_landmarks", "version": dlib.__version__,
              "detector": f"dlib HOG frontal face detector, upsample {UPSAMPLE}", "threads": 1}
    np.savez(out_path, points=np.array(points, np.float64).reshape(-1, 68, 2), image=np.array(owner, np.int64),
             photo_ms=np.array(photo_ms), timing=json.dumps(timing))
    print(json.dumps(timing | {"faces": len(points), "photo_ms": photo_ms}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
