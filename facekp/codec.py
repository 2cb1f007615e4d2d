"""Gaussian heatmap codec: keypoints <-> heatmaps, with unbiased sub-pixel decoding.

Coordinate convention (UDP-style, shared by ``encode`` and ``decode``): points are in
input-crop pixels with the centre of the top-left pixel at (0, 0). Heatmap cell ``(i, j)``
covers input pixels ``[j*s, (j+1)*s)`` horizontally for stride ``s``, so its centre is at input
coordinate ``(j + 0.5) * s - 0.5``. Targets are Gaussians centred on the exact sub-pixel point
(no rounding), so decoding a clean target gives the point back.

Decoding is DARK (Zhang et al., CVPR 2020): argmax, Gaussian smoothing, then one Newton step
on the log-heatmap. Where the local Hessian is not negative definite (flat or multi-peaked
heatmaps) it falls back to Newell's quarter-pixel shift towards the higher neighbour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class HeatmapCodec:
    """Encode keypoints to Gaussian heatmaps and decode heatmaps back to keypoints.

    Args:
        input_size: side of the square input crop, in pixels.
        stride: input pixels per heatmap pixel.
        sigma: standard deviation of target Gaussians, in heatmap pixels.
        blur_kernel: side of the smoothing kernel used before the Taylor step (odd; 1 disables it).
    """

    def __init__(self, input_size: int = 96, stride: int = 4, sigma: float = 1.0, blur_kernel: int = 5) -> None:
        if input_size % stride:
            raise ValueError(f"input_size {input_size} is not divisible by stride {stride}")
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {blur_kernel}")
        self.input_size = input_size
        self.stride = stride
        self.sigma = float(sigma)
        self.blur_kernel = blur_kernel
        self.heatmap_size = input_size // stride

    @classmethod
    def for_config(cls, config) -> "HeatmapCodec":
        """The codec of a :class:`~facekp.config.DetectorConfig`: its input size, heatmap stride and sigma."""
        return cls(config.hourglass.input_size, config.hourglass.heatmap_stride, config.sigma)

    # -- coordinates -----------------------------------------------------------------
    def to_heatmap(self, points: torch.Tensor) -> torch.Tensor:
        """Input-crop pixel coordinates -> heatmap pixel coordinates."""
        return (points + 0.5) / self.stride - 0.5

    def from_heatmap(self, coords: torch.Tensor) -> torch.Tensor:
        """Heatmap pixel coordinates -> input-crop pixel coordinates."""
        return (coords + 0.5) * self.stride - 0.5

    # -- encode ----------------------------------------------------------------------
    def encode(self, points: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Gaussian target heatmaps.

        Args:
            points: ``(..., K, 2)`` float (x, y) in input-crop pixels.
            mask: ``(..., K)`` bool, False where a keypoint is missing; its heatmap is all zeros.

        Returns:
            ``(..., K, H, W)`` float32 heatmaps with peak 1 at each visible point.
        """
        points = torch.as_tensor(points, dtype=torch.float32)
        hm = self.to_heatmap(points)
        grid = torch.arange(self.heatmap_size, dtype=torch.float32, device=points.device)
        gx = torch.exp(-((grid - hm[..., 0:1]) ** 2) / (2 * self.sigma**2))  # (..., K, W)
        gy = torch.exp(-((grid - hm[..., 1:2]) ** 2) / (2 * self.sigma**2))  # (..., K, H)
        heatmaps = gy.unsqueeze(-1) * gx.unsqueeze(-2)
        if mask is not None:
            heatmaps = heatmaps * torch.as_tensor(mask, device=points.device)[..., None, None].to(heatmaps.dtype)
        return heatmaps

    # -- decode ----------------------------------------------------------------------
    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sub-pixel keypoints from heatmaps.

        Args:
            heatmaps: ``(N, K, H, W)`` network output.

        Returns:
            ``points`` ``(N, K, 2)`` float32 (x, y) in input-crop pixels, and ``confidence``
            ``(N, K)`` in [0, 1]: the heatmap peak value, clipped.
        """
        if heatmaps.ndim != 4:
            raise ValueError(f"heatmaps must have shape (N, K, H, W), got {tuple(heatmaps.shape)}")
        heatmaps = heatmaps.float()
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, h * w)
        peak, index = flat.max(dim=-1)
        ix = index % w
        iy = torch.div(index, w, rounding_mode="floor")
        coords = torch.stack((ix, iy), dim=-1).to(torch.float32)
        coords = coords + self._refine(heatmaps, ix, iy)
        return self.from_heatmap(coords), peak.clamp(0.0, 1.0)

    def _refine(self, heatmaps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
        """Sub-pixel offset (N, K, 2) added to the integer argmax."""
        n, k, h, w = heatmaps.shape
        if self.blur_kernel > 1 and h >= 3 and w >= 3:
            # (N, K, 9) smoothed log-heatmap around each peak, computed on the peak's window only.
            logs = self._peak_neighbourhood(heatmaps, ix, iy)
        else:
            logh = self._smoothed_log(heatmaps)  # (N, K, H + 2, W + 2): one cell of padding
            flat = logh.reshape(n, k, (h + 2) * (w + 2))
            centre = (iy + 1) * (w + 2) + (ix + 1)
            steps = torch.tensor([dy * (w + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=heatmaps.device)
            logs = flat.gather(-1, centre.unsqueeze(-1) + steps)
        dx, dy, dxx, dyy, dxy = (logs @ _DERIVATIVES.to(logs)).unbind(-1)
        det = dxx * dyy - dxy * dxy
        safe_det = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
        # offset = -H^-1 g for the 2x2 Hessian H = [[dxx, dxy], [dxy, dyy]].
        offset = torch.stack((dxy * dy - dyy * dx, dxy * dx - dxx * dy), dim=-1) / safe_det.unsqueeze(-1)
        taylor_ok = (det > 1e-12) & (dxx < 0) & (offset.abs() <= 1.0).all(-1)
        quarter = 0.25 * torch.stack((dx, dy), dim=-1).sign()
        return torch.where(taylor_ok.unsqueeze(-1), offset, quarter)

    def _smoothed_log(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Log of the Gaussian-smoothed heatmaps (DARK's modulation), padded by one cell.

        Padding extrapolates the log-heatmap quadratically, which continues a Gaussian
        exactly, so peaks on the border decode as well as inner ones. Extrapolated values
        are capped at each map's maximum so noise at the border cannot create a new peak.
        """
        n, k, h, w = heatmaps.shape
        radius = self.blur_kernel // 2
        logh = torch.log(heatmaps.clamp_min(1e-10))
        cap = logh.amax(dim=(2, 3), keepdim=True)
        padded = _pad_quadratic(logh, radius + 1).minimum(cap)
        if radius == 0:
            return padded
        sigma = max(self.sigma * 0.5, 0.5)
        t = torch.arange(-radius, radius + 1, dtype=heatmaps.dtype, device=heatmaps.device)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = g / g.sum()
        x = padded.exp().reshape(n * k, 1, h + 2 * radius + 2, w + 2 * radius + 2)
        x = F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1)).reshape(n, k, h + 2, w + 2)
        # Keep each map's maximum, so the smoothed log stays on the scale of the input.
        x = x * (cap.exp() / x.amax(dim=(2, 3), keepdim=True).clamp_min(1e-10))
        return torch.log(x.clamp_min(1e-10))

    def _peak_neighbourhood(self, heatmaps: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
        """What :meth:`_smoothed_log` holds at the 3x3 cells around each peak, as ``(N, K, 9)``.

        Same mathematics, computed on the ``(2r + 3)^2`` window that feeds those 9 cells only:
        the quadratic padding and the separable blur are linear maps along each axis, so the
        window is ``rows @ log(heatmap) @ cols`` with the rows/columns of the padding matrix
        picked per peak, then capped, exponentiated and blurred by a fixed ``(3, 2r + 3)``
        matrix. A few tensor ops whatever the batch size, and far less arithmetic than
        smoothing whole maps. The per-map rescaling of :meth:`_smoothed_log` adds a constant
        to the log, which the finite differences of :meth:`_refine` cancel, so it is skipped.
        Equal to the full-map result to float rounding (< 1e-4 heatmap px on the offsets).
        """
        n, k, h, w = heatmaps.shape
        # int(): under ONNX tracing the sizes are traced values; the operators must be constants.
        pad_h, pad_w, blur = self._operators(int(h), int(w), heatmaps.dtype, heatmaps.device)
        span = blur.shape[1]
        steps = torch.arange(span, device=heatmaps.device)
        logh = torch.log(heatmaps.clamp_min(1e-10))
        cap = logh.amax(dim=(2, 3), keepdim=True)
        # Padded row iy + j (j < span) holds rows iy - r - 1 + j of the map, extrapolated outside it.
        rows = pad_h[iy.unsqueeze(-1) + steps]  # (N, K, span, H)
        cols = pad_w[ix.unsqueeze(-1) + steps]  # (N, K, span, W)
        window = torch.matmul(torch.matmul(rows, logh), cols.transpose(-1, -2)).minimum(cap)
        smoothed = torch.matmul(torch.matmul(blur, window.exp()), blur.T)  # (N, K, 3, 3), [row, col]
        logs = torch.log(smoothed.clamp_min(1e-30)).reshape(n, k, 9)
        # A map with no value above the log floor is flat: no offset (as the full-map code gives).
        return logs.masked_fill(cap.reshape(n, k, 1) <= _LOG_FLOOR, 0.0)

    def _operators(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Quadratic padding matrices for both axes and the ``(3, 2r + 3)`` blur rows, cached."""
        key = (h, w, dtype, str(device))
        cache = self.__dict__.setdefault("_operator_cache", {})
        if key not in cache:
            radius = self.blur_kernel // 2
            sigma = max(self.sigma * 0.5, 0.5)
            t = torch.arange(-radius, radius + 1, dtype=torch.float64)
            g = torch.exp(-(t**2) / (2 * sigma**2))
            g = g / g.sum()
            ph, pw = _pad_matrix(h, radius + 1), _pad_matrix(w, radius + 1)
            cache[key] = tuple(m.to(device=device, dtype=dtype) for m in (ph, pw, _blur_matrix(3, g)))
        return cache[key]


#: log of the floor that heatmaps are clamped to before the log.
_LOG_FLOOR = float(torch.log(torch.tensor(1e-10)))

#: Central finite differences on a row-major 3x3 window (index (dy + 1) * 3 + dx + 1):
#: columns d/dx, d/dy, d2/dx2, d2/dy2, d2/dxdy, so one matmul gives all five per peak.
_DERIVATIVES = torch.tensor(
    [
        #  dx     dy   dxx  dyy    dxy
        [0.0, 0.0, 0.0, 0.0, 0.25],  # (-1, -1)
        [0.0, -0.5, 0.0, 1.0, 0.0],  # (0, -1)
        [0.0, 0.0, 0.0, 0.0, -0.25],  # (1, -1)
        [-0.5, 0.0, 1.0, 0.0, 0.0],  # (-1, 0)
        [0.0, 0.0, -2.0, -2.0, 0.0],  # (0, 0)
        [0.5, 0.0, 1.0, 0.0, 0.0],  # (1, 0)
        [0.0, 0.0, 0.0, 0.0, -0.25],  # (-1, 1)
        [0.0, 0.5, 0.0, 1.0, 0.0],  # (0, 1)
        [0.0, 0.0, 0.0, 0.0, 0.25],  # (1, 1)
    ]
)


def _pad_matrix(n: int, pad: int) -> torch.Tensor:
    """(n + 2 pad, n) float64 matrix of :func:`_pad_quadratic` along one axis of length ``n >= 3``.

    Row ``pad - j`` evaluates the parabola through the first three values at ``-j``:
    ``(j+1)(j+2)/2 x0 - j(j+2) x1 + j(j+1)/2 x2``; the last rows mirror it at the far end.
    """
    m = torch.zeros(n + 2 * pad, n, dtype=torch.float64)
    m[pad : pad + n] = torch.eye(n, dtype=torch.float64)
    for j in range(1, pad + 1):
        coef = torch.tensor([(j + 1) * (j + 2) / 2, -j * (j + 2), j * (j + 1) / 2], dtype=torch.float64)
        m[pad - j, :3] = coef
        m[pad + n - 1 + j, [n - 1, n - 2, n - 3]] = coef
    return m


def _blur_matrix(n_out: int, g: torch.Tensor) -> torch.Tensor:
    """(n_out, n_out + len(g) - 1) matrix of a 'valid' 1-D correlation with kernel ``g``."""
    m = torch.zeros(n_out, n_out + len(g) - 1, dtype=torch.float64)
    for i in range(n_out):
        m[i, i : i + len(g)] = g
    return m


def _pad_quadratic(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by ``pad`` cells each side, extrapolating quadratically."""
    for dim in (-1, -2):
        for _ in range(pad):
            first = 3 * x.narrow(dim, 0, 1) - 3 * x.narrow(dim, 1, 1) + x.narrow(dim, 2, 1)
            n = x.shape[dim]
            last = 3 * x.narrow(dim, n - 1, 1) - 3 * x.narrow(dim, n - 2, 1) + x.narrow(dim, n - 3, 1)
            x = torch.cat((first, x, last), dim=dim)
    return x
