"""``facekp.candidates``: which face detector candidates go on in ``detect``, and the presence each needs."""

from __future__ import annotations

import numpy as np

from facekp.candidates import VOUCHED_MIN_PRESENCE, WEAK_MIN_PRESENCE, WEAK_SCREEN_PRESENCE, Candidates


def _candidates(weak, vouched) -> Candidates:
    n = len(weak)
    faces = Candidates.framed(np.arange(4 * n, dtype=float).reshape(n, 4), np.linspace(0.2, 0.9, n), np.zeros(n),
                              np.zeros((n, 2, 3)), np.zeros((n, 96, 96), np.float32), np.array(weak))
    return faces._replace(vouched=np.array(vouched))


def test_framed_candidates_are_turnable_unless_weak_and_take_keeps_every_field_in_step():
    faces = Candidates.framed(np.zeros((3, 4)), np.array([0.9, 0.2, 0.6]), np.zeros(3), np.zeros((3, 2, 3)),
                              np.zeros((3, 8, 8)), np.array([False, True, False]))
    assert faces.turnable.tolist() == [True, False, True] and not faces.vouched.any()
    taken = faces.take(np.array([2, 0]))
    assert taken.scores.tolist() == [0.6, 0.9] and all(len(v) == 2 for v in taken)


def test_presence_bars_weak_faces_need_more_and_vouched_faces_less():
    faces = _candidates(weak=[False, True, False, True], vouched=[False, False, True, True])
    np.testing.assert_allclose(faces.presence_bars(0.9), [0.9, WEAK_MIN_PRESENCE, VOUCHED_MIN_PRESENCE,
                                                          VOUCHED_MIN_PRESENCE])
    # A caller's bar above the weak faces' own is theirs too; zero keeps every face but the weak ones' bar.
    np.testing.assert_allclose(faces.presence_bars(0.99)[:2], [0.99, 0.99])
    np.testing.assert_allclose(faces.presence_bars(0.0)[:2], [0.0, WEAK_MIN_PRESENCE])


def test_the_screen_stops_only_weak_faces_under_its_presence_the_check_does_not_vouch_for():
    faces = _candidates(weak=[False, True, True, True], vouched=[False, False, False, True])
    low, high = WEAK_SCREEN_PRESENCE / 2, WEAK_SCREEN_PRESENCE
    assert faces.screen(np.array([low, low, high, low])).tolist() == [True, False, True, True]
