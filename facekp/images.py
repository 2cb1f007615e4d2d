"""Turn any supported image input into a float32 grayscale array, or say clearly why not."""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

#: What ``Detector.predict`` accepts: an array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4)
#: RGBA, uint8 or float in [0, 1]; a PIL image; a path; a torch tensor laid out like the
#: arrays or channels-first (C, H, W).
ImageInput = Union[np.ndarray, Image.Image, str, os.PathLike, torch.Tensor]

MIN_SIDE = 8
#: Largest image accepted, in pixels (150 MP), checked from the file's header before decoding: a
#: "decompression bomb" (a tiny file claiming 100000x100000 pixels) is refused, not decoded.
MAX_PIXELS = 150_000_000

#: Channel orders of colour arrays and tensors: ``"rgb"`` (PIL, matplotlib, torchvision) or
#: ``"bgr"`` (OpenCV: ``cv2.imread``, ``cv2.VideoCapture``). Files and PIL images carry their own.
COLOR_ORDERS = ("rgb", "bgr")


#: File types the command lines pick up in folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def folder_photos(folder: Path, recursive: bool = False) -> list[Path]:
    """The entries of ``folder`` (and its subfolders with ``recursive``) named like photos
    (:data:`IMAGE_SUFFIXES`), sorted. Every such entry that is not itself a folder counts: a FIFO,
    device, socket or broken link named like a photo is then refused by the reader
    (:func:`check_image_file`, which never opens it) and reported, not passed over."""
    walk = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in walk if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


def check_color(color: str) -> str:
    """``color`` if it is one of :data:`COLOR_ORDERS`, else ``ValueError``."""
    if color not in COLOR_ORDERS:
        raise ValueError(f"color must be 'rgb' or 'bgr' (the channel order of colour arrays), got {color!r}")
    return color


def load_gray(image: ImageInput, color: str = "rgb") -> np.ndarray:
    """Return ``image`` as an (H, W) float32 array in [0, 1] (ITU-R BT.601 luma for colour).

    Image files are turned upright by their EXIF Orientation tag, as photo viewers show them,
    so points are in the pixels of the upright image. ``color`` is the channel order of colour
    arrays and tensors (``"bgr"`` for OpenCV's); gray ones, files and PIL images ignore it.

    Raises:
        FileNotFoundError: a path that does not exist.
        InvalidImageError: anything that is not a decodable image of at least 8x8 pixels
            with finite values in range.
    """
    check_color(color)
    if isinstance(image, (str, os.PathLike)):
        return _check(_from_pil(_open_upright(Path(image))), f"image file {os.fspath(image)!r}")
    if isinstance(image, Image.Image):
        check_pixel_count(image.size, "PIL image")
        return _check(_from_pil(image), "PIL image")
    if isinstance(image, torch.Tensor):
        return _check(_from_array(_tensor_to_hwc(image), color), "tensor")
    if isinstance(image, np.ndarray):
        return _check(_from_array(image, color), "array")
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}; expected a numpy array, PIL image, "
        "path (str or pathlib.Path) or torch tensor"
    )


def load_rgb(image: ImageInput, color: str = "rgb") -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 RGB array (gray inputs are replicated), for drawing.

    Files are turned upright by their EXIF orientation, like :func:`load_gray`; ``color`` is
    the channel order of colour arrays and tensors, as there.
    """
    if isinstance(image, (str, os.PathLike)):
        im = _open_upright(Path(image))
        _check(_from_pil(im), f"image file {os.fspath(image)!r}")  # the same checks and messages as load_gray
        return _pil_rgb(im)
    if isinstance(image, Image.Image):
        check_pixel_count(image.size, "PIL image")
        return _pil_rgb(image)
    arr = _tensor_to_hwc(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    load_gray(arr, color)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        # Clipped: load_gray tolerates float overshoot of half a step, which would wrap around in uint8.
        scaled = arr.astype(np.float64) * (255.0 if arr.dtype.kind == "f" else 255.0 / 65535.0)
        arr = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    return _rgb_channels(arr, color)


def _rgb_channels(arr: np.ndarray, color: str) -> np.ndarray:
    """The R, G, B channels of an (H, W, 3 or 4) ``color``-ordered array, in that order, C-contiguous."""
    return np.ascontiguousarray(arr[:, :, 2::-1] if color == "bgr" else arr[:, :, :3])


def _pil_rgb(im: Image.Image) -> np.ndarray:
    if _high_depth(im):  # scaled like load_gray, not clipped to 255
        return np.repeat(np.round(_from_pil(im) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(_convert(im, "RGB"))


def fit_within(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk (area averaging) so that its longer side is at most ``max_side`` px, sides
    rounded; ``image`` itself when it fits already or ``max_side`` is None."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`load_gray` returns it (EXIF orientation applied),
    read from the header without decoding the pixels."""
    with open_image(path) as im:
        w, h = im.size
        turned = im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)  # the four that swap the axes
    return (h, w) if turned else (w, h)


