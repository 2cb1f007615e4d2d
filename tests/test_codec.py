"""HeatmapCodec: Gaussian encoding and DARK sub-pixel decoding."""

from __future__ import annotations

import pytest
import torch

from facekp.codec import HeatmapCodec


def random_points(n: int, k: int, size: int, seed: int) -> torch.Tensor:
    """Random sub-pixel points over the whole crop, pixel-centre convention, with some exactly on
    the borders (-0.5 and size - 0.5 are the outer edges of the border pixels) and corners."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, k, 2, generator=g) * size - 0.5
    pts[0, :, 0] = -0.5  # left edge
    pts[1, :, 0] = size - 0.5  # right edge
    pts[2, :, 1] = -0.5  # top edge
    pts[3, :, 1] = size - 0.5  # bottom edge
    pts[4, :, :] = 0.0  # top-left pixel centre
    pts[5, :, :] = size - 1.0  # bottom-right pixel centre
    pts[6, :, 0] = torch.rand(k, generator=g) * 2 - 0.5  # within 2 px of the left edge
    pts[7, :, 1] = size - 0.5 - torch.rand(k, generator=g) * 2  # within 2 px of the bottom edge
    return pts


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0, 3.0])
def test_encode_decode_round_trip_subpixel(stride, sigma):
    codec = HeatmapCodec(input_size=96, stride=stride, sigma=sigma)
    pts = random_points(40, 15, 96, seed=stride * 10 + int(sigma * 2))
    heatmaps = codec.encode(pts)
    assert heatmaps.shape == (40, 15, 96 // stride, 96 // stride)
    decoded, confidence = codec.decode(heatmaps)
    assert decoded.shape == (40, 15, 2) and decoded.dtype == torch.float32
    # Compare in heatmap pixels, the unit the decoder works in.
    err = (codec.to_heatmap(decoded) - codec.to_heatmap(pts)).abs().max().item()
    assert err < 0.05, f"stride {stride}, sigma {sigma}: max error {err:.4f} heatmap px"
    assert torch.all((confidence >= 0) & (confidence <= 1))


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_decode_without_blur_is_exact_for_clean_gaussians(stride):
    # Without smoothing the Newton step on a log-Gaussian is exact, also at the borders
    # (the log-heatmap is extrapolated quadratically there).
    codec = HeatmapCodec(input_size=96, stride=stride, sigma=1.0, blur_kernel=1)
    pts = random_points(20, 15, 96, seed=stride)
    decoded, _ = codec.decode(codec.encode(pts))
    assert (codec.to_heatmap(decoded) - codec.to_heatmap(pts)).abs().max().item() < 1e-3


def test_heatmap_coordinate_convention():
    codec = HeatmapCodec(input_size=96, stride=4)
    # Heatmap cell j covers input pixels [4j, 4j + 4): its centre is input 4j + 1.5.
    assert codec.from_heatmap(torch.tensor([0.0, 23.0])).tolist() == [1.5, 93.5]
    # The outer edges of the input map to the outer edges of the heatmap.
    assert codec.to_heatmap(torch.tensor([-0.5, 95.5])).tolist() == [-0.5, 23.5]
    # A point on a cell centre encodes to a peak of exactly 1 there.
    hm = codec.encode(torch.tensor([[[4 * 7 + 1.5, 4 * 11 + 1.5]]]))
    assert hm[0, 0, 11, 7].item() == pytest.approx(1.0)
    assert hm[0, 0].argmax().item() == 11 * 24 + 7


def test_mask_zeroes_missing_heatmaps():
    codec = HeatmapCodec(96, 4, 1.0)
    pts = random_points(8, 15, 96, seed=3)[:3]
    mask = torch.ones(3, 15, dtype=torch.bool)
    mask[0, 2] = mask[1, 0] = mask[2, 14] = False
    hm = codec.encode(pts, mask)
    for n, k in [(0, 2), (1, 0), (2, 14)]:
        assert torch.count_nonzero(hm[n, k]) == 0
    visible = hm[mask]
    assert torch.all(visible.amax(dim=(-2, -1)) > 0.3)
    # Masking must not change the visible heatmaps.
    assert torch.equal(visible, codec.encode(pts)[mask])


def test_confidence_is_peak_height_clipped_to_unit_interval():
    codec = HeatmapCodec(96, 4, 1.0)
    hm = codec.encode(random_points(8, 15, 96, seed=4)[4:])
    hm[0] *= 3.0  # over-confident network output
    hm[1] *= -1.0  # all negative
    hm[2] *= 0.5
    _, confidence = codec.decode(hm)
    assert torch.all((confidence >= 0) & (confidence <= 1))
    assert torch.all(confidence[0] == 1.0)
    assert torch.all(confidence[1] == 0.0)
    assert torch.allclose(confidence[2], hm[2].amax(dim=(-2, -1)))  # the peak height itself


@pytest.mark.parametrize(
    "name, make",
    [
        ("zeros", lambda: torch.zeros(2, 15, 24, 24)),
        ("constant", lambda: torch.full((2, 15, 24, 24), 0.3)),
        ("negative", lambda: -torch.rand(2, 15, 24, 24)),
        ("huge", lambda: torch.full((2, 15, 24, 24), 1e30)),
        ("random noise", lambda: torch.rand(2, 15, 24, 24, generator=torch.Generator().manual_seed(0))),
        ("ridge", lambda: torch.ones(2, 15, 24, 24) * torch.linspace(0, 1, 24)[:, None]),
    ],
)
def test_decode_degenerate_heatmaps_gives_finite_points_in_range(name, make):
    codec = HeatmapCodec(96, 4, 1.0)
    points, confidence = codec.decode(make())
    assert torch.isfinite(points).all(), name
    assert torch.isfinite(confidence).all(), name
    # The argmax plus at most one heatmap cell of offset stays within the crop (plus one cell).
    assert points.min() >= -4.5 and points.max() <= 96 + 3.5, name


def test_decode_two_equal_peaks_picks_one_of_them_without_nan():
    codec = HeatmapCodec(96, 4, 1.0)
    a = torch.tensor([[[20.3, 30.7]]])
    b = torch.tensor([[[70.1, 61.2]]])
    hm = codec.encode(a) + codec.encode(b)  # two separated peaks of height 1
    points, confidence = codec.decode(hm)
    assert torch.isfinite(points).all()
    d = torch.stack([(points - a).norm(dim=-1), (points - b).norm(dim=-1)]).min()
    assert d < 0.3  # decodes one peak, not their average
    # Touching peaks (a saddle between them) must not produce NaN either.
    hm2 = codec.encode(torch.tensor([[[40.0, 40.0]]])) + codec.encode(torch.tensor([[[45.0, 40.0]]]))
    p2, _ = codec.decode(hm2)
    assert torch.isfinite(p2).all() and 38 < p2[0, 0, 0] < 47


def _reference_dark(heatmaps: torch.Tensor, sigma: float, blur_kernel: int = 5) -> torch.Tensor:
    """A plain float64 DARK decode written from the codec's documented algorithm: argmax; log of
    the map, padded one blur radius + 1 by quadratic extrapolation and capped at the map's max;
    Gaussian blur (sd max(sigma / 2, 0.5)); one Newton step on the log of the blurred map at the
    argmax, or a quarter cell towards the higher neighbour where the Hessian is not negative
    definite or the step leaves the cell. Returns heatmap-pixel coordinates (N, K, 2)."""
    hm = heatmaps.double()
    n, k, h, w = hm.shape
    r = blur_kernel // 2
    logh = hm.clamp_min(1e-10).log()
    cap = logh.amax(dim=(2, 3), keepdim=True)
    x = logh
    for _ in range(r + 1):  # quadratic extrapolation, one cell at a time, columns then rows
        x = torch.cat([3 * x[..., :1] - 3 * x[..., 1:2] + x[..., 2:3], x, 3 * x[..., -1:] - 3 * x[..., -2:-1] + x[..., -3:-2]], -1)
    for _ in range(r + 1):
        x = torch.cat([3 * x[..., :1, :] - 3 * x[..., 1:2, :] + x[..., 2:3, :], x, 3 * x[..., -1:, :] - 3 * x[..., -2:-1, :] + x[..., -3:-2, :]], -2)
    x = x.minimum(cap).exp()
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * max(sigma / 2, 0.5) ** 2))
    g = g / g.sum()
    blurred = torch.zeros(n, k, h + 2, w + 2, dtype=torch.float64)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            blurred += g[i] * g[j] * x[..., i : i + h + 2, j : j + w + 2]
    L = blurred.clamp_min(1e-300).log()
    out = torch.zeros(n, k, 2, dtype=torch.float64)
    for a in range(n):
        for b in range(k):
            iy, ix = divmod(int(hm[a, b].argmax()), w)
            v = lambda dx, dy: L[a, b, iy + 1 + dy, ix + 1 + dx]  # noqa: E731
            gx, gy = 0.5 * (v(1, 0) - v(-1, 0)), 0.5 * (v(0, 1) - v(0, -1))
            hxx, hyy = v(1, 0) - 2 * v(0, 0) + v(-1, 0), v(0, 1) - 2 * v(0, 0) + v(0, -1)
            hxy = 0.25 * (v(1, 1) - v(1, -1) - v(-1, 1) + v(-1, -1))
            det = hxx * hyy - hxy * hxy
            ox, oy = (-(hyy * gx - hxy * gy) / det, -(hxx * gy - hxy * gx) / det) if det > 1e-12 else (9.0, 9.0)
            if not (hxx < 0 and abs(ox) <= 1 and abs(oy) <= 1):
                ox, oy = 0.25 * torch.sign(gx), 0.25 * torch.sign(gy)
            out[a, b] = torch.tensor([ix + float(ox), iy + float(oy)])
    return out


@pytest.mark.parametrize("sigma, stride", [(1.0, 4), (2.0, 2)])
def test_decode_matches_a_plain_reference_on_noisy_heatmaps(sigma, stride):
    # Network-like output: Gaussian peaks of various heights (some on the border), plus noise
    # and a weaker second bump. The codec's optimised decode must agree with the reference.
    g = torch.Generator().manual_seed(int(sigma * 10) + stride)
    codec = HeatmapCodec(96, stride, sigma)
    pts = random_points(8, 15, 96, seed=11)
    hm = codec.encode(pts) * (0.3 + 0.7 * torch.rand(8, 15, 1, 1, generator=g))
    hm = hm + 0.4 * codec.encode(torch.rand(8, 15, 2, generator=g) * 95) * torch.rand(8, 15, 1, 1, generator=g)
    hm = hm + 0.03 * torch.randn(hm.shape, generator=g)
    points, _ = codec.decode(hm)
    expected = codec.from_heatmap(_reference_dark(hm, sigma).float())
    err = (points - expected).abs().amax(-1)
    assert err.max() < 1e-3 * stride, f"max difference {err.max():.2e} input px"


def test_decode_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(N, K, H, W\)"):
        HeatmapCodec().decode(torch.zeros(15, 24, 24))


def test_invalid_codec_parameters():
    with pytest.raises(ValueError, match="divisible"):
        HeatmapCodec(input_size=96, stride=5)
    with pytest.raises(ValueError, match="odd"):
        HeatmapCodec(blur_kernel=4)
