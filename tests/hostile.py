"""Hostile files for the hardening tests and benchmarks/fuzz.py: decompression bombs, truncated and
garbage images, FIFOs. Each is a few hundred bytes; none is ever decoded in full. :func:`deadline`
makes a test that would hang on one (a FIFO opened for reading) fail instead."""

from __future__ import annotations

import io
import os
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

#: What every bomb claims to be (PNG, BMP, TIFF); JPEG headers hold 16-bit sides, so 60000x60000.
BOMB_SIDE = 100_000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid PNG header claiming ``side`` x ``side`` 8-bit gray pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def bmp_bomb(side: int = BOMB_SIDE) -> bytes:
    """A BMP whose info header claims ``side`` x ``side`` 24-bit pixels."""
    data = bytearray(_encode(np.zeros((8, 8, 3), np.uint8), "BMP"))
    data[18:26] = struct.pack("<ii", side, side)
    return bytes(data)


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A JPEG whose start-of-frame marker claims ``side`` x ``side`` pixels (at most 65535: 16-bit fields)."""
    data = bytearray(_encode(np.zeros((8, 8), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    side = min(side, 65535)
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def tiff_bomb(side: int = BOMB_SIDE) -> bytes:
    """An uncompressed little-endian TIFF whose IFD claims ``side`` x ``side`` 8-bit gray pixels."""
    tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 12 * 8 + 4),
            (278, 4, side), (279, 4, 64)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 64


BOMBS = {"png": png_bomb, "bmp": bmp_bomb, "jpg": jpeg_bomb, "tif": tiff_bomb}


def truncated_jpeg(seed: int = 0, keep: float = 0.5) -> bytes:
    """A real JPEG of noise cut to ``keep`` of its bytes (the header survives, the scan does not)."""
    rng = np.random.default_rng(seed)
    data = _encode(rng.integers(0, 256, (64, 64), dtype=np.uint8), "JPEG")
    return data[: max(200, int(len(data) * keep))]


def garbage(seed: int = 0, size: int = 300) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def make_fifo(path: Path) -> Path:
    """A named pipe at ``path`` that nobody writes to: opening it for reading blocks forever."""
    os.mkfifo(path)
    return path


@contextmanager
def deadline(seconds: int = 20):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() (PEP 475 retries unless the handler raises)."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()
