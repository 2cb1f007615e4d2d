"""Small CPU batches run on one torch thread; the caller's setting always comes back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekp.threads import SMALL_BATCH, torch_threads_for

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_cpu_batches_use_one_thread_and_restore_the_setting(two_threads):
    with torch_threads_for(1, CPU):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with torch_threads_for(SMALL_BATCH, CPU):
        assert torch.get_num_threads() == 2
    with torch_threads_for(1, torch.device("cuda")):
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads_for(1, CPU):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_detector_single_and_batched_agree_across_thread_settings(two_threads, detector, face_u8):
    single = detector.predict(face_u8)  # one thread inside
    assert torch.get_num_threads() == 2
    batched = detector.predict_batch([face_u8] * SMALL_BATCH)  # two threads
    for points in batched:
        np.testing.assert_allclose(points, single, atol=1e-4)
