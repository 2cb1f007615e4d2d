"""Generated hostile inputs across facekp's whole surface, with per-input timeouts; prints counts.

    python benchmarks/fuzz.py [--n 10000] [--seed 0] [--timeout 10]

Each input goes through the public API (or a CLI in-process) and is classified as: ``ok`` (finite
points of the right shape, or a CLI exit 0), ``documented`` (one of the exceptions that input class
documents; for the CLIs, exit 2 with one ``PROG: error:`` line), ``data loss`` (an input or an
existing output file changed), ``hang`` (ran past the timeout), ``non-finite`` (NaN/inf points) or
``undocumented`` (any other exception type; the first few are printed). The classes: arrays,
tensors, PIL modes, hostile image files (decompression bombs, truncated, garbage, FIFOs, long
names, folders), boxes, calibrations, face-detector angles, configs, weights files, ONNX files,
drawing, video sources, and both CLIs' output rules. A tiny random network keeps it fast: the
contract does not depend on the weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/hostile.py: the hostile files
import hostile  # noqa: E402

from facekp import Detector, FacekpError, HaarFaceDetector, InvalidImageError, WeightsError, draw  # noqa: E402
from facekp.cli import main as cli_main  # noqa: E402
from facekp.config import DetectorConfig  # noqa: E402
from facekp.model import HourglassConfig, StackedHourglass  # noqa: E402
from facekp.train.cli import main as train_main  # noqa: E402
from facekp.video import read_frames  # noqa: E402
from facekp.weights import load_model, save_model  # noqa: E402
from fuzz_harness import CLIError, DataLoss, Hang, NonFinite, alarm, finite, run_cli  # noqa: E402

OUTCOMES = ("ok", "documented", "data loss", "hang", "non-finite", "undocumented")


# -- generators: each yields (name, thunk, documented exception types) ------------------------
def pick(rng, options):
    """One of ``options`` (of any types, unlike Generator.choice, which makes an array of them)."""
    return options[int(rng.integers(len(options)))]


def wild(rng) -> float:
    return float(pick(rng, [np.nan, np.inf, -np.inf, 0.0, 1e-300, 1e300, -1e9, 1e-320, 0.5, 1.0, 37.0,
                             rng.normal() * 10.0 ** rng.integers(-3, 6)]))


def gen_arrays(rng, det, tmp):
    dtypes = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64, np.float16, np.float32,
              np.float64, np.complex64, object]
    dt = pick(rng, dtypes) if rng.random() < 0.5 else pick(rng, [np.uint8, np.uint16, np.float32])
    if rng.random() < 0.5:  # an image layout, so that valid inputs are exercised too
        shape = pick(rng, [(40, 30), (30, 40, 3), (24, 24, 4), (3, 28, 20), (20, 20, 1), (2, 96, 96), (2, 30, 30, 3)])
    else:
        shape = tuple(int(pick(rng, [0, 1, 3, 4, 7, 8, 24, 33])) for _ in range(int(rng.integers(0, 5))))
    scale = 255 if np.dtype(dt).kind in "biu" else pick(rng, [1, 1, 1, 2, -1])
    arr = np.asarray(rng.random(shape) * scale).astype(dt)
    if np.dtype(dt).kind in "fc" and arr.size and rng.random() < 0.15:
        arr.flat[int(rng.integers(arr.size))] = pick(rng, [np.nan, np.inf])
    batch = rng.random() < 0.3
    return "arrays", (lambda: finite(det.predict_batch(arr), len(arr)) if batch and arr.ndim >= 3 else finite(det.predict(arr))), \
        (InvalidImageError,)


def gen_tensors(rng, det, tmp):
    kind = rng.integers(6)
    base = torch.rand(int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    t = [base, base.to(torch.bfloat16), torch.complex(base, base).conj(), base._neg_view(), base.to_sparse(),
         torch.empty(base.shape, device="meta")][kind]
    if rng.random() < 0.3:
        t = t.unsqueeze(0).expand(3, *t.shape) if t.layout == torch.strided and not t.is_meta else t
    return "tensors", (lambda: finite(det.predict(t))), (InvalidImageError,)


PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
             "I;16", "I;16B", "I;16L"]


def gen_pil(rng, det, tmp):
    mode = PIL_MODES[rng.integers(len(PIL_MODES))]
    w, h = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    im = Image.frombytes(mode, (w, h), rng.integers(0, 256, len(Image.new(mode, (w, h)).tobytes()), np.uint8).tobytes())

    def thunk():
        points = det.predict(im)
        finite(points)
        draw(im, points)

    return "PIL modes", thunk, (InvalidImageError,)


def gen_files(rng, det, tmp):
    kind = pick(rng, ["bomb", "truncated", "garbage", "fifo", "long", "folder", "missing", "empty", "good", "nul"])
    path = tmp / f"f{rng.integers(1 << 62)}.{pick(rng, ['png', 'jpg', 'bmp', 'tif'])}"
    if kind == "bomb":
        fmt = pick(rng, sorted(hostile.BOMBS))
        path = path.with_suffix("." + fmt)
        path.write_bytes(hostile.BOMBS[fmt](int(pick(rng, [13_000, 60_000, 100_000]))))
    elif kind == "truncated":
        path.write_bytes(hostile.truncated_jpeg(int(rng.integers(1000)), float(rng.uniform(0.05, 0.95))))
    elif kind == "garbage":
        path.write_bytes(hostile.garbage(int(rng.integers(1000)), int(rng.integers(0, 2000))))
    elif kind == "fifo":
        hostile.make_fifo(path)
    elif kind == "long":
        path = tmp / ("x" * int(rng.integers(256, 400)) + ".jpg")
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "good":
        Image.fromarray(rng.integers(0, 256, (40, 50), np.uint8)).save(path.with_suffix(".png"))
        path = path.with_suffix(".png")
    elif kind == "nul":
        path = str(path) + "\0x"
    use = pick(rng, ["predict", "batch", "rgb"])

    def thunk():
        if use == "predict":
            finite(det.predict(path))
        elif use == "batch":
            finite(det.predict_batch([path]), 1)
        else:
            draw(path, np.zeros((15, 2)))

    return "image files", thunk, (InvalidImageError, FileNotFoundError)


def gen_boxes(rng, det, tmp):
    n = int(rng.integers(0, 4))
    cols = int(pick(rng, [4, 4, 5, 3]))
    b = rng.uniform(-100, 300, (n, cols))
    b[:, 2:4] = b[:, 0:2] + rng.uniform(-10, 150, (n, 2)) if cols >= 4 else b[:, 2:4]
    if n and rng.random() < 0.5:
        b.flat[int(rng.integers(b.size))] = wild(rng)
    photo = PHOTO

    def thunk():
        faces = det.detect(photo, boxes=b, refine=int(rng.integers(0, 3)))
        for f in faces:
            finite(f.points)
            if not (np.isfinite(f.box).all() and np.isfinite(f.confidence).all() and np.isfinite(f.score)):
                raise NonFinite("non-finite face fields")

    return "boxes", thunk, (ValueError, TypeError)


def gen_calibrations(rng, det, tmp):
    value = (lambda: wild(rng)) if rng.random() < 0.5 else (lambda: float(rng.uniform(-0.5, 1.0)))
    calib = {"scale": value(), "offset": [value() for _ in range(int(pick(rng, [2, 2, 0, 1, 3])))]}
    if rng.random() < 0.1:
        calib = pick(rng, ["haar", 3, None, [0.3]])

    def thunk():
        for f in det.detect(PHOTO, boxes=[[40, 30, 100, 90]], calibration=calib):
            finite(f.points)

    return "calibrations", thunk, (ValueError, TypeError)


def gen_angles(rng, det, tmp):
    angles = np.array([wild(rng) for _ in range(2)])
    shift = wild(rng)

    def fd(image):
        return np.array([[40.0, 30, 100, 90], [40 + shift, 30 + shift, 100 + shift, 90 + shift]]), np.ones(2), angles

    def thunk():
        for f in det.detect(PHOTO, face_detector=fd):
            finite(f.points)

    return "face detectors", thunk, (ValueError, TypeError)


def gen_haar(rng, det, tmp):
    kwargs = {k: v for k, v in {"scale_factor": wild(rng), "min_neighbors": pick(rng, [-1, 3, 10**9, 2.5]),
                                "min_size": pick(rng, [0, 10**12, -5, np.nan, 24]),
                                "angles": tuple(wild(rng) for _ in range(int(rng.integers(0, 3))))}.items()
              if rng.random() < 0.5}

    def thunk():
        boxes, scores, angles = HaarFaceDetector(**kwargs)(PHOTO)
        if not (np.isfinite(boxes).all() and np.isfinite(angles).all()):
            raise NonFinite("Haar boxes")

    return "Haar settings", thunk, (ValueError, TypeError)


HG_FIELDS = ["num_stacks", "depth", "channels", "heatmap_stride", "input_size", "num_keypoints", "blocks"]


def gen_configs(rng, det, tmp):
    data = json.loads(TINY_META["facekp_config"])  # the weights' own config, then mutated
    for _ in range(int(rng.integers(0, 3))):
        field = HG_FIELDS[rng.integers(len(HG_FIELDS))]
        data["hourglass"][field] = pick(rng, [2**31, 10**6, 96000, 0, -1, 1, 2, 16.5, "3", True, None, 1e300])
    if rng.random() < 0.3:
        data["sigma"] = pick(rng, [1e300, np.nan, np.inf, 0.0, -1.0, "1", 2.0, None])
    if rng.random() < 0.3:
        data["box_to_frame"] = pick(rng, ["haar", 3, {"scale": 1e-300}, {"scale": 0.3, "offset": [1]}, None])
    text = json.dumps(data)
    if rng.random() < 0.1:
        text = pick(rng, ["[" * 50_000 + "]" * 50_000, text[: len(text) // 2], "\udcff"])
    folder = tmp / f"m{rng.integers(1 << 62)}"
    folder.mkdir()
    (folder / "config.json").write_bytes(text.encode("utf-8", "surrogateescape") if rng.random() < 0.95 else b"\xff\xfe\x80")
    (folder / "model.safetensors").write_bytes(TINY_WEIGHTS.read_bytes())
    return "configs", (lambda: finite(Detector(folder, device="cpu").predict(PHOTO))), (WeightsError, ValueError, TypeError)


def gen_weights(rng, det, tmp):
    from safetensors.torch import save_file

    kind = rng.integers(5)
    path = tmp / f"w{rng.integers(1 << 62)}.safetensors"
    state = {k: v.clone() for k, v in TINY_STATE.items()}
    meta = dict(TINY_META)
    if kind == 0:
        dtype = [torch.int32, torch.bool, torch.complex64, torch.float16, torch.float64][rng.integers(5)]
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    elif kind == 1:
        name = list(state)[rng.integers(len(state))]
        if state[name].is_floating_point():
            state[name].view(-1)[0] = pick(rng, [np.nan, np.inf, 1e30])
    elif kind == 2:
        meta = {"facekp_config": json.dumps(json.loads(meta["facekp_config"]) | {"sigma": pick(rng, ["nan", 1e300, -1])})}
    if kind == 3:
        path.write_bytes(hostile.garbage(int(rng.integers(1000)), int(rng.integers(0, 500))))
    elif kind == 4:
        torch.save({"x": 1}, path)  # a pickle named .safetensors
    else:
        save_file(state, str(path), metadata={k: str(v) for k, v in meta.items()})
    return "weights", (lambda: finite(Detector(path, device="cpu").predict(PHOTO))), (WeightsError, FileNotFoundError)


def gen_onnx(rng, det, tmp):
    import onnx

    path = tmp / f"g{rng.integers(1 << 62)}.onnx"
    kind = rng.integers(4)
    if kind == 0:
        path.write_bytes(hostile.garbage(int(rng.integers(1000)), int(rng.integers(0, 400))))
    else:
        proto = onnx.load_from_string(TINY_ONNX)
        value = [None, "not json", '{"format_version": 1}', "[]", json.dumps(json.loads(TINY_META["facekp_config"])
                 | {"hourglass": {"channels": 10**9}})][rng.integers(5)]
        del proto.metadata_props[:]
        if value is not None:
            p = proto.metadata_props.add()
            p.key, p.value = "facekp_config", value
        path.write_bytes(proto.SerializeToString())
    return "ONNX files", (lambda: finite(Detector(TINY_DIR, device="cpu", backend="onnx", onnx_model=path).predict(PHOTO))), \
        (WeightsError, FacekpError, FileNotFoundError)


def gen_draw(rng, det, tmp):
    pts = np.array([[wild(rng), wild(rng)] for _ in range(15)])
    radius = pick(rng, [None, np.nan, np.inf, -1, 0, 3, 1e9])
    what = pick(rng, ["points", "mixed", "faces"])

    def thunk():
        if what == "points":
            out = draw(PHOTO, pts, radius=radius)
        else:
            faces = det.detect(PHOTO, boxes=[[40, 30, 100, 90]])
            out = draw(PHOTO, faces + ([pts] if what == "mixed" else []), radius=radius)
        if out.shape != (*PHOTO.shape, 3):
            raise NonFinite("drawing of the wrong shape")

    return "draw", thunk, (ValueError, TypeError)


def gen_video(rng, det, tmp):
    source = pick(rng, [-1, True, 1.5, None, "nope.mp4", str(tmp), "fifo", "garbage"])
    if source == "fifo":
        source = hostile.make_fifo(tmp / f"v{rng.integers(1 << 62)}.mp4")
    elif source == "garbage":
        source = tmp / f"v{rng.integers(1 << 62)}.mp4"
        source.write_bytes(hostile.garbage())
    return "video sources", (lambda: list(read_frames(source, max_frames=2))), (ValueError, TypeError, FileNotFoundError,
                                                                                FacekpError)


def gen_cli_outputs(rng, det, tmp):
    """Output files: an existing file must survive a run without --force; an input even with it."""
    case = tmp / f"c{rng.integers(1 << 62)}"
    case.mkdir()
    photo = case / "photo.png"
    Image.fromarray(PHOTO).save(photo)
    existing = case / pick(rng, ["out.json", "out.csv", "out.png", "out.onnx"])
    existing.write_bytes(b"keep")
    force = bool(rng.random() < 0.5)
    target = pick(rng, ["existing", "input"])
    out = existing if target == "existing" else photo
    model = ["--weights", TINY_DIR, "--device", "cpu"]
    argv = {
        ".json": ["detect", photo, "--json", out, *model],
        ".csv": ["detect", photo, "--csv", out, *model],
        ".png": ["predict", photo, "--draw", out, *model],
        ".onnx": ["export-onnx", out, "--weights", TINY_DIR / "model.safetensors"] if target == "existing"
        else ["export-onnx", TINY_COPY, "--weights", TINY_COPY],
    }[existing.suffix]
    protected = {p: p.read_bytes() for p in (photo, TINY_COPY, *([] if force else [existing]))}

    def thunk():
        try:
            run_cli(cli_main, [*argv, *(["--force"] if force else [])], "facekp")
        finally:
            for p, data in protected.items():
                if p.read_bytes() != data:
                    raise DataLoss(f"{p} was replaced by {argv[0]}")

    return "facekp CLI outputs", thunk, (CLIError,)


def gen_train_cli(rng, det, tmp):
    case = tmp / f"t{rng.integers(1 << 62)}"
    case.mkdir()
    data = case / "training.csv"
    data.write_bytes(KAGGLE.read_bytes())
    kind = pick(rng, ["json-onto-data", "plots-exist", "bad-settings", "big-field", "garbage-init", "submit-onto-test"])
    sentinel = case / "val-errors.png"
    sentinel.write_bytes(b"keep")
    force = ["--force"] if rng.random() < 0.5 else []
    argv = {
        "json-onto-data": ["eval", "--weights", TINY_DIR, "--data", data, "--split", "all", "--device", "cpu", "--json", data, *force],
        "plots-exist": ["eval", "--weights", TINY_DIR, "--data", data, "--split", "all", "--device", "cpu", "--plots", case],
        # A setting that is valid after all (--epochs 1000000) trains one step of a small network, not for
        # hours: one step of the default network takes up to 30 s on a loaded 2-core VM, past the timeout.
        "bad-settings": ["fit", "--data", data, "--out", case / "run", "--device", "cpu", "--max-steps", "1",
                         "--stacks", "1", "--depth", "2", "--channels", "8",
                         pick(rng, ["--batch-size", "--epochs", "--sigma", "--lr", "--stacks", "--channels"]),
                         str(pick(rng, [0, -1, "nan", "inf", 10**6, 2**31]))],
        "big-field": ["fit", "--data", case / "big.csv", "--out", case / "run", "--device", "cpu"],
        "garbage-init": ["fit", "--data", data, "--out", case / "run", "--device", "cpu", "--init", case / "junk.safetensors"],
        "submit-onto-test": ["submit", "--weights", TINY_DIR, "--test", data, "--lookup", data, "--out", data, "--device", "cpu"],
    }[kind]
    (case / "big.csv").write_text(KAGGLE.read_text().splitlines()[0] + "\n" + "1," * 30 + '"' + "9 " * 70_000 + '"\n')
    (case / "junk.safetensors").write_bytes(hostile.garbage(int(rng.integers(1000))))
    protected = {data: data.read_bytes(), sentinel: sentinel.read_bytes()}

    def thunk():
        try:
            run_cli(train_main, argv, "facekp-train")
        finally:
            for p, content in protected.items():
                if p.read_bytes() != content:
                    raise DataLoss(f"{p} was replaced by facekp-train {kind}")

    return "facekp-train CLI", thunk, (CLIError,)


#: class -> (generator, share of the inputs). CLI and file classes cost more per input.
GENERATORS = [(gen_arrays, 14), (gen_tensors, 6), (gen_pil, 8), (gen_files, 10), (gen_boxes, 12), (gen_calibrations, 8),
              (gen_angles, 8), (gen_haar, 3), (gen_configs, 6), (gen_weights, 6), (gen_onnx, 3), (gen_draw, 8),
              (gen_video, 3), (gen_cli_outputs, 3), (gen_train_cli, 2)]


def setup(tmp: Path) -> Detector:
    global PHOTO, TINY_DIR, TINY_WEIGHTS, TINY_STATE, TINY_META, TINY_ONNX, TINY_COPY, KAGGLE
    from safetensors import safe_open
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic import write_kaggle_csv

    torch.manual_seed(0)
    config = DetectorConfig(hourglass=HourglassConfig(num_stacks=1, channels=16))
    TINY_DIR = tmp / "tiny"
    TINY_WEIGHTS = save_model(StackedHourglass(config.hourglass).eval(), config, TINY_DIR)
    TINY_STATE = load_file(str(TINY_WEIGHTS))
    with safe_open(str(TINY_WEIGHTS), "pt") as f:
        TINY_META = f.metadata()
    TINY_COPY = tmp / "mine.safetensors"
    TINY_COPY.write_bytes(TINY_WEIGHTS.read_bytes())
    from facekp.onnx import onnx_bytes

    TINY_ONNX = onnx_bytes(*load_model(TINY_WEIGHTS))
    KAGGLE = tmp / "kaggle.csv"
    write_kaggle_csv(KAGGLE, 12)
    PHOTO = (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)
    return Detector(TINY_DIR, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="generated inputs in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a hang")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples: list[str] = []
    weights = np.array([w for _, w in GENERATORS], float)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        det = setup(tmp)
        for i in range(args.n):
            gen = GENERATORS[rng.choice(len(GENERATORS), p=weights / weights.sum())][0]
            work = tmp / f"i{i}"
            work.mkdir()
            name, thunk, documented = gen(rng, det, work)
            outcome = "ok"
            try:
                with alarm(args.timeout):
                    thunk()
            except Hang:
                outcome = "hang"
            except DataLoss as exc:
                outcome, detail = "data loss", str(exc)
            except NonFinite as exc:
                outcome, detail = "non-finite", str(exc)
            except documented:
                outcome = "documented"
            except Exception as exc:  # noqa: BLE001 - the point is to catch what nobody documented
                outcome, detail = "undocumented", f"{type(exc).__name__}: {exc}"[:300]
                if len(examples) < 10:
                    examples.append(f"{name}: {detail}\n    {traceback.format_exc().splitlines()[-3].strip()}")
            counts[name][outcome] += 1
            if outcome in ("data loss", "non-finite") and len(examples) < 10:
                examples.append(f"{name}: {outcome}: {detail}")
    elapsed = time.perf_counter() - start
    print(f"facekp fuzz: {args.n} generated inputs, seed {args.seed}, timeout {args.timeout:g} s per input, "
          f"{elapsed:.0f} s on {os.cpu_count()} CPU(s)\n")
    print(f"| {'class':<20} | {'inputs':>6} | " + " | ".join(f"{o:>12}" for o in OUTCOMES) + " |")
    print(f"|{'-' * 22}|{'-' * 8}|" + "|".join("-" * 14 for _ in OUTCOMES) + "|")
    total = collections.Counter()
    for name in sorted(counts):
        total.update(counts[name])
        print(f"| {name:<20} | {sum(counts[name].values()):>6} | " + " | ".join(f"{counts[name][o]:>12}" for o in OUTCOMES) + " |")
    print(f"| {'all':<20} | {sum(total.values()):>6} | " + " | ".join(f"{total[o]:>12}" for o in OUTCOMES) + " |")
    for e in examples:
        print("  " + e)
    bad = total["data loss"] + total["hang"] + total["non-finite"] + total["undocumented"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