def channels_first(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` is laid out ``(C, H, W)``, as torchvision does: C is 1, 3 or 4
    and the last axis is not."""
    return len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)


def _open_upright(path: Path) -> Image.Image:
    """The decoded image file, turned upright by its EXIF Orientation tag (phones store photos
    sideways and tag them)."""
    with open_image(path) as im:
        try:
            im.load()
            if im.getexif().get(ExifTags.Base.Orientation, 1) == 1:
                return im  # upright already: no copy of the pixels
            return ImageOps.exif_transpose(im)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
            raise InvalidImageError(f"cannot read {path} as an image ({exc})") from exc


def decode_bytes(data: bytes | bytearray | memoryview, what: str = "image bytes") -> Image.Image:
    """Encoded image bytes (a file's content) decoded and turned upright by their EXIF orientation,
    with the checks :func:`load_gray` applies to files (:data:`MAX_PIXELS` from the header, so a
    decompression bomb is never decoded; truncated or foreign data): :class:`InvalidImageError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            im = Image.open(io.BytesIO(data))
        check_pixel_count(im.size, what)
        im.load()
        return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:
        raise InvalidImageError(f"{what} claim more than {MAX_PIXELS:,} pixels (a decompression bomb?); "
                                "facekp refuses to decode them") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"cannot read {what} ({len(data)} bytes) as an image ({exc})") from exc


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The image file at ``path`` opened lazily (header read, pixels not decoded), once
    :func:`check_image_file` accepts it and its header is within :data:`MAX_PIXELS`."""
    path = check_image_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise InvalidImageError(f"{path} claims more than {MAX_PIXELS:,} pixels (a decompression bomb?); "
                                "facekp refuses to decode it") from None
    except PermissionError:
        raise InvalidImageError(f"cannot read {path}: permission denied") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"cannot read {path} as an image ({exc})") from exc
    with im:
        check_pixel_count(im.size, str(path))
        yield im


def check_image_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it names a readable regular file; the clear error otherwise.

    Checked before anything opens the file: a FIFO or device named ``x.jpg`` would block the
    reader forever.

    Raises:
        FileNotFoundError: nothing at ``path``.
        InvalidImageError: a folder, a FIFO/device/socket, a name too long for the file system, or
            a file or folder without read permission.
    """
    path = Path(path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"image file not found: {path}") from None
    except PermissionError:
        raise InvalidImageError(f"cannot read {path}: permission denied (on the file or one of its folders)") from None
    except ValueError as exc:  # e.g. an embedded NUL character
        raise InvalidImageError(f"invalid file name {str(path)[:60]!r}: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidImageError(f"cannot read {str(path)[:60]}...: the name ({len(path.name)} characters) is too long "
                                    "for the file system") from None
        raise InvalidImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidImageError(f"{path} is a directory, expected an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidImageError(f"{path} is not a regular file (a FIFO, device or socket?); expected an image file")
    if not os.access(path, os.R_OK):
        raise InvalidImageError(f"cannot read {path}: permission denied")
    return path


def check_pixel_count(size: tuple[int, int], what: str) -> None:
    """Refuse an image of more than :data:`MAX_PIXELS` pixels (``size``: width, height)."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise InvalidImageError(f"{what} is {w}x{h} pixels ({w * h:,}); facekp accepts up to {MAX_PIXELS:,} pixels")


def _high_depth(im: Image.Image) -> bool:
    """32-bit int, 16-bit (I;16, I;16B, I;16L...) or float: convert("L"/"RGB") would clip these."""
    return im.mode in ("I", "F") or im.mode.startswith("I;16")


def _from_pil(im: Image.Image) -> np.ndarray:
    if _high_depth(im):
        arr = np.asarray(im, dtype=np.float32)
        if im.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InvalidImageError(
                f"32-bit integer image values span [{arr.min():.0f}, {arr.max():.0f}]; expected the 16-bit range [0, 65535]"
            )
        peak = 65535.0 if im.mode.startswith("I") else 1.0
        return _from_array(arr / peak)  # the same NaN and [0, 1] range checks as float arrays
    return np.asarray(_convert(im, "L"), dtype=np.float32) / 255.0


def _convert(im: Image.Image, mode: str) -> Image.Image:
    try:
        return im.convert(mode)
    except ValueError as exc:  # e.g. "conversion from LAB to RGB not supported"
        raise InvalidImageError(f"PIL images of mode {im.mode!r} cannot be read ({exc}); convert to 'L' or 'RGB' first") from None


def _tensor_to_hwc(t: torch.Tensor) -> np.ndarray:
    if t.is_meta or t.layout != torch.strided or t.is_complex() or t.is_quantized:
        raise InvalidImageError(f"unsupported tensor (device {t.device.type}, layout {t.layout}, dtype {t.dtype}); "
                                "expected a dense real tensor with data, uint8 or float in [0, 1]")
    arr = t.detach().cpu().resolve_conj().resolve_neg()  # numpy() refuses lazily conjugated/negated views
    if channels_first(tuple(arr.shape)):
        arr = arr.permute(1, 2, 0)
    if arr.dtype in (torch.float16, torch.bfloat16):
        arr = arr.float()
    try:
        return arr.numpy()
    except (RuntimeError, TypeError) as exc:
        raise InvalidImageError(f"tensor of dtype {t.dtype} cannot be read as an image ({exc})") from None


def _from_array(arr: np.ndarray, color: str = "rgb") -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        hint = "; a stack of images goes to Detector.predict_batch" if arr.ndim == 4 else ""
        raise InvalidImageError(
            f"image array has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA{hint}"
        )
    if arr.size == 0:
        raise InvalidImageError(f"image array is empty (shape {arr.shape})")
    if arr.dtype in INTEGER_PEAKS:
        arr = scale_integers(arr)
    elif arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.floating):
        raise InvalidImageError(
            f"unsupported image dtype {arr.dtype}; expected uint8, uint16 or float with values in [0, 1]"
        )
    else:
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise InvalidImageError("image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        # Resampling (e.g. a cubic resize) overshoots [0, 1] slightly: tolerate half a uint8 step.
        slack = 0.5 / 255
        if lo < -slack or hi > 1.0 + slack:
            raise InvalidImageError(
                f"float image values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] (divide uint8 data by 255)"
            )
        if lo < 0.0 or hi > 1.0:
            arr = np.clip(arr, 0.0, 1.0)
    if arr.ndim == 3:
        # BGR is reordered rather than converted with COLOR_BGR2GRAY, whose other summation order
        # differs in the last float bit: the same pixels give the same gray image, bit for bit.
        arr = cv2.cvtColor(_rgb_channels(arr, color), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(arr)


#: Integer image dtypes and the value each maps to 1.0.
INTEGER_PEAKS = {np.dtype(np.uint8): np.float32(255), np.dtype(np.uint16): np.float32(65535)}


def scale_integers(arr: np.ndarray) -> np.ndarray:
    """A uint8 or uint16 array (a :data:`INTEGER_PEAKS` dtype) as float32 in [0, 1]."""
    return arr.astype(np.float32) / INTEGER_PEAKS[arr.dtype]


def _check(gray: np.ndarray, what: str) -> np.ndarray:
    h, w = gray.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(f"{what} is {w}x{h} pixels; faces need at least {MIN_SIDE}x{MIN_SIDE}")
    return gray


def network_sized_stack(images, size: int) -> np.ndarray | None:
    """``images`` as (N, size, size) float32 in [0, 1] when it is one uint8/uint16/float array or tensor
    of N gray crops of the network's input side with valid values; else None (the general path of loading
    and letterboxing each image)."""
    if not isinstance(images, (np.ndarray, torch.Tensor)) or tuple(images.shape[1:]) != (size, size) or len(images) == 0:
        return None
    arr = images.detach().cpu() if isinstance(images, torch.Tensor) else images
    if isinstance(arr, torch.Tensor):
        if arr.dtype in (torch.float16, torch.bfloat16):
            arr = arr.float()
        arr = arr.numpy()
    if arr.dtype in INTEGER_PEAKS:
        return scale_integers(arr)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        lo, hi = float(arr.min()), float(arr.max())  # NaN fails both tests
        if lo >= 0.0 and hi <= 1.0:
            return arr
    return None
