"""Model files: safetensors + config.json, sha256 verification, the manifest and the Hub.

A saved model is a folder with ``config.json`` (:class:`~facekp.config.DetectorConfig`) and
``model.safetensors``; the config is also embedded in the safetensors metadata, so a single
``.safetensors`` file is self-describing. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import fileio, validate
from .config import DetectorConfig
from .errors import ChecksumError, WeightsError
from .model import StackedHourglass

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_METADATA_KEY = "facekp_config"


# -- files ---------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: StackedHourglass, config: DetectorConfig, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns the weights path.

    Refuses to replace existing files unless ``overwrite`` is True.
    """
    folder = Path(folder)
    targets = [folder / CONFIG_NAME, folder / WEIGHTS_NAME]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass overwrite=True to replace them")
    for p in targets:
        fileio.check_output(p, overwrite=overwrite)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    expected = StackedHourglass(config.hourglass).state_dict()
    if {k: tuple(v.shape) for k, v in expected.items()} != {k: tuple(v.shape) for k, v in state.items()}:
        raise ValueError(f"the model's tensors do not match the architecture in the config ({config.hourglass})")
    config_json = json.dumps(config.to_dict(), indent=2)
    with fileio.atomic_path(targets[1], overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata={_METADATA_KEY: config_json})
    fileio.write_text(targets[0], config_json + "\n", overwrite=overwrite)
    return targets[1]


def load_model(path: str | Path) -> tuple[StackedHourglass, DetectorConfig]:
    """Build the network from a ``.safetensors`` file or a folder written by :func:`save_model`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.is_dir():
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        for p in (config_path, weights_path):
            if not p.exists():
                raise WeightsError(f"{path} is not a saved facekp model: {p.name} is missing")
        config = _parse_config(config_path.read_bytes(), str(config_path))
    else:
        weights_path, config = path, None
    try:
        state = load_file(str(weights_path))
        if config is None:
            with safe_open(str(weights_path), "pt") as f:
                meta = f.metadata() or {}
            if _METADATA_KEY not in meta:
                raise WeightsError(
                    f"{weights_path} carries no facekp config in its metadata; load the folder written by "
                    "save_pretrained (config.json + model.safetensors) instead"
                )
            config = _parse_config(meta[_METADATA_KEY], f"{weights_path} metadata")
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{weights_path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    check_finite(state, weights_path)
    model = StackedHourglass(config.hourglass)
    _check_dtypes(state, model.state_dict(), weights_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0]
        raise WeightsError(
            f"{weights_path} does not fit the architecture {config.hourglass} ({summary}); "
            "is it a model of another architecture?"
        ) from exc
    return model.eval(), config


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """``WeightsError`` when a floating-point tensor of ``state`` (read from ``path``) holds NaN or infinity."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{path} holds NaN or infinite values in {bad[:3]}; the file is corrupt")


def read_described(path: str | Path, metadata_key: str, what: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a ``.safetensors`` file that describes itself (JSON) in its metadata under ``metadata_key``,
    and that description, as the face finder's and the face check's files do; ``what`` names the kind of file
    in the errors (missing, unreadable, without the description, NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(metadata_key)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    if meta is None:
        raise WeightsError(f"{path} carries no {what} description in its metadata; is it another facekp model?")
    check_finite(state, path)
    try:
        return state, json.loads(meta)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} has an unreadable {what} description: {exc}") from exc


def _parse_config(text: str | bytes, where: str) -> DetectorConfig:
    try:
        return DetectorConfig.from_dict(validate.json_object(text, where))
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"invalid facekp model config in {where}: {exc}") from exc


def _check_dtypes(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: Path) -> None:
    """Floating-point tensors where the network has them, integer counters where it has those:
    int, bool or complex weights of the right shapes would load into degenerate constant points."""
    for name, tensor in state.items():
        want = expected.get(name)
        if want is None:
            continue  # load_state_dict names unexpected keys
        ok = tensor.is_floating_point() if want.is_floating_point() else not (tensor.is_floating_point() or tensor.is_complex()
                                                                               or tensor.dtype == torch.bool)
        if not ok:
            raise WeightsError(f"{where}: tensor {name!r} is {tensor.dtype}, expected {want.dtype}; the file is not facekp weights")


# -- manifest ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestEntry:
    """One published model of ``weights_manifest.json``."""

    name: str
    file: str
    sha256: str
    size: int
    config: dict
    bundled: bool = True
    repo_id: str | None = None
    revision: str | None = None
    metrics: dict | None = None
    fp32_onnx: dict | None = None  # file, sha256, size, metrics of the bundled fp32 ONNX graph (the CPU default)
    int8_onnx: dict | None = None  # file, sha256, size, metrics of the bundled int8 ONNX graph

    def onnx_graph(self, precision: str) -> dict | None:
        """The manifest's record of the bundled ``"fp32"`` or ``"int8"`` ONNX graph, or None."""
        return {"fp32": self.fp32_onnx, "int8": self.int8_onnx}[precision]

    @property
    def path(self) -> Path:
        """Where the bundled file lies inside the installed package."""
        return bundled_path(self.file)


