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
