"""MediaPipe Face Mesh (0.10.21, 468 points, model in the wheel) on the benchmark's faces (runs in
its own venv: mediapipe pins numpy<2). Not part of facekp; see benchmarks/README.md.

    python mediapipe_runner.py JOB.json OUT.npz

JOB.json as for dlib_runner.py. OUT.npz: points (N, 468, 2) float64 in pixel-centre coordinates
(MediaPipe's normalized x * width - 0.5), NaN where no face was found; "timing" (JSON string).

With "all_faces": true (no hints), every face of every image (up to MAX_FACES), as in
dlib_runner.py: points (M, 468, 2), image (M,), photo_ms (T,) and "timing".
"""

from __future__ import annotations

import json
import platform
import sys
import time

import mediapipe as mp
import numpy as np
from PIL import Image


def load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def mesh_points(landmarks, width: int, height: int) -> np.ndarray:
    return np.array([[p.x * width - 0.5, p.y * height - 0.5] for p in landmarks.landmark], dtype=np.float64)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM restarts at exec; ru_maxrss keeps the parent's)."""
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def stats(ms: list[float]) -> dict:
    if not ms:  # nothing timed (a calibration-only job, or no face found)
        return {"median_ms": None, "p90_ms": None, "n": 0}
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "n": int(len(a))}


#: Faces Face Mesh reports per image in the all-faces mode (the benchmark's groups hold up to 10).
MAX_FACES = 10


def all_faces(job: dict, out_path: str) -> None:
    """Every face Face Mesh finds in every image, and the whole-photo time on the timing images."""
    points, owner, photo_ms = [], [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=False) as fm:
        for i, path in enumerate(job["images"]):
            img = load(path)
            h, w = img.shape[:2]
            for face in fm.process(img).multi_face_landmarks or []:
                points.append(mesh_points(face, w, h))
                owner.append(i)
        for i in job["timing_images"]:
            img = load(job["images"][i])
            ms = []
            for _ in range(int(job.get("repeats", 5))):
                t = time.perf_counter()
                fm.process(img)
                ms.append(1e3 * (time.perf_counter() - t))
            photo_ms.append(float(np.median(ms)))
    timing = {"method": "MediaPipe Face Mesh", "version": mp.__version__,
              "detector": f"MediaPipe BlazeFace short-range (static_image_mode=True, max_num_faces={MAX_FACES})",
              "threads": "MediaPipe default (TFLite XNNPACK)"}
    np.savez(out_path, points=np.array(points, np.float64).reshape(-1, 468, 2), image=np.array(owner, np.int64),
             photo_ms=np.array(photo_ms), timing=json.dumps(timing))
    print(json.dumps(timing | {"faces": len(points), "photo_ms": photo_ms}))


def main(job_path: str, out_path: str) -> None:
    job = json.loads(open(job_path).read())
    if job.get("all_faces"):
        return all_faces(job, out_path)
    images = [load(p) for p in job["images"]]
    n = len(images)
    points = np.full((n, 468, 2), np.nan)
    face_mesh = mp.solutions.face_mesh
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4, refine_landmarks=False) as fm:
        for i, (img, hint) in enumerate(zip(images, job["hints"])):
            result = fm.process(img)
            if not result.multi_face_landmarks:
                continue
            h, w = img.shape[:2]
            faces = [mesh_points(f, w, h) for f in result.multi_face_landmarks]
            dist = [np.hypot(*(f.mean(axis=0) - hint)) for f in faces]
            points[i] = faces[int(np.argmin(dist))]
        # full photo: static mode runs the face detector and the mesh model on every image
        photo_ms = []
        repeats = int(job.get("repeats", 5))
        for i in job["timing_images"]:
            for _ in range(max(1, repeats // 2)):
                t = time.perf_counter()
                fm.process(images[i])
                photo_ms.append(1e3 * (time.perf_counter() - t))
    # one face, landmarks only: in tracking mode (static_image_mode=False) the detector runs on the
    # first frame, then the mesh model alone follows the face: its per-frame cost is the "crop" cost
    found = [i for i in job["timing_images"] if not np.isnan(points[i]).any()]
    crop_ms = []
    for i in found:
        with face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False) as fm:
            fm.process(images[i])
            for _ in range(repeats):
                t = time.perf_counter()
                fm.process(images[i])
                crop_ms.append(1e3 * (time.perf_counter() - t))
    timing = {
        "method": "MediaPipe Face Mesh",
        "version": mp.__version__,
        "python": platform.python_version(),
        "detector": "MediaPipe BlazeFace short-range (static_image_mode=True)",
        "crop": stats(crop_ms),
        "photo": stats(photo_ms),
        "throughput": 1e3 / float(np.median(crop_ms)) if crop_ms else None,
        "threads": "MediaPipe default (TFLite XNNPACK)",
        "peak_rss_mb": peak_rss_mb(),
    }
    np.savez(out_path, points=points, timing=json.dumps(timing))
    print(json.dumps(timing))


if __name__ == "__main__":
    main(*sys.argv[1:3])
