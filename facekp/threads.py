"""CPU thread policy: a crop or two is too little work to split across threads.

Torch's thread pool costs more than it saves on the dozens of tiny ops of a small batch
(2-core CPU: the heatmap decode of one crop 0.4 ms on one thread vs 1.0 ms on two), so torch
calls under :data:`SMALL_BATCH` crops run on one intra-op thread. onnxruntime needs no such
rule: its fused graph is faster on two threads even for one crop (:class:`facekp.runtime.OnnxRunner`),
but its idle threads must not spin (:func:`onnxruntime_options`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Below this many crops a CPU call runs on one intra-op thread.
SMALL_BATCH = 4


@contextmanager
def torch_threads_for(batch: int, device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: the current setting), and with
    one if ``batch`` is small and on the CPU.

    ``torch.set_num_threads`` is process-wide: the previous setting is restored on exit, but
    other Python threads running torch meanwhile see the block's setting too.
    """
    before = torch.get_num_threads()
    wanted = before if threads is None else int(threads)
    if device.type == "cpu" and batch < SMALL_BATCH:
        wanted = 1
    if wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def onnxruntime_options(threads: int | None = None):
    """``onnxruntime.SessionOptions`` with ``threads`` intra-op threads (None: onnxruntime's default,
    one per physical core) and its idle threads sleeping instead of spin-waiting.

    onnxruntime's workers spin for a while after each run, waiting for the next. Between runs,
    ``detect`` warps crops with OpenCV and scores them in numpy, whose threads then share the
    cores with the spinners: on the 2-core CPU, ``detect`` on a 640x480 photo took 57 ms spinning
    and 40 ms without (``docs/detection.md``), while ``predict_batch`` lost 0.3 ms per call of up
    to 6 crops and nothing from 64 up.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