def read_manifest(path: str | Path | None = None) -> dict:
    """The manifest shipped with the package (or the one at ``path``)."""
    source = Path(path) if path else Path(str(resources.files("facekp") / "weights_manifest.json"))
    return json.loads(source.read_text())


def write_manifest(manifest: dict, path: str | Path) -> None:
    """Write ``manifest`` (the form :func:`read_manifest` returns) to ``path``; each model entry must
    be one :class:`ManifestEntry` accepts (``TypeError`` otherwise, before anything is written)."""
    for m in manifest["models"]:
        ManifestEntry(**m)
    # The registry: updated in place; through a link (the package's manifest links the repository's), its target.
    fileio.write_text(Path(path).resolve(), json.dumps(manifest, indent=2) + "\n", overwrite=True)


def put_manifest_entry(path: str | Path, key: str, entry: dict) -> None:
    """Write ``entry`` into the ``key`` list (``"face_finders"``, ``"face_checks"``) of the manifest at
    ``path``, in place of the entry of the same ``name`` or after the others."""
    manifest = read_manifest(path)
    manifest[key] = [e for e in manifest.get(key, []) if e["name"] != entry["name"]] + [entry]
    write_manifest(manifest, path)


def manifest_entries(path: str | Path | None = None) -> list[ManifestEntry]:
    return [ManifestEntry(**m) for m in read_manifest(path)["models"]]


def default_entry() -> ManifestEntry:
    manifest = read_manifest()
    name = manifest.get("default")
    if not name:
        raise WeightsError(
            "this facekp build ships no trained default weights yet; pass a .safetensors file or a "
            "save_pretrained folder to Detector(weights=...), or use Detector.from_pretrained(repo_id)"
        )
    return find_entry(name)


def find_entry(name: str) -> ManifestEntry:
    entries = {e.name: e for e in manifest_entries()}
    if name not in entries:
        raise WeightsError(f"no model named {name!r} in weights_manifest.json; known: {sorted(entries)}")
    return entries[name]


def verify_file(path: str | Path, expected_sha256: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ChecksumError(f"{what}: sha256 {actual} differs from the published {expected_sha256}; the file is corrupt or tampered with")


def load_bundled(entry: ManifestEntry) -> tuple[StackedHourglass, DetectorConfig]:
    """Load a manifest model from the package, verified against its sha256 and its manifest config.

    The manifest's config must be the one embedded in the weights, except that it may add a
    ``presence`` model (fitted after the weights were published: the file and its sha256 stay).
    """
    if not entry.bundled:
        raise WeightsError(f"model {entry.name!r} is not bundled; load it with Detector.from_pretrained({entry.repo_id!r})")
    model, config = load_model(verified_bundled(entry.file, entry.sha256, "weights"))
    listed = _parse_config(json.dumps(entry.config), f"the manifest entry {entry.name!r}")
    if config.presence is None:
        config = replace(config, presence=listed.presence)
    if config.to_dict() != listed.to_dict():
        a, b = config.to_dict(), listed.to_dict()
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise WeightsError(f"the manifest entry {entry.name!r} describes another model than {entry.path} embeds "
                           f"(they differ in {differ}); the manifest or the weights file was edited")
    return model, config


def bundled_onnx(entry: ManifestEntry, precision: str) -> Path:
    """The bundled ``"fp32"`` or ``"int8"`` ONNX graph of a manifest model, verified against its sha256."""
    graph = entry.onnx_graph(precision)
    if not graph:
        raise WeightsError(
            f"model {entry.name!r} ships no {precision} graph; make one with `facekp export-onnx OUT.onnx"
            f"{' --int8 CROPS_DIR' if precision == 'int8' else ''}` and pass Detector(..., backend='onnx', onnx_model='OUT.onnx')"
        )
    return verified_bundled(graph["file"], graph["sha256"], f"{precision} graph")


def bundled_path(file: str) -> Path:
    return Path(str(resources.files("facekp") / "weights" / file))


def verified_bundled(file: str, sha256: str, what: str) -> Path:
    """The package's ``weights/file``, checked to be there (:class:`WeightsError`) and to have the
    published ``sha256`` (:class:`ChecksumError`); ``what`` names it in the errors."""
    path = bundled_path(file)
    if not path.exists():
        raise WeightsError(f"bundled {what} {path} is missing from the installed package")
    verify_file(path, sha256, f"bundled {what} {path}")
    return path


# -- Hugging Face Hub ----------------------------------------------------------------------
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def download_from_hub(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download (or reuse from the cache) ``config.json`` + ``model.safetensors``; return the folder.

    The weights are verified: against the manifest's sha256 when the repository is published
    there, else against the Hub's own hash of the file (the ETag: sha256 for LFS files, the git
    blob sha1 otherwise), which the cache keeps as the blob's name. A cache without symlinks
    (Windows without Developer Mode) keeps no blob names, so the hash is then asked from the Hub
    for the snapshot's commit, which needs the network. A mismatch removes the file from the
    cache and raises :class:`~facekp.errors.ChecksumError`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    entry = next((e for e in manifest_entries() if e.repo_id == repo_id), None)
    if revision is None and entry is not None:
        revision = entry.revision
    try:
        files = {
            name: Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, library_name="facekp"))
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        }
    except LocalEntryNotFoundError as exc:  # first: it is also an EntryNotFoundError
        raise WeightsError(f"{repo_id} is not in the local cache and the Hub cannot be reached (offline?): {exc}") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsError(f"{repo_id}@{revision or 'main'} has no facekp model (config.json + model.safetensors): {exc}") from exc
    except OSError as exc:  # e.g. huggingface_hub's size check of a truncated or altered download
        raise WeightsError(f"downloading {repo_id}@{revision or 'main'} failed: {exc}") from exc
    weights = files[WEIGHTS_NAME]
    try:
        if entry is not None and (revision == entry.revision):
            verify_file(weights, entry.sha256, f"{repo_id}/{WEIGHTS_NAME}")
        else:
            _verify_against_etag(weights, repo_id)
    except ChecksumError:
        _evict(weights)
        raise
    return weights.parent


