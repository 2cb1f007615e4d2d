"""Batch inference on Ray Data: photos in, one row per face out (``pip install "facekp[ray]"``).

:class:`FaceKeypoints` is a callable class for :meth:`ray.data.Dataset.map_batches`: each Ray
actor builds one :class:`facekp.Detector` and runs :meth:`~facekp.Detector.detect` on every
photo of its batches. :func:`detect_dataset` wires it into a dataset, :func:`run_batch` is
``facekp batch``. The rows (:data:`COLUMNS`) follow ``facekp detect --csv``: one per face, plus
one for each photo without faces and one, with the error, for each photo that could not be read.
Coordinates are image pixels of the upright photo (EXIF orientation applied), pixel-centre
convention (the top-left pixel's centre is (0, 0)), as everywhere in facekp.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import fileio
from .detector import Detector
from .errors import FacekpError
from .face_detectors import check_face_detector
from .images import IMAGE_SUFFIXES, decode_bytes, folder_photos, upright_size
from .keypoints import KEYPOINT_NAMES
from .weights import WEIGHTS_NAME, sha256_file, verify_file

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

#: ``(name, arrow type)`` of every output column, in order. ``face`` (0 = largest) and the face
#: columns are null on a photo's row without faces; ``width``/``height`` (pixels) are null and
#: ``error`` says why on a photo that could not be read.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("image", "string"), ("width", "int32"), ("height", "int32"), ("face", "int32"), ("score", "float64"),
    ("angle", "float64"), ("presence", "float64"), ("box_x0", "float64"), ("box_y0", "float64"), ("box_x1", "float64"), ("box_y1", "float64"),
    *((f"{n}_{c}", "float32") for n in KEYPOINT_NAMES for c in ("x", "y", "confidence")),
    ("error", "string"),
)


def weights_reference(weights: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """What a worker needs to load ``weights`` itself: ``(name or absolute path, sha256 or None)``.

    ``None`` and manifest names travel as they are (the package verifies them against the
    manifest); a ``.safetensors`` file or ``save_pretrained`` folder travels as its absolute
    path with its file's sha256, so a worker refuses another file at that path. Tensors never
    travel.
    """
    if weights is None or not Path(weights).exists():
        return (None if weights is None else os.fspath(weights)), None
    path = Path(weights).resolve()
    return str(path), sha256_file(path / WEIGHTS_NAME if path.is_dir() else path)


class FaceKeypoints:
    """``map_batches`` callable: a batch with an image column -> one row per face (:data:`COLUMNS`).

    Args:
        column: the batch column holding the photos: paths (str), encoded files (bytes, as
            :func:`ray.data.read_binary_files` gives them) or decoded arrays (H, W[, C]).
        path_column: the column naming each photo in the ``image`` output column (for example
            ``"path"`` beside ``read_binary_files``' ``"bytes"``); default: ``column`` when it
            holds paths, else null.
        weights, sha256: from :func:`weights_reference` (None: the bundled default model).
        device: the :class:`~facekp.Detector` device; ``"auto"`` takes the actor's GPU if Ray gave it one.
        threads: CPU threads of this actor's network (default: the backend's choice).
        face_detector, min_score, refine, max_faces, min_presence, backend, precision, face_check: as for
            :meth:`Detector.detect` / :class:`Detector` (the face detector by name: it is built in the actor).

    A photo that cannot be read gives a row with its ``error``; the job never fails on one.
    """

    def __init__(
        self,
        column: str = "image",
        path_column: str | None = None,
        weights: str | None = None,
        sha256: str | None = None,
        *,
        device: str = "auto",
        threads: int | None = None,
        face_detector: str | None = None,
        min_score: float | None = None,
        refine: int | None = None,
        max_faces: int | None = None,
        min_presence: float | None = None,
        backend: str | None = None,
        precision: str = "auto",
        face_check: bool = True,
    ) -> None:
        if sha256 is not None:
            path = Path(weights)
            verify_file(path / WEIGHTS_NAME if path.is_dir() else path, sha256, f"weights {weights}")
        self.detector = Detector(weights, device=device, backend=backend, precision=precision, threads=threads,
                                 face_check=face_check)
        self.column, self.path_column = column, path_column
        # Checked and built once, not per photo.
        self.options = self.detector.detect_options(face_detector, refine, max_faces, min_presence, min_score)._asdict()

    def __call__(self, batch: dict[str, np.ndarray]) -> "pa.Table":
        rows: list[dict[str, Any]] = []
        names = batch[self.path_column] if self.path_column is not None else None
        for i, item in enumerate(batch[self.column]):
            name = names[i] if names is not None else item if isinstance(item, (str, os.PathLike)) else None
            rows += self.rows(item, None if name is None else os.fspath(name))
        return table(rows)

    def rows(self, item: Any, name: str | None) -> list[dict[str, Any]]:
        """The output rows of one photo (a path, encoded bytes or an array)."""
        try:
            image = _decoded(item)
            faces = self.detector.detect(image, **self.options)
            width, height = _size(image)
        except (FacekpError, OSError) as exc:  # unreadable: a missing or corrupt file
            return [{"image": name, "error": str(exc)}]
        photo = {"image": name, "width": width, "height": height}
        if not faces:
            return [photo]
        rows = []
        for k, f in enumerate(faces):
            row = photo | {"face": k, "score": f.score, "angle": f.angle, "presence": f.presence}
            row |= dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), f.box))
            for n, (x, y), c in zip(KEYPOINT_NAMES, f.points, f.confidence):
                row |= {f"{n}_x": x, f"{n}_y": y, f"{n}_confidence": c}
            rows.append(row)
        return rows


def _decoded(item: Any) -> Any:
    """A batch item as :meth:`Detector.detect` takes it: paths and arrays as they are, encoded
    bytes as the upright PIL image (EXIF orientation applied, as for files)."""
    if isinstance(item, (str, os.PathLike, np.ndarray)):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_bytes(item)
    raise FacekpError(f"expected a path, encoded image bytes or an image array, got {type(item).__name__}")


def _size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of what :func:`_decoded` gave, in the pixels the points are in."""
    if isinstance(image, (str, os.PathLike)):
        return upright_size(image)
    if isinstance(image, Image.Image):
        return image.size
    return image.shape[1], image.shape[0]


