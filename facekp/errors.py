"""Exception types raised by facekp.

Each derives from a built-in type that fits (``ValueError``, ``FileNotFoundError``...)
so that callers catching the broad type keep working.
"""

from __future__ import annotations


class FacekpError(Exception):
    """Base class of every error facekp raises on purpose."""


class InvalidImageError(FacekpError, ValueError):
    """An input image has the wrong type, shape, dtype or values, or cannot be decoded."""


class WeightsError(FacekpError, RuntimeError):
    """Model weights are missing, corrupt, unverifiable or belong to another architecture."""


class ChecksumError(WeightsError):
    """A weights file's sha256 differs from the published one."""


class DeviceError(FacekpError, RuntimeError):
    """The requested torch device is not available on this machine."""


#: Errors whose message says it all; any other type is named in the line.
EXPECTED_ERRORS = (FacekpError, OSError, ValueError, TypeError, ImportError, FloatingPointError)


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for ``PROG: error: ...``: its message, prefixed by its type when that is
    not one of :data:`EXPECTED_ERRORS` (then it is a bug worth reporting)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, EXPECTED_ERRORS) else f"unexpected {type(exc).__name__}: {text}"
