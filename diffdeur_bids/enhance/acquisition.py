"""The grid a scan was acquired on, when its stored grid is finer (zero-filled k-space).

Scanners often reconstruct on a finer matrix than they acquire: k-space is zero-filled, so the
stored image has no content above the acquired band, and its noise is correlated over several
voxels. Along such an axis the power at the top of the spectrum is far below the noise's (known
from the air around the head, ``noise.rayleigh_sigma``), where an image with white noise keeps a
floor of about ``sigma^2`` up to the Nyquist frequency. :func:`acquired_band` finds the band's
edge; :func:`to_acquired_grid` resamples the scan onto the grid that holds exactly that band (a
Fourier crop, the inverse of the zero-filling), where the noise is white again and the
degradation model and the noise level hold. The field of view is kept.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

MIN_AXIS = 32             # shorter axes (few thick slices) are taken as acquired
TOP_BAND = 0.45           # cycles per voxel (Nyquist 0.5): the band that white noise still fills
TOP_TO_NOISE = 0.3        # top-band power below this share of sigma^2: no noise there, the band is limited
SEARCH_FROM = 0.10        # the band's edge is looked for above this frequency
KEEP_WHOLE = 0.9          # a band above this share of Nyquist is left as stored
SNAP = 0.15               # a stored-to-acquired ratio this close to a whole number is that number (2x zero-filling is common)


def _axis_spectrum(y: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean power per non-negative frequency (cycles per voxel) along ``axis``."""
    n = y.shape[axis]
    power = np.abs(np.fft.rfft(y - y.mean(), axis=axis, norm="ortho")) ** 2
    other = tuple(a for a in range(y.ndim) if a != axis)
    return np.fft.rfftfreq(n), power.mean(axis=other)


def acquired_band(y: np.ndarray, axis: int, noise_sigma: float) -> float:
    """The share of the Nyquist band the scan's content fills along ``axis`` (1.0: all of it).

    ``noise_sigma`` is the noise of the stored voxels (same units as ``y``).
    """
    if y.shape[axis] < MIN_AXIS or not noise_sigma > 0:
        return 1.0
    freq, power = _axis_spectrum(np.asarray(y, dtype=np.float64), axis)
    if power[freq >= TOP_BAND].mean() > TOP_TO_NOISE * noise_sigma**2:
        return 1.0
    # the edge: the steepest fall of the (smoothed) log power
    log_power = gaussian_filter1d(np.log(np.maximum(power, 1e-30)), 1.5)
    slope = np.gradient(log_power, freq)
    search = freq >= SEARCH_FROM
    edge = float(freq[search][np.argmin(slope[search])])
    return min(1.0, edge / 0.5)


def acquired_shape(shape, bands) -> tuple[int, ...]:
    """Voxels per axis on the acquired grid: the stored count times the band, snapped to whole ratios."""
    out = []
    for n, band in zip(shape, bands):
        if band >= KEEP_WHOLE:
            out.append(int(n))
            continue
        ratio = 1.0 / band
        if abs(ratio - round(ratio)) < SNAP and n % round(ratio) == 0:
            ratio = float(round(ratio))
        out.append(max(MIN_AXIS // 2, int(round(n / ratio))))
    return tuple(out)


def fourier_crop(y: np.ndarray, axis: int, m: int) -> np.ndarray:
    """``y`` resampled to ``m`` voxels along ``axis`` by keeping its lowest frequencies.

    Voxel ``i`` of the result is centred at ``(i + 0.5) n / m - 0.5`` in the stored voxel index
    (the field of view is kept); intensities are kept (a constant stays the same constant).
    """
    n = y.shape[axis]
    spectrum = np.fft.fft(y, axis=axis)
    k = np.fft.fftfreq(n) * n  # integer frequencies
    shift = 0.5 * n / m - 0.5
    phase = np.exp(2j * np.pi * k * shift / n)
    shape = [1] * y.ndim
    shape[axis] = n
    spectrum = spectrum * phase.reshape(shape)
    keep = np.abs(k) < m / 2
    out_shape = list(y.shape)
    out_shape[axis] = m
    cropped = np.zeros(out_shape, dtype=complex)
    target = np.round(k[keep]).astype(int) % m
    index = [slice(None)] * y.ndim
    index[axis] = target
    source = [slice(None)] * y.ndim
    source[axis] = np.flatnonzero(keep)
    cropped[tuple(index)] = spectrum[tuple(source)]
    return (np.fft.ifft(cropped, axis=axis).real * (m / n)).astype(np.float32)


def to_acquired_grid(y: np.ndarray, affine: np.ndarray, noise_sigma: float
                     ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """``(y on the acquired grid, its affine, the band per axis)``; ``y`` itself when nothing is limited."""
    bands = tuple(acquired_band(y, axis, noise_sigma) for axis in range(y.ndim))
    shape = acquired_shape(y.shape, bands)
    if shape == tuple(y.shape):
        return y, affine, bands
    out = y
    scale = np.eye(4)
    for axis, (n, m) in enumerate(zip(y.shape, shape)):
        if m != n:
            out = fourier_crop(out, axis, m)
            scale[axis, axis] = n / m
            scale[axis, 3] = 0.5 * n / m - 0.5
    return np.maximum(out, 0).astype(np.float32), np.asarray(affine, dtype=float) @ scale, bands
