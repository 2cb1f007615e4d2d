"""The fuzz run's classification tools (benchmarks/fuzz.py): outcomes, a per-input alarm, the
finite-points check and the CLI's exit-and-one-line rule."""

from __future__ import annotations

import contextlib
import io
import signal

import numpy as np


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in facekp swallows it."""


class DataLoss(Exception):
    pass


class NonFinite(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: float):
    def expire(*_):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def finite(points, n: int | None = None) -> None:
    p = np.asarray(points)
    if p.shape[-2:] != (15, 2) or (n is not None and len(p) != n):
        raise NonFinite(f"points of shape {p.shape}")
    if not np.isfinite(p).all():
        raise NonFinite("NaN or infinite points")


def run_cli(main, argv, prog: str) -> None:
    """A CLI run: exit 0, or exit 2 with one error line naming no unexpected exception type."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse refusing an argument: its usage line and one error line
            if exc.code == 2 and ": error: argument" in err.getvalue():
                raise CLIError(err.getvalue().splitlines()[-1]) from None
            raise
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith(f"{prog}: error:")]
    if code == 0:
        return
    if code != 2 or len(lines) != 1 or "Traceback" in err.getvalue():
        raise AssertionError(f"{prog} exit {code} with {len(lines)} error lines: {err.getvalue()[-300:]}")
    if "unexpected " in lines[0]:
        raise AssertionError(lines[0])
    raise CLIError(lines[0])


class CLIError(Exception):
    """A documented CLI failure: exit 2 and one clear line."""