def table(rows: Sequence[dict[str, Any]]) -> "pa.Table":
    """Rows as an Arrow table with every column of :data:`COLUMNS` (missing values null)."""
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS])
    return pa.Table.from_pylist(list(rows), schema=schema)


def detect_dataset(
    ds: "ray.data.Dataset",
    column: str = "image",
    *,
    path_column: str | None = None,
    weights: str | os.PathLike | None = None,
    workers: int = 1,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    batch_size: int = 16,
    device: str = "auto",
    **detect: Any,
) -> "ray.data.Dataset":
    """``ds`` mapped to face rows by ``workers`` Ray actors (a pool of :class:`FaceKeypoints`).

    Each actor reserves ``cpus_per_worker`` CPUs (its network threads) and ``gpus_per_worker``
    GPUs, and takes ``batch_size`` photos at a time. ``detect`` holds :class:`FaceKeypoints`'
    keyword arguments (``face_detector``, ``min_score``, ``refine``, ``max_faces``, ``min_presence``,
    ``backend``, ``precision``, ``face_check``).
    """
    import ray.data

    if workers < 1 or batch_size < 1:
        raise ValueError(f"workers and batch_size must be positive, got {workers} and {batch_size}")
    name, sha256 = weights_reference(weights)
    kwargs = dict(column=column, path_column=path_column, weights=name, sha256=sha256, device=device,
                  threads=max(1, int(cpus_per_worker)), **detect)
    return ds.map_batches(FaceKeypoints, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
                          num_gpus=gpus_per_worker)


