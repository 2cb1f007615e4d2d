"""The peers beside facekp: dlib's 68-point shape predictor and MediaPipe's Face Mesh, each run in
its own virtualenv through benchmarks/peers/*_runner.py (JSON job in, .npz out), mapped to the 15
keypoints and scored like facekp. Public facekp API only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from measure import ROOT, metrics
from report import fmt



MEDIAPIPE_CANDIDATES: dict[str, list[tuple[int, ...]]] = {
    # subject's left eye is FACEMESH_LEFT_EYE (image right); rings are the eye contours
    "left_eye_center": [(249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466), (386, 374), (263, 362)],
    "right_eye_center": [(7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246), (159, 145), (33, 133)],
    "left_eye_inner_corner": [(362,), (398,), (382,), (463,)],
    "left_eye_outer_corner": [(263,), (466,), (249,), (359,)],
    "right_eye_inner_corner": [(133,), (173,), (155,), (243,)],
    "right_eye_outer_corner": [(33,), (246,), (7,), (130,)],
    "left_eyebrow_inner_end": [(285,), (336,), (285, 336), (8, 285)],
    "left_eyebrow_outer_end": [(276,), (300,), (276, 300), (383,)],
    "right_eyebrow_inner_end": [(55,), (107,), (55, 107), (8, 55)],
    "right_eyebrow_outer_end": [(46,), (70,), (46, 70), (156,)],
    "nose_tip": [(1,), (4,), (5,), (19,), (94,), (1, 4)],
    "mouth_left_corner": [(291,), (308,), (409,), (375,)],
    "mouth_right_corner": [(61,), (78,), (185,), (146,)],
    "mouth_center_top_lip": [(0,), (13,), (11,), (12,), (0, 13)],
    "mouth_center_bottom_lip": [(17,), (14,), (16,), (15,), (17, 14)],
}


def fit_mediapipe_mapping(samples, mesh: np.ndarray) -> list[tuple[int, ...]]:
    """For each keypoint, the candidate (vertex or mean of vertices) nearest to the annotations
    on training faces, measured in the canonical frame."""
    from facekp.keypoints import KEYPOINT_NAMES
    from facekp.geometry import apply_affine

    found = np.isfinite(mesh).all(axis=(1, 2))
    truth = np.stack([apply_affine(s.frame, s.points.astype(np.float64)) for s, f in zip(samples, found) if f])
    frames = [s.frame for s, f in zip(samples, found) if f]
    mesh_f = np.stack([apply_affine(m, p) for m, p in zip(frames, mesh[found])])
    mapping = []
    for k, name in enumerate(KEYPOINT_NAMES):
        errs = [np.linalg.norm(mesh_f[:, list(c)].mean(axis=1) - truth[:, k], axis=-1).mean() for c in MEDIAPIPE_CANDIDATES[name]]
        mapping.append(MEDIAPIPE_CANDIDATES[name][int(np.argmin(errs))])
    return mapping


def map_mesh(mesh: np.ndarray, mapping) -> np.ndarray:
    return np.stack([mesh[:, list(c)].mean(axis=1) for c in mapping], axis=1)


def run_peer(python: str, runner: str, samples, data: Path, work: Path, name: str, timing_n: int, repeats: int) -> dict:
    job = {
        "images": [str(data / s.name) for s in samples],
        "hints": [s.points.astype(np.float64).mean(axis=0).tolist() for s in samples],
        "timing_images": list(range(min(timing_n, len(samples)))),
        "repeats": repeats,
    }
    job_path, out_path = work / f"{name}.json", work / f"{name}.npz"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run([python, str(ROOT / "benchmarks" / "peers" / runner), str(job_path), str(out_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{proc.stderr[-3000:]}")
    data_ = np.load(out_path)
    out = {k: data_[k] for k in data_.files if k != "timing"}
    out["timing"] = json.loads(str(data_["timing"]))
    return out


def measure_peers(dlib_python: str, mediapipe_python: str, samples, train, data: Path, work: Path, info: dict,
                  quick: bool) -> dict:
    """Run the peers that are installed on the validation ``samples`` (and on training faces, for
    dlib's box calibration and MediaPipe's vertex mapping, recorded in ``info``); their raw outputs."""
    import sys

    peers_raw = {}
    timing_n, repeats = (10, 3) if quick else (100, 5)
    rng = np.random.default_rng(0)
    calib = [train[i] for i in rng.choice(len(train), size=min(len(train), 100 if quick else 400), replace=False)]
    if Path(dlib_python).exists():
        print("# dlib", file=sys.stderr)
        peers_raw["dlib"] = run_peer(dlib_python, "dlib_runner.py", samples, data, work, "dlib_val", timing_n, repeats)
        calib_dlib = run_peer(dlib_python, "dlib_runner.py", calib, data, work, "dlib_train", 0, 1)
        calibration = fit_peer_calibration(calib, calib_dlib["boxes"], "dlib_hog")
        np.savez(work / "dlib_boxes.npz", boxes=peers_raw["dlib"]["boxes"], calibration=json.dumps(calibration))
        info["box_calibration"] = calibration
    if Path(mediapipe_python).exists():
        print("# mediapipe", file=sys.stderr)
        peers_raw["mediapipe"] = run_peer(mediapipe_python, "mediapipe_runner.py", samples, data, work, "mp_val", timing_n, repeats)
        calib_mp = run_peer(mediapipe_python, "mediapipe_runner.py", calib, data, work, "mp_train", 0, 1)
        info["mediapipe_mapping"] = fit_mediapipe_mapping(calib, calib_mp["points"])
    return peers_raw


def fit_peer_calibration(samples, boxes: np.ndarray, name: str) -> dict:
    """The box calibration of a peer's face boxes ``(N, 4)`` (NaN rows: no face found), fitted by
    :func:`facekp.calibration.fit_to_boxes` on training ``samples``; as a dict (JSON)."""
    from facekp.calibration import fit_to_boxes

    found = [b[None] if np.isfinite(b).all() else np.empty((0, 4)) for b in np.asarray(boxes, np.float64)]
    return fit_to_boxes(samples, found, name).to_dict()


def peer_rows(info, results, peers_raw, samples, work: Path) -> dict:
    from facekp.keypoints import KEYPOINT_NAMES
    from facekp.train.data import map_68_to_15

    rows, plot_pts, notes = [], [], []
    fp = next((r for r in results if r["spec"]["label"] == "torch fp32"), None)
    if samples is None:
        return {"rows": rows, "plot": plot_pts, "notes": ["no validation data: accuracy columns skipped"]}
    if fp is None:  # no CPU rows (--device cuda)
        return {"rows": rows, "plot": plot_pts, "notes": notes}
    facekp_pts = np.load(work / "facekp_points.npy")

    def facekp_on(found) -> str:
        pts = facekp_pts.copy()
        pts[~found] = np.nan
        return fmt(metrics(samples, pts)["rmse"], 3)

    all_found = np.ones(len(samples), bool)
    acc = fp["accuracy"]
    fastest = min((r for r in results if "single" in r and r["spec"]["device"] == "cpu"), key=lambda r: r["single"]["median_ms"])
    photo = fp["photo"]
    photo_ms = photo.get("median_ms")
    rows.append(["**facekp** (torch fp32)", "annotation frame (oracle)", f"{acc['found']} / {acc['faces']}", fmt(acc["rmse"], 3),
                 fmt(acc["nme"], 4), facekp_on(all_found),
                 f"{fp['single']['median_ms']:.2f} / {fp['single']['p90_ms']:.2f}", fmt(photo_ms, 2) if photo_ms else "n/a¹",
                 f"{max(fp['throughput'].values()):.0f}", f"{fp['peak_rss_mb']:.0f}"])
    plot_pts.append({"label": "facekp torch fp32", "crop_ms": fp["single"]["median_ms"], "photo_ms": photo_ms, "rmse": acc["rmse"], "color": "C0"})
    if fastest is not fp:
        a = fastest.get("accuracy", acc)
        rows.append([f"**facekp** ({fastest['spec']['label']})", "annotation frame (oracle)", f"{a['found']} / {a['faces']}", fmt(a["rmse"], 3),
                     fmt(a["nme"], 4), facekp_on(all_found),
                     f"{fastest['single']['median_ms']:.2f} / {fastest['single']['p90_ms']:.2f}", "–", f"{max(fastest['throughput'].values()):.0f}",
                     f"{fastest['peak_rss_mb']:.0f}"])
        plot_pts.append({"label": f"facekp {fastest['spec']['label']}", "crop_ms": fastest["single"]["median_ms"], "photo_ms": None, "rmse": a["rmse"], "color": "C0", "marker": "s"})
    fa = fp.get("accuracy_photo")
    if fa:
        rows.append(["**facekp** (torch fp32)", "own detector (`Detector.detect`)", f"{fa['found']} / {fa['faces']}", fmt(fa["rmse"], 3),
                     fmt(fa["nme"], 4), "(this row)", f"{fp['single']['median_ms']:.2f} / {fp['single']['p90_ms']:.2f}",
                     fmt(photo_ms, 2), f"{max(fp['throughput'].values()):.0f}", f"{fp['peak_rss_mb']:.0f}"])
        plot_pts.append({"label": "facekp detect+keypoints", "crop_ms": None, "photo_ms": photo_ms, "rmse": fa["rmse"], "color": "C0", "marker": "D"})
    if "dlib" in peers_raw:
        d = peers_raw["dlib"]
        pts = np.full((len(samples), 15, 2), np.nan)
        found = np.isfinite(d["points"]).all(axis=(1, 2))
        for i in np.flatnonzero(found):
            pts[i] = map_68_to_15(d["points"][i])
        m = metrics(samples, pts)
        t = d["timing"]
        rows.append([f"dlib {t['version']} 68-pt shape predictor → 15", "dlib HOG box", f"{m['found']} / {m['faces']}", fmt(m["rmse"], 3),
                     fmt(m["nme"], 4), facekp_on(found), f"{t['crop']['median_ms']:.2f} / {t['crop']['p90_ms']:.2f}",
                     f"{t['photo']['median_ms']:.2f}", f"{t['throughput']:.0f} (1 thread)", f"{t['peak_rss_mb']:.0f}"])
        plot_pts.append({"label": "dlib 68-pt", "crop_ms": t["crop"]["median_ms"], "photo_ms": t["photo"]["median_ms"], "rmse": m["rmse"], "color": "C1"})
        fb = fp.get("accuracy_dlib_boxes")
        if fb:
            rows.append(["**facekp** (torch fp32)", "dlib HOG box (calibrated)", f"{fb['found']} / {fb['faces']}", fmt(fb["rmse"], 3),
                         fmt(fb["nme"], 4), "(this row)", f"{fp['single']['median_ms']:.2f} / {fp['single']['p90_ms']:.2f}",
                         fmt(t["photo"]["median_ms"] - t["crop"]["median_ms"] + fp["single"]["median_ms"], 2) + "²",
                         f"{max(fp['throughput'].values()):.0f}", f"{fp['peak_rss_mb']:.0f}"])
            plot_pts.append({"label": "facekp on dlib boxes", "crop_ms": fp["single"]["median_ms"],
                             "photo_ms": t["photo"]["median_ms"] - t["crop"]["median_ms"] + fp["single"]["median_ms"], "rmse": fb["rmse"], "color": "C0", "marker": "^"})
            cal = info.get("box_calibration")
            notes.append(f"facekp on dlib boxes: the box is turned into facekp's frame by a calibration fitted on training faces "
                         f"(`facekp.calibration.fit_to_boxes`: keypoint RMS radius = {cal['scale']:.3f} × box side, centroid = box centre + "
                         f"({cal['offset'][0]:+.3f}, {cal['offset'][1]:+.3f}) × side); "
                         "² its photo latency is dlib's HOG detection time + facekp's crop latency.")
        notes.append(f"dlib: {t['detector']}; the detection nearest the annotated face is kept. 68 iBUG points → 15 with "
                     "`facekp.train.data.map_68_to_15` (the same mapping that made the annotations).")
    if "mediapipe" in peers_raw:
        mp_ = peers_raw["mediapipe"]
        mapping = info["mediapipe_mapping"]
        found = np.isfinite(mp_["points"]).all(axis=(1, 2))
        pts = np.full((len(samples), 15, 2), np.nan)
        pts[found] = map_mesh(mp_["points"][found], mapping)
        m = metrics(samples, pts)
        t = mp_["timing"]
        rows.append([f"MediaPipe {t['version']} Face Mesh (468) → 15", "own detector (BlazeFace)", f"{m['found']} / {m['faces']}", fmt(m["rmse"], 3),
                     fmt(m["nme"], 4), facekp_on(found), f"{t['crop']['median_ms']:.2f} / {t['crop']['p90_ms']:.2f}",
                     f"{t['photo']['median_ms']:.2f}", f"{t['throughput']:.0f} (sequential)", f"{t['peak_rss_mb']:.0f}"])
        plot_pts.append({"label": "MediaPipe Face Mesh", "crop_ms": t["crop"]["median_ms"], "photo_ms": t["photo"]["median_ms"], "rmse": m["rmse"], "color": "C2"})
        desc = "; ".join(f"{n}: {'+'.join(map(str, c)) if len(c) <= 3 else 'mean of the ' + str(len(c)) + '-point eye contour'}"
                         for n, c in zip(KEYPOINT_NAMES, mapping))
        notes.append("MediaPipe: 468 mesh points → 15 by picking, for each keypoint, the mesh vertex (or mean of vertices) "
                     "among anatomical candidates that lies nearest the annotations on 400 training faces (never the "
                     f"validation faces): {desc}. Mesh coordinates are normalized × size − 0.5 (pixel-centre convention). "
                     "Its crop latency is the mesh model alone (tracking mode, detector skipped); photo latency runs "
                     "BlazeFace + mesh (static_image_mode=True).")
    notes.append("facekp \"annotation frame\" crops each face through its annotated frame, so the framing is ideal; "
                 "the dlib-box row shows facekp framed by a real face detector.")
    return {"rows": rows, "plot": plot_pts, "notes": notes}
