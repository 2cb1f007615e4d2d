"""CPU thread policy: a crop or two is too little work to split across threads.

Torch's thread pool costs more than it saves on the dozens of tiny ops of a small batch
(2-core CPU: the heatmap decode of one crop 0.4 ms on one thread vs 1.0 ms on two), so torch
calls under :data:`SMALL_BATCH` crops run on one intra-op thread. onnxruntime needs no such
rule: its fused graph is faster on two threads even for one crop (:class:`facekp.onnx.OnnxBackend`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Below this many crops a CPU call runs on one intra-op thread.
SMALL_BATCH = 4


@contextmanager
def torch_threads_for(batch: int, device: torch.device) -> Iterator[None]:
    """Run the block with one torch intra-op thread if ``batch`` is small and on the CPU.

    ``torch.set_num_threads`` is process-wide: the previous setting is restored on exit, but
    other Python threads running torch meanwhile see one thread too.
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or batch >= SMALL_BATCH or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