def _verify_against_etag(path: Path, repo_id: str) -> None:
    what = f"{repo_id}/{path.name}"
    etag = _hub_etag(path, repo_id)
    if _SHA256.match(etag):
        verify_file(path, etag, what)
    elif _SHA1.match(etag):
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
        if h.hexdigest() != etag:
            raise ChecksumError(f"{what}: git blob sha1 {h.hexdigest()} differs from the Hub's {etag}; the file is corrupt or tampered with")
    else:
        raise WeightsError(f"{what}: the Hub's hash of the file, {etag!r}, is neither a sha256 nor a git blob sha1")


def _hub_etag(path: Path, repo_id: str) -> str:
    """The Hub's hash of a file in the cache: the name of the blob its snapshot entry links to, or,
    where the cache has no symlinks, the ETag the Hub gives for the snapshot's commit."""
    blob = Path(os.path.realpath(path))
    if _SHA256.match(blob.name) or _SHA1.match(blob.name):
        return blob.name
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    commit = path.parent.name  # snapshots/<commit>/<file>
    try:
        etag = get_hf_file_metadata(hf_hub_url(repo_id, path.name, revision=commit)).etag
    except Exception as exc:  # offline, unreachable, refused: the file cannot be verified now
        raise WeightsError(
            f"{repo_id}/{path.name}: this Hugging Face cache keeps files without symlinks, so it holds no hash "
            f"to verify them against, and asking the Hub for it failed ({exc}). Load it while online, or "
            "enable symlinks (Windows: Developer Mode) so that the cache keeps the hashes"
        ) from exc
    if not etag:
        raise WeightsError(f"{repo_id}/{path.name}: the Hub gave no hash (ETag) for commit {commit}")
    return etag


def _evict(path: Path) -> None:
    """Remove a downloaded file and its cache blob, so the next call downloads it afresh."""
    blob = Path(os.path.realpath(path))
    for p in {path, blob}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass



# -- the one resolver ----------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedWeights:
    """A loaded model: the network (eval mode), its config, and its manifest entry (None for files)."""

    model: StackedHourglass
    config: DetectorConfig
    entry: ManifestEntry | None = None


def resolve_weights(
    weights: str | Path | None = None,
    *,
    hub: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> ResolvedWeights:
    """Load what ``weights`` names, verified.

    ``None``: the manifest's default model, bundled; an existing ``.safetensors`` file or
    :func:`save_model` folder: that; a bare name (no ``/``, no ``.safetensors``): the manifest model
    of that name. With ``hub`` a name that is no local folder is a Hugging Face Hub repository id,
    downloaded at ``revision`` into ``cache_dir`` (:func:`download_from_hub`). Anything else raises
    ``FileNotFoundError``.
    """
    if not (weights is None or isinstance(weights, (str, os.PathLike))) or (hub and weights is None):
        what = "a Hub repository id or a local folder" if hub else "None, a model name or a path"
        raise TypeError(f"weights must be {what}, got {weights!r}")
    if weights is None:
        entry = default_entry()
    elif Path(weights).exists():
        return ResolvedWeights(*load_model(weights))
    elif hub:
        return ResolvedWeights(*load_model(download_from_hub(str(weights), revision=revision, cache_dir=cache_dir)))
    elif isinstance(weights, str) and "/" not in weights and "\\" not in weights and not weights.endswith(".safetensors"):
        entry = find_entry(weights)
    else:
        raise FileNotFoundError(f"weights not found: {weights}")
    return ResolvedWeights(*load_bundled(entry), entry)
