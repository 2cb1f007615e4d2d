"""The one rule for every file facekp writes: never over an input, never over an existing file
unless asked (``overwrite=True``, the CLIs' ``--force``), and never half-written.

Writers call :func:`check_output` before any work (so a refused run writes nothing), then write
through :func:`atomic_path`: the data goes to a temporary file in the target's folder that is
renamed onto the target once complete, so a crash or a full disk leaves either the old file or
the whole new one. Without ``overwrite`` the rename refuses to replace a file that appeared in the
meantime.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PathLike = str | os.PathLike


def check_output(path: PathLike, *, inputs: Iterable[PathLike] = (), overwrite: bool = False, kind: str = "files") -> Path:
    """``path`` as a Path, once it is known to be writable under the rule; raises otherwise.

    Raises:
        FileExistsError: ``path`` is one of ``inputs`` (even with ``overwrite``: an input is never
            replaced), or exists and ``overwrite`` is False.
        IsADirectoryError: ``path`` is a folder.
        NotADirectoryError: a parent of ``path`` is a file.

    ``kind`` names the inputs in the message ("images", "weights"...).
    """
    out = Path(path)
    for item in inputs:
        if _same_file(out, Path(item)):
            raise FileExistsError(f"refusing to write {out}: it is one of the input {kind} ({item})")
    if out.is_dir():
        raise IsADirectoryError(f"cannot write {out}: {out} is a folder; expected a file path")
    folder = next(p for p in out.absolute().parents if p.exists())  # the root always exists
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {out}: {folder} is a file, not a folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force (overwrite=True) to replace it")
    return out


def files_of(path: PathLike | None) -> list[Path]:
    """``path`` and, for a folder (such as a save_pretrained model), the files directly in it: the
    inputs an output must not replace. Nothing for None or a name that is not a path."""
    if path is None:
        return []
    p = Path(path)
    return [p, *(c for c in p.iterdir() if c.is_file())] if p.is_dir() else [p]


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # hard links and symlinks too
        return a.resolve() == b.resolve()
    except OSError:
        return False


@contextmanager
def atomic_path(path: PathLike, *, inputs: Iterable[PathLike] = (), overwrite: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed onto ``path`` when the block ends.

    The temporary file keeps ``path``'s suffix (writers such as matplotlib choose the format by it)
    and lies in the same folder (a rename across file systems would not be atomic). If the block
    raises, the temporary file is removed and ``path`` is untouched.
    """
    out = check_output(path, inputs=inputs, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:12]}.tmp{out.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {out}")
        _commit(tmp, out, overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)  # fails if out exists: no window in which another writer's file is replaced
    except FileExistsError:
        raise FileExistsError(f"{out} appeared while it was being written; pass --force (overwrite=True) to replace it") from None
    except OSError:  # a file system without hard links
        if out.exists():
            raise FileExistsError(f"{out} appeared while it was being written; pass --force (overwrite=True) to replace it") from None
        os.replace(tmp, out)


def write_bytes(path: PathLike, data: bytes, *, inputs: Iterable[PathLike] = (), overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` under the rule (see :func:`atomic_path`); returns the path."""
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str, *, inputs: Iterable[PathLike] = (), overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` under the rule (see :func:`atomic_path`); returns the path."""
    return write_bytes(path, text.encode("utf-8"), inputs=inputs, overwrite=overwrite)