# -- facekp batch ---------------------------------------------------------------------------
def list_photos(inputs: Iterable[str], recursive: bool = False) -> list[str]:
    """Absolute paths of the photos named by ``inputs``: files, folders (:func:`facekp.images.folder_photos`),
    glob patterns, or ``.parquet`` / ``.csv`` lists with a ``path`` column (relative paths taken
    from the list's folder). Workers open these paths, so on a cluster they must lie on storage
    every node sees."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() in (".parquet", ".csv") and path.is_file():
            found += [path.parent / p for p in _path_list(path)]
        elif path.is_dir():
            found += folder_photos(path, recursive)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no files match {item}")
            found += matches
        else:
            raise FileNotFoundError(f"no such file, folder or pattern: {item}")
    if not found:
        raise FacekpError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return [str(p.absolute()) for p in found]


def _path_list(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        paths = pq.read_table(path, columns=["path"]).column("path").to_pylist() if "path" in columns else None
    else:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            paths = [row["path"] for row in reader] if "path" in columns else None
    if paths is None:
        raise FacekpError(f"{path} has no 'path' column (columns: {', '.join(columns) or 'none'}); "
                          "expected a list of photo paths under the header 'path'")
    if any(not p for p in paths):
        raise FacekpError(f"{path}: row {next(i for i, p in enumerate(paths) if not p) + 1} has an empty path")
    return paths


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """``facekp batch``'s own options (the CLI adds the detect and model options it shares with detect)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="photos, folders, glob patterns ('photos/**/*.jpg') or .parquet/.csv lists with a 'path' column")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.parquet", help="the Parquet file to write")
    p.add_argument("--address", help="a running Ray cluster ('auto', or ray://HOST:10001); default: start a local Ray")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, each with its own model (default: 1)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs (network threads) each worker reserves (default: the cluster's CPUs / workers, at most a node's)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per batch sent to a worker (default: 16)")
    p.add_argument("--recursive", "-r", action="store_true", help="also look into subfolders")
    p.add_argument("--force", action="store_true", help="allow replacing OUT.parquet")


def run_batch(args: argparse.Namespace, check_output: Callable[[Path, list[Path], bool], None]) -> None:
    """``facekp batch``: ``check_output(out, inputs, force)`` is the CLI's rule for output files."""
    try:
        import pyarrow.parquet as pq
        import ray
        import ray.data
    except ImportError as exc:
        raise FacekpError(f"facekp batch needs Ray Data and pyarrow ({exc}): pip install \"facekp[ray]\"") from None
    if args.workers < 1 or args.batch_size < 1:
        raise FacekpError(f"--workers and --batch-size must be positive, got {args.workers} and {args.batch_size}")
    if (args.refine is not None and args.refine < 0) or (args.max_faces is not None and args.max_faces < 0):
        raise FacekpError(f"--refine and --max-faces must be >= 0, got {args.refine} and {args.max_faces}")
    check_face_detector(args.face_detector, args.min_score)  # here, not first in every worker
    photos = list_photos(args.inputs, args.recursive)
    check_output(args.out, [Path(p) for p in photos] + [Path(i) for i in args.inputs if Path(i).is_file()], args.force)
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    try:
        cpus = args.cpus_per_worker or _cpus_per_worker(ray.nodes(), args.workers)
        gpus = 1 if args.device.startswith("cuda") or (args.device == "auto" and ray.cluster_resources().get("GPU")) else 0
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # rows in input order
        ds = detect_dataset(ray.data.from_items([{"image": p} for p in photos]), "image", weights=args.weights,
                            workers=args.workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                            batch_size=args.batch_size, device=args.device, face_detector=args.face_detector,
                            min_score=args.min_score, refine=args.refine,
                            max_faces=args.max_faces, min_presence=args.min_presence, backend=args.backend,
                            precision=args.precision, face_check=not args.no_face_check)
        faces = faceless = failed = 0  # rows: a face, a photo without faces, an unreadable photo
        # The whole file or none: a stopped run leaves no half-written OUT, and the write rule holds at the end too.
        with fileio.atomic_path(args.out, inputs=photos, overwrite=args.force) as tmp:
            with pq.ParquetWriter(tmp, table([]).schema) as writer:
                for part in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write_table(part)
                    no_face, errors = part.column("face").null_count, len(part) - part.column("error").null_count
                    faces, faceless, failed = faces + len(part) - no_face, faceless + no_face - errors, failed + errors
    finally:
        ray.shutdown()
    print(f"facekp: {faces} face(s) in {len(photos)} photo(s) ({faceless} without faces, {failed} unreadable); "
          f"wrote {args.out}", file=sys.stderr)


def _cpus_per_worker(nodes: list[dict], workers: int) -> float:
    """An even share of the cluster's CPUs per worker, no more than the largest node holds."""
    alive = [n["Resources"].get("CPU", 0.0) for n in nodes if n.get("Alive")]
    return max(1.0, min(max(alive, default=1.0), sum(alive) // workers))
