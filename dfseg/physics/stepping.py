"""Phase-stepping retrieval: from a Talbot-Lau scanner's raw frames to ``T``, ``D`` and the differential phase.

Model of stepping frame k at pixel p (dark current already subtracted):

    I_pk = g_k a0_p (1 + V_p cos(x_k + phi_p)) = g_k (c0_p + c1_p cos x_k + c2_p sin x_k)

with ``x_k`` the step phase in radians (2 pi * grating position / grating period), ``g_k`` the frame's
relative dose (flux fluctuation, 1 when there is none), ``a1 = a0 V = hypot(c1, c2)``,
``phi = atan2(-c2, c1)`` and ``c0 = a0``. Sample and flat (reference) curves give

    T = a0_s / a0_r,   D = V_s / V_r,   dphi = phi_s - phi_r wrapped to (-pi, pi]

as :func:`dfseg.physics.forward.retrieve` defines them (equally spaced steps give the same numbers).

Layout: ``frames`` are ``(*lead, M, *pix)`` with the M steps on ``axis``; per-frame quantities
(phases, dose) are ``(*lead, M)`` and per-pixel results ``(*lead, *pix)``. For a scan,
``lead = (N, A)`` (grating orientations, projection angles) and ``pix = (U, Z)`` (detector columns,
rows). Work is done in float64 torch on the input's device; numpy in gives numpy out, torch in
gives torch out on the same device (``import torch`` happens on use, as elsewhere in
``dfseg.physics``).

Unknown or jittered step positions are estimated with the advanced iterative algorithm (AIA) of
Wang and Han, Opt. Lett. 29 (2004) 1671, extended by a per-frame dose: alternate (a) per-pixel
least squares of ``(c0, c1, c2)`` given the frames' phases and doses and (b) per-frame least
squares of ``(g_k, g_k cos x_k, g_k sin x_k)`` given the pixels' coefficients, over many pixels
(:func:`estimate_steps`). It needs M >= 4 and a fringe phase ``phi_p`` that varies across the
pixels used (moire fringes in a flat field). A constant added to every ``x_k`` is absorbed by
every ``phi_p`` and cannot be measured; the estimate is fixed so that its circular mean offset
from the nominal phases is 0 and its mean dose is 1. With phases and doses both free, the frames
cannot tell either the first harmonic of the doses in the step phase: ``I = C U^T`` with rows
``u_k = g_k (1, cos x_k, sin x_k)`` is unchanged by a Lorentz boost of the u's (and the inverse on
the pixels' coefficients), which keeps them on the cone ``u0^2 = u1^2 + u2^2``; that harmonic is
set to 0 (:func:`_boost`). Doses alone at known phases are solved in closed form. When the pixels'
curves are known (the air region of a sample projection against the interpolated flat), step (b)
alone gives each frame's phase and dose in the flat's frame of reference, for any M >= 3
(:func:`estimate_steps_from_reference`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from dfseg.errors import InputError

__all__ = [
    "estimate_steps",
    "estimate_steps_from_reference",
    "fit_curves",
    "interpolate_flats",
    "retrieve_projections",
    "retrieve_signals",
    "signal_ratios",
    "step_phases",
    "subtract_dark",
    "wrap_phase",
]

#: Methods of :func:`fit_curves`: FFT for equally spaced steps, least squares for any steps.
METHODS = ("auto", "fft", "lsq")

#: Largest departure (radians) from equal spacing the FFT path accepts.
_EQUAL_SPACING_TOL = 1e-9

#: Passes over a scan's projections that refine the flats' gauge when their phases and doses are both estimated.
_MAX_REFINE = 20

#: Refinement stops once no flat needs a boost larger than this (a first harmonic of the relative dose).
_REFINE_TOL = 1e-10

#: Elements of float64 raw frames :func:`retrieve_projections` converts at once (64 MiB).
_CHUNK_ELEMENTS = 2**23

Params = tuple[Any, Any, Any]


def _torch():
    import torch  # on use: dfseg.physics itself needs numpy only

    return torch


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as64(x: Any, where: str, device=None):
    """``x`` as a plain float64 torch tensor (on ``device``, default: its own or the CPU)."""
    torch = _torch()
    if _is_torch(x):
        t = x.detach().as_subclass(torch.Tensor)
        return t.to(device=device if device is not None else t.device, dtype=torch.float64)
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(where, f"expected a numeric array, got {type(x).__name__}") from None
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).to(device or "cpu")


def _host(x: Any) -> np.ndarray:
    """Small index arrays (times of flats and projections) as float64 numpy, from numpy, lists or tensors."""
    return x.detach().cpu().double().numpy() if _is_torch(x) else np.asarray(x, dtype=np.float64)


def _out(t, like: Any):
    """float64 result ``t`` as numpy, or as torch when ``like`` is a tensor (it already is on its device)."""
    return t if _is_torch(like) else t.cpu().numpy()


def _check_finite(t, where: str) -> None:
    torch = _torch()
    if not bool(torch.isfinite(t).all()):
        raise InputError(where, "holds NaN or infinite values")


def step_phases(m: int) -> np.ndarray:
    """Nominal phases ``2 pi k / M`` of M equally spaced steps over one grating period, radians, ``(M,)``."""
    return 2.0 * np.pi * np.arange(int(m)) / int(m)


def wrap_phase(phi):
    """``phi`` wrapped to (-pi, pi], radians; numpy or torch as given."""
    if _is_torch(phi):
        return math.pi - (math.pi - phi).remainder(2 * math.pi)
    return np.pi - np.mod(np.pi - np.asarray(phi, dtype=np.float64), 2 * np.pi)


def subtract_dark(frames, dark, *, stack_axis: int | None = None, clip: bool = False):
    """Dark-current subtraction: ``frames - mean(dark)``.

    Args:
        frames: raw detector frames (counts), any shape.
        dark: dark frame(s) (counts, beam off), broadcastable to ``frames`` once the stack axis is
            averaged (e.g. ``(U, Z)`` for frames ``(..., U, Z)``).
        stack_axis: the axis of ``dark`` holding repeated dark frames, averaged first (None: one frame).
        clip: set negative results (noise in dark pixels) to 0.

    Returns:
        float64 ``frames``-shaped counts; numpy, or torch on ``frames``' device.

    Raises:
        InputError: non-finite values, or ``dark`` does not broadcast to ``frames``.
    """
    f = _as64(frames, "frames")
    d = _as64(dark, "dark", f.device)
    _check_finite(f, "frames")
    _check_finite(d, "dark")
    if stack_axis is not None:
        if not -d.ndim <= stack_axis < d.ndim or d.shape[stack_axis] == 0:
            raise InputError("dark", f"no dark-frame stack on axis {stack_axis} of shape {tuple(d.shape)}")
        d = d.mean(dim=stack_axis)
    try:
        out = f - d
    except RuntimeError:
        raise InputError("dark", f"shape {tuple(d.shape)} does not broadcast to frames {tuple(f.shape)}") from None
    if out.shape != f.shape:
        raise InputError("dark", f"shape {tuple(d.shape)} does not broadcast to frames {tuple(f.shape)}")
    return _out(out.clamp_min(0.0) if clip else out, frames)


# ---------------------------------------------------------------------------------------------
# Curves: (L, P, M) frames (L leading groups, P pixels, M steps) and (L, M) phases.


def _flatten(frames, axis: int, where: str, device=None):
    """``(*lead, M, *pix)`` frames -> float64 ``(L, P, M)``, with ``lead``, ``pix`` shapes and M."""
    f = _as64(frames, where, device)
    if f.ndim == 0:
        raise InputError(where, "expected stepping frames, got a scalar")
    if not -f.ndim <= axis < f.ndim:
        raise InputError(where, f"step axis {axis} out of range for shape {tuple(f.shape)}")
    axis %= f.ndim
    lead, m, pix = tuple(f.shape[:axis]), f.shape[axis], tuple(f.shape[axis + 1:])
    if m < 3:
        raise InputError(where, f"need at least 3 phase steps, got {m} (shape {tuple(f.shape)}, step axis {axis})")
    _check_finite(f, where)
    f = f.reshape(math.prod(lead), m, math.prod(pix)).transpose(1, 2)
    return f, lead, pix, m


def _phases(phases, lead: tuple, m: int, device, where: str):
    """Per-frame phases broadcast to ``(L, M)`` float64 (None: the nominal ``2 pi k / M``)."""
    torch = _torch()
    p = torch.from_numpy(step_phases(m)).to(device) if phases is None else _as64(phases, where, device)
    try:
        p = torch.broadcast_to(p, (*lead, m))
    except RuntimeError:
        raise InputError(where, f"shape {tuple(p.shape)} does not broadcast to (*lead, M) = {(*lead, m)}") from None
    _check_finite(p, where)
    return p.reshape(-1, m)


def _unflatten(t, lead: tuple, pix: tuple):
    return t.reshape(*lead, *pix)


def _design(x):
    """``(L, M, 3)`` design matrix rows ``(1, cos x_k, sin x_k)``."""
    torch = _torch()
    return torch.stack([torch.ones_like(x), torch.cos(x), torch.sin(x)], dim=-1)


def _pinv(x, where: str):
    """``(L, 3, M)`` least-squares operator of the design matrix; error when the phases do not span it."""
    torch = _torch()
    r = _design(x)
    g = r.transpose(1, 2) @ r
    ev = torch.linalg.eigvalsh(g)
    if not bool((ev[:, 0] > 1e-9 * ev[:, -1]).all()):
        raise InputError(where, "the step phases do not determine a stepping curve (fewer than 3 distinct "
                                "phases modulo 2 pi); check the grating positions")
    return torch.linalg.inv(g) @ r.transpose(1, 2)


def _lsq_coeffs(f, x, where: str = "phases"):
    """Per-pixel ``(c0, c1, c2)`` ``(L, P, 3)`` of ``(L, P, M)`` frames at ``(L, M)`` phases."""
    torch = _torch()
    return torch.einsum("ljm,lpm->lpj", _pinv(x, where), f)


def _params(c) -> Params:
    torch = _torch()
    return c[..., 0], torch.hypot(c[..., 1], c[..., 2]), torch.atan2(-c[..., 2], c[..., 1])


def _coeffs(a0, a1, phi):
    torch = _torch()
    return torch.stack([a0, a1 * torch.cos(phi), -a1 * torch.sin(phi)], dim=-1)


def _equally_spaced(x) -> bool:
    torch = _torch()
    m = x.shape[-1]
    nominal = torch.from_numpy(step_phases(m)).to(x.device)
    return bool((wrap_phase(x - x[:, :1] - nominal).abs() <= _EQUAL_SPACING_TOL).all())


def _fit(f, x, method: str, given: bool, where: str = "phases") -> Params:
    """``(a0, a1, phi)`` ``(L, P)`` each; ``given``: the phases were given (or estimated), not nominal."""
    torch = _torch()
    if method not in METHODS:
        raise InputError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "lsq" or (method == "auto" and given):
        return _params(_lsq_coeffs(f, x, where))
    if not _equally_spaced(x):
        raise InputError(where, "method 'fft' needs equally spaced steps over one period (2 pi k / M + offset); "
                                "use method 'lsq'")
    m = f.shape[-1]
    spec = torch.fft.fft(f, dim=-1)
    z = spec[..., 1] * (2.0 / m)
    return spec[..., 0].real / m, z.abs(), wrap_phase(torch.angle(z) - x[:, :1])


def fit_curves(frames, phases=None, *, axis: int = 0, method: str = "auto") -> Params:
    """Mean ``a0``, first-harmonic amplitude ``a1`` and phase ``phi`` of stepping curves.

    Least squares solves ``I_k = c0 + c1 cos x_k + c2 sin x_k`` in closed form (the pseudo-inverse
    of the 3-column design matrix) for any M >= 3 phases spanning it; FFT takes the first harmonic
    of equally spaced steps ``x_k = x_0 + 2 pi k / M`` (identical numbers for such steps).

    Args:
        frames: counts ``(*lead, M, *pix)``, dark-subtracted.
        phases: step phases in radians, broadcastable to ``(*lead, M)`` (per frame, e.g. per
            projection); None: nominal ``2 pi k / M``.
        axis: the step axis of ``frames``.
        method: ``"fft"``, ``"lsq"`` or ``"auto"`` (FFT when ``phases`` is None, else least squares).

    Returns:
        ``(a0, a1, phi)``, float64 ``(*lead, *pix)`` each (counts, counts, radians in (-pi, pi]);
        numpy, or torch on ``frames``' device.

    Raises:
        InputError: fewer than 3 steps, non-finite values, phases that do not broadcast or do not
            determine a curve, ``"fft"`` with unequal steps, unknown method.
    """
    f, lead, pix, m = _flatten(frames, axis, "frames")
    x = _phases(phases, lead, m, f.device, "phases")
    return tuple(_out(_unflatten(p, lead, pix), frames) for p in _fit(f, x, method, phases is not None))


def _ratios(sample: Params, flat: Params):
    """``(T, D, dphi)`` from sample and flat ``(a0, a1, phi)``; a pixel without counts gets D = 0."""
    torch = _torch()
    a0s, a1s, phis = sample
    a0r, a1r, phir = flat
    t = a0s / a0r
    vs = torch.where(a0s > 0, a1s / torch.where(a0s > 0, a0s, torch.ones_like(a0s)), torch.zeros_like(a0s))
    return t, vs / (a1r / a0r), wrap_phase(phis - phir)


def signal_ratios(sample: Params, flat: Params) -> Params:
    """``(T, D, dphi)`` = ``(a0_s / a0_r, V_s / V_r, wrap(phi_s - phi_r))`` from two ``(a0, a1, phi)`` triples.

    Args:
        sample: the sample curves' ``(a0, a1, phi)`` (counts, counts, radians).
        flat: the flat (reference) curves' ``(a0, a1, phi)``, broadcastable to the sample's.

    Returns:
        float64 ``(T, D, dphi)``; numpy, or torch when the sample's ``a0`` is a tensor. A sample pixel
        without counts (``a0_s <= 0``) has no measurable visibility: D = 0 there, as in
        :func:`dfseg.physics.forward.retrieve`.
    """
    like = sample[0]
    s = [_as64(p, "sample") for p in sample]
    r = [_as64(p, "flat", s[0].device) for p in flat]
    return tuple(_out(q, like) for q in _ratios(s, r))


def retrieve_signals(sample, flat, sample_phases=None, flat_phases=None, *, axis: int = 0,
                     method: str = "auto") -> Params:
    """``(T, D, dphi)`` from sample and flat stepping frames of the same layout.

    The general form of :func:`dfseg.physics.forward.retrieve`: per-frame step phases may differ
    between sample and flat, and the differential phase comes too.

    Args:
        sample: sample counts ``(*lead, M, *pix)``, dark-subtracted.
        flat: flat counts with the same M on ``axis``, broadcastable leading and pixel dimensions.
        sample_phases: sample step phases (radians) broadcastable to ``(*lead, M)``; None: nominal.
        flat_phases: flat step phases, likewise for the flat's leading shape.
        axis: the step axis of both.
        method: see :func:`fit_curves`.

    Returns:
        float64 ``(T, D, dphi)`` of the broadcast per-pixel shape; numpy, or torch on the sample's device.
    """
    s = fit_curves(_as64(sample, "sample"), sample_phases, axis=axis, method=method)
    r = fit_curves(_as64(flat, "flat", s[0].device), flat_phases, axis=axis, method=method)
    if not bool((r[0] > 0).all()):
        raise InputError("flat", "zero or negative mean counts in some pixel; check the flat field and dark frames")
    return tuple(_out(q, sample) for q in _ratios(s, r))


# ---------------------------------------------------------------------------------------------
# Step phases and doses.


def _mask(mask, lead: tuple, pix: tuple, device, where: str = "mask"):
    """0/1 float64 pixel weights ``(L, P)`` (None: all pixels)."""
    torch = _torch()
    n = math.prod(lead)
    if mask is None:
        return torch.ones((n, math.prod(pix)), dtype=torch.float64, device=device)
    m = _as64(mask, where, device) != 0
    try:
        m = torch.broadcast_to(m, (*lead, *pix))
    except RuntimeError:
        raise InputError(where, f"shape {tuple(m.shape)} does not broadcast to (*lead, *pix) = "
                                f"{(*lead, *pix)}") from None
    m = m.reshape(n, -1).to(torch.float64)
    if not bool((m.sum(dim=1) > 0).all()):
        raise InputError(where, "selects no pixel in some projection")
    return m


def _solve(a, b, where: str, problem: str, min_ratio: float = 1e-10):
    """``a^-1 b`` for ``(L, n, n)`` ``a`` and ``(L, M, n)`` ``b``; error when the smallest eigenvalue of
    ``a`` is below ``min_ratio`` times its largest."""
    torch = _torch()
    ev = torch.linalg.eigvalsh(a)
    worst = float((ev[:, 0] / ev[:, -1].clamp_min(1e-300)).min())
    if not worst > min_ratio:
        raise InputError(where, f"{problem}; eigenvalue ratio {worst:.1e}, need > {min_ratio:.0e}")
    return torch.einsum("lij,lmj->lmi", torch.linalg.inv(a), b)


_NO_DIVERSITY = ("cannot estimate the step phases: the fringe phase does not vary across the pixels used "
                 "(need moire fringes or a visibility > 0 there)")
#: the smallest eigenvalue ratio of the per-frame normal matrix a fit against known curves accepts:
#: below it (the air columns of a detector with about one fringe across it give 5e-5 to 2e-4) the
#: estimated phases and doses follow the noise and the retrieved D in the air drifts far from 1
_MIN_DIVERSITY = 1e-3


def _frame_step(f, c, w, x, g, fit_phases: bool, fit_dose: bool, where: str, *, ratio: bool = False):
    """Step (b): per-frame phases and doses ``(L, M)`` given pixel coefficients ``c`` ``(L, P, 3)``.

    ``ratio``: known curves (a reference's, e.g. the air columns against the flat): a dose alone
    as the ratio of sums (Poisson maximum likelihood) instead of least squares (the objective of
    step (a), which the alternation needs), and the fit refused unless the pixels' fringe phases
    spread enough (:data:`_MIN_DIVERSITY`) that noise cannot swamp it.
    """
    torch = _torch()
    min_ratio = _MIN_DIVERSITY if ratio else 1e-10
    cw = c * w[..., None]
    if fit_phases and fit_dose:
        a = torch.einsum("lpi,lpj->lij", cw, c)
        u = _solve(a, torch.einsum("lpi,lpm->lmi", cw, f), where, _NO_DIVERSITY, min_ratio)
        return torch.atan2(u[..., 2], u[..., 1]), u[..., 0]
    if fit_phases:
        j = f / g[:, None, :] - c[..., :1]
        a = torch.einsum("lpi,lpj->lij", cw[..., 1:], c[..., 1:])
        u = _solve(a, torch.einsum("lpi,lpm->lmi", cw[..., 1:], j), where, _NO_DIVERSITY, min_ratio)
        return torch.atan2(u[..., 1], u[..., 0]), g
    if fit_dose:
        model = torch.einsum("lpj,lmj->lpm", c, _design(x))
        num = torch.einsum("lp,lpm->lm", w, f if ratio else f * model)
        den = torch.einsum("lp,lpm->lm", w, model if ratio else model * model)
        if not bool((den > 0).all()):
            raise InputError(where, "the curves have no counts in the pixels used for the dose")
        return x, num / den
    return x, g


def _first_harmonic(x, g):
    """``beta`` ``(L, 2)`` of the relative dose ``g / mean(g) ~ b0 + beta . (cos x_k, sin x_k)`` (least squares)."""
    torch = _torch()
    design = _design(x)
    coef = torch.linalg.lstsq(design, (g / g.mean(dim=-1, keepdim=True))[..., None]).solution[..., 0]
    return coef[:, 1:]


def _dose_variance(x, g) -> float:
    """Pooled variance of relative doses ``(L, M)`` about their fit by ``b0 + beta . (cos x, sin x)``: what the
    data tell of the dose fluctuation (the fitted first harmonic is what they do not, when phases are free)."""
    torch = _torch()
    rel = g / g.mean(dim=-1, keepdim=True)
    design = _design(x)
    coef = torch.linalg.lstsq(design, rel[..., None]).solution
    resid = rel - (design @ coef)[..., 0]
    return float((resid**2).sum() / (resid.numel() - 3 * resid.shape[0]))


def _boost(x, g, beta=None):
    """Lorentz boost of ``u_k = g_k (1, cos x_k, sin x_k)`` by ``beta`` ``(L, 2)``; returns the new ``(x, g)``.

    With phases and doses both free, ``I = C U^T`` is unchanged by ``U -> U L^T``, ``C -> C L^-1``
    for any L preserving the cone ``u0^2 = u1^2 + u2^2``: a boost changes ``g_k`` by a factor
    ``gamma (1 - beta . (cos x_k, sin x_k))`` and shifts the phases, and the data cannot tell. The
    default ``beta`` is the dose's own first harmonic (:func:`_first_harmonic`), which the boost
    takes out to first order; repeated every iteration it converges to that gauge.
    """
    torch = _torch()
    n = torch.stack([torch.cos(x), torch.sin(x)], dim=-1)  # (L, M, 2)
    beta = _first_harmonic(x, g) if beta is None else beta
    speed = beta.norm(dim=-1, keepdim=True)
    beta = torch.where(speed > 0.5, beta * (0.5 / speed.clamp_min(1e-300)), beta)
    speed = beta.norm(dim=-1, keepdim=True)
    gamma = 1.0 / torch.sqrt(1.0 - speed**2)
    unit = beta / speed.clamp_min(1e-300)
    u0, uv = g, g[..., None] * n
    along = (uv * unit[:, None, :]).sum(dim=-1, keepdim=True)
    u0_new = gamma * (u0 - (uv * beta[:, None, :]).sum(dim=-1))
    uv_new = uv + (gamma[..., None] - 1.0) * along * unit[:, None, :] - gamma[..., None] * u0[..., None] * beta[:, None, :]
    return torch.atan2(uv_new[..., 1], uv_new[..., 0]), u0_new


def _gauge(x, g, x_nominal, fit_phases: bool, fit_dose: bool, boost: bool = True):
    """Fix what the data cannot tell: mean dose 1, circular mean offset from the nominal phases 0, and
    (phases and doses both free, ``boost``) no first harmonic of the dose in the step phase (:func:`_boost`)."""
    torch = _torch()
    if fit_phases and fit_dose and boost:
        x, g = _boost(x, g)
    if fit_dose:
        g = g / g.mean(dim=-1, keepdim=True)
    if fit_phases:
        d = x - x_nominal
        offset = torch.atan2(torch.sin(d).sum(dim=-1, keepdim=True), torch.cos(d).sum(dim=-1, keepdim=True))
        x = x_nominal + wrap_phase(d - offset)
    return x, g


def _dose_direct(f, x, w, where: str):
    """Doses ``(L, M)`` of frames at known phases, without iterating.

    ``h_k I_pk = c0_p + c1_p cos x_k + c2_p sin x_k`` with ``h = 1 / g`` is linear in ``(h, c)``;
    eliminating each pixel's ``c`` leaves ``min h^T A h``, ``A = Q o sum_p I_p I_p^T`` (Q the
    projector off the design matrix's columns, o the elementwise product), solved by the eigenvector
    of A's smallest eigenvalue. A second (near-)zero eigenvalue means the doses are not determined
    (no visibility, or M = 3).
    """
    torch = _torch()
    m = x.shape[-1]
    r = _design(x)
    q = torch.eye(m, dtype=x.dtype, device=x.device) - r @ _pinv(x, "phases")
    a = q * torch.einsum("lp,lpm,lpn->lmn", w, f, f)
    ev, vec = torch.linalg.eigh(a)
    if not bool((ev[:, 1] > 1e-12 * ev[:, -1].clamp_min(1e-300)).all()):
        raise InputError(where, "the frames do not determine their doses (no visibility in the pixels used?)")
    h = vec[..., 0]
    h = h * torch.sign(h.sum(dim=-1, keepdim=True))
    if not bool((h > 0).all()):
        raise InputError(where, "the dose estimate is not positive in some frame; check the frames and phases")
    g = 1.0 / h
    return g / g.mean(dim=-1, keepdim=True)


def _als(f, x_nominal, w, *, fit_phases: bool, fit_dose: bool, max_iter: int, tol: float, where: str):
    """Step phases and doses ``(x, g)`` ``(L, M)`` of ``(L, P, M)`` frames.

    Doses alone in closed form (:func:`_dose_direct`); with phases, alternating least squares (AIA,
    with doses when asked), gauge fixed every iteration (:func:`_gauge`).
    """
    torch = _torch()
    if not fit_phases:
        g = _dose_direct(f, x_nominal, w, where) if fit_dose else torch.ones_like(x_nominal)
        return x_nominal, g
    x, g = x_nominal.clone(), torch.ones_like(x_nominal)
    for _ in range(max_iter):
        c = _lsq_coeffs(f / g[:, None, :], x, where)
        x_new, g_new = _frame_step(f, c, w, x, g, fit_phases, fit_dose, where)
        x_new, g_new = _gauge(x_new, g_new, x_nominal, fit_phases, fit_dose)
        change = max(float(wrap_phase(x_new - x).abs().max()), float((g_new - g).abs().max()))
        x, g = x_new, g_new
        if change < tol:
            break
    return x, g


def estimate_steps(frames, phases=None, *, axis: int = 0, mask=None, fit_phases: bool = True,
                   fit_dose: bool = True, max_iter: int = 500, tol: float = 1e-12):
    """Per-frame step phases and doses from the frames alone (AIA with doses, module doc).

    Suited to a flat-field series (every pixel is air) or any region with moire fringes. The
    result is fixed up to what the data cannot tell: mean dose 1 and circular mean offset from
    ``phases`` 0 per leading index, and, with both fitted, no first harmonic of the dose in the
    step phase (module doc). Doses alone (``fit_phases=False``) come in closed form.

    Args:
        frames: counts ``(*lead, M, *pix)``, dark-subtracted, M >= 4.
        phases: nominal step phases (radians), broadcastable to ``(*lead, M)``, the starting point;
            None: ``2 pi k / M``.
        axis: the step axis.
        mask: pixels to use, boolean broadcastable to ``(*lead, *pix)``; None: all.
        fit_phases: estimate the phases (else they stay at ``phases``).
        fit_dose: estimate the doses (else 1).
        max_iter: iteration limit.
        tol: stop when no phase (radians) or dose changes by more than this.

    Returns:
        ``(phases, dose)``, float64 ``(*lead, M)`` each; numpy, or torch on ``frames``' device.

    Raises:
        InputError: fewer than 4 steps (with 3, any phases fit every pixel exactly), a fringe phase
            that does not vary across the pixels, bad shapes or values.
    """
    f, lead, pix, m = _flatten(frames, axis, "frames")
    if m < 4 and (fit_phases or fit_dose):
        raise InputError("frames", f"estimating step phases or doses from the frames alone needs at least 4 "
                                   f"steps, got {m}")
    x0 = _phases(phases, lead, m, f.device, "phases")
    w = _mask(mask, lead, pix, f.device)
    x, g = _als(f, x0, w, fit_phases=fit_phases, fit_dose=fit_dose, max_iter=max_iter, tol=tol, where="frames")
    return _out(x.reshape(*lead, m), frames), _out(g.reshape(*lead, m), frames)


def estimate_steps_from_reference(frames, reference: Params, phases=None, *, axis: int = 0, mask=None,
                                  fit_phases: bool = True, fit_dose: bool = True):
    """Per-frame step phases and doses from pixels whose curves are known.

    In a sample projection's air region the curve is the flat's times the frame's dose, so
    ``I_pk = g_k (c0_p + c1_p cos x_k + c2_p sin x_k)`` with the flat's coefficients is solved per
    frame for ``(g_k, g_k cos x_k, g_k sin x_k)`` by least squares over the pixels (with fixed
    phases: ``g_k = sum I_pk / sum model_pk``, the Poisson maximum-likelihood scale). Phases come
    out in the flat's frame of reference; doses are relative to the flat (not normalised).

    Args:
        frames: counts ``(*lead, M, *pix)``, dark-subtracted, M >= 3.
        reference: the known curves' ``(a0, a1, phi)`` (counts, counts, radians), each broadcastable
            to ``(*lead, *pix)``.
        phases: step phases (radians) broadcastable to ``(*lead, M)``; used as they are when
            ``fit_phases`` is False; None: ``2 pi k / M``.
        axis: the step axis.
        mask: pixels whose curve ``reference`` describes (the air region), boolean broadcastable to
            ``(*lead, *pix)``; None: all.
        fit_phases: estimate the phases.
        fit_dose: estimate the doses (else 1).

    Returns:
        ``(phases, dose)``, float64 ``(*lead, M)`` each; numpy, or torch on ``frames``' device.
    """
    torch = _torch()
    f, lead, pix, m = _flatten(frames, axis, "frames")
    x = _phases(phases, lead, m, f.device, "phases")
    w = _mask(mask, lead, pix, f.device)
    ref = []
    for p in reference:
        p = _as64(p, "reference", f.device)
        try:
            ref.append(torch.broadcast_to(p, (*lead, *pix)).reshape(f.shape[0], -1))
        except RuntimeError:
            raise InputError("reference", f"shape {tuple(p.shape)} does not broadcast to (*lead, *pix) = "
                                          f"{(*lead, *pix)}") from None
    c = _coeffs(*ref)
    x, g = _frame_step(f, c, w, x, torch.ones_like(x), fit_phases, fit_dose, "reference", ratio=True)
    return _out(x.reshape(*lead, m), frames), _out(g.reshape(*lead, m), frames)


# ---------------------------------------------------------------------------------------------
# Flats over time.


def _interp_weights(flat_positions, positions):
    """Bracketing flat indices and weights for each position (nearest flat outside the flats' span)."""
    fp = np.asarray(flat_positions, dtype=np.float64).reshape(-1)
    p = np.asarray(positions, dtype=np.float64).reshape(-1)
    if fp.size == 0 or not np.isfinite(fp).all() or not np.isfinite(p).all():
        raise InputError("flat_indices", "need at least one finite flat position and finite positions")
    if fp.size > 1 and not (np.diff(fp) > 0).all():
        raise InputError("flat_indices", f"flat positions must increase strictly, got {fp.tolist()}")
    if fp.size == 1:
        z = np.zeros(p.size, dtype=np.int64)
        return z, z, np.zeros(p.size)
    hi = np.clip(np.searchsorted(fp, p, side="right"), 1, fp.size - 1)
    lo = hi - 1
    w = np.clip((p - fp[lo]) / (fp[hi] - fp[lo]), 0.0, 1.0)
    return lo, hi, w


def _interp(params: Params, lo, hi, w) -> Params:
    """Interpolate ``(F, P)`` flat parameters to ``(A, P)``: a0, V and phi (along the shorter arc) linearly."""
    torch = _torch()
    a0, a1, phi = params
    dev = a0.device
    lo, hi = torch.from_numpy(lo).to(dev), torch.from_numpy(hi).to(dev)
    w = torch.from_numpy(w).to(dev)[:, None]
    v = a1 / a0
    a0_i = a0[lo] + w * (a0[hi] - a0[lo])
    v_i = v[lo] + w * (v[hi] - v[lo])
    phi_i = wrap_phase(phi[lo] + w * wrap_phase(phi[hi] - phi[lo]))
    return a0_i, a0_i * v_i, phi_i


def interpolate_flats(flat: Params, flat_positions: Sequence[float], positions: Sequence[float], *,
                      axis: int = 0) -> Params:
    """Flat parameters at other times: linear in ``a0``, ``V = a1 / a0`` and ``phi``, nearest at the ends.

    The phase goes along the shorter arc between the bracketing flats (a drift of less than half a
    fringe between flat acquisitions), so flats that drift linearly in a0, V and phi are
    reproduced exactly.

    Args:
        flat: the flats' ``(a0, a1, phi)`` with the F acquisitions on ``axis``.
        flat_positions: ``(F,)`` strictly increasing times of the flats (projection indices or
            timestamps).
        positions: ``(A,)`` times to interpolate to, on the same scale.
        axis: the flat axis of the arrays in ``flat``.

    Returns:
        ``(a0, a1, phi)`` with the F axis replaced by A, float64; numpy, or torch on the input's device.
    """
    torch = _torch()
    ts = [_as64(p, "flat") for p in flat]
    ts = [p.to(ts[0].device) for p in ts]
    try:
        ts = list(torch.broadcast_tensors(*ts))
    except RuntimeError:
        raise InputError("flat", "a0, a1 and phi do not broadcast together") from None
    if not -ts[0].ndim <= axis < ts[0].ndim:
        raise InputError("flat", f"flat axis {axis} out of range for shape {tuple(ts[0].shape)}")
    axis %= ts[0].ndim
    n_flats = ts[0].shape[axis]
    lo, hi, w = _interp_weights(_host(flat_positions), _host(positions))
    if np.size(_host(flat_positions)) != n_flats:
        raise InputError("flat_indices", f"{np.size(_host(flat_positions))} flat positions for {n_flats} flats")
    moved = [p.movedim(axis, 0) for p in ts]
    rest = moved[0].shape[1:]
    out = _interp(tuple(p.reshape(n_flats, -1) for p in moved), lo, hi, w)
    return tuple(_out(p.reshape(-1, *rest).movedim(0, axis), flat[0]) for p in out)


# ---------------------------------------------------------------------------------------------
# A whole scan.


def _frames5(x, where: str):
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) != 5:
        raise InputError(where, f"expected frames (N, A, M, U, Z) (orientations, angles/acquisitions, steps, "
                                f"columns, rows), got shape {shape}")
    return shape


def _per_frame(phases, shape: tuple, device, where: str):
    """Phases ``(M,)``, ``(A, M)`` or ``(N, A, M)`` broadcast to ``shape = (N, A, M)``."""
    torch = _torch()
    if phases is None:
        return torch.broadcast_to(torch.from_numpy(step_phases(shape[2])).to(device), shape)
    p = _as64(phases, where, device)
    try:
        p = torch.broadcast_to(p, shape)
    except RuntimeError:
        raise InputError(where, f"shape {tuple(p.shape)} does not broadcast to {shape}") from None
    _check_finite(p, where)
    return p


def _dark_frame(darks, det: tuple, device):
    """Mean dark frame ``(U, Z)`` from ``(U, Z)`` or a stack ``(K, U, Z)``; None: zeros."""
    torch = _torch()
    if darks is None:
        return torch.zeros(det, dtype=torch.float64, device=device)
    d = _as64(darks, "darks", device)
    _check_finite(d, "darks")
    if d.ndim == 3 and d.shape[0] > 0:
        d = d.mean(dim=0)
    if tuple(d.shape) != det:
        raise InputError("darks", f"expected a dark frame (U, Z) = {det} or a stack (K, U, Z), "
                                  f"got shape {tuple(_as64(darks, 'darks').shape)}")
    return d


def _air_weights(air_columns: int, air_mask, n: int, a: int, u: int, z: int, device):
    """Air pixels ``(N, A, U * Z)`` as 0/1 float64, or None when there is no air region."""
    torch = _torch()
    if air_mask is not None:
        m = _as64(air_mask, "air_mask", device) != 0
        try:
            m = torch.broadcast_to(m, (n, a, u, z))
        except RuntimeError:
            raise InputError("air_mask", f"shape {tuple(m.shape)} does not broadcast to (N, A, U, Z) = "
                                         f"{(n, a, u, z)}") from None
        m = m.reshape(n, a, u * z).to(torch.float64)
        if not bool((m.sum(dim=-1) > 0).all()):
            raise InputError("air_mask", "selects no pixel in some projection")
        return m
    if not 0 <= int(air_columns) <= u // 2:
        raise InputError("air_columns", f"must be in 0..{u // 2} for {u} detector columns, got {air_columns}")
    if int(air_columns) == 0:
        return None
    cols = torch.zeros((u, z), dtype=torch.float64, device=device)
    cols[:int(air_columns)] = 1.0
    cols[u - int(air_columns):] = 1.0
    return torch.broadcast_to(cols.reshape(1, 1, -1), (n, a, u * z))


def _check_flat(flat: Params) -> None:
    if not bool((flat[0] > 0).all()):
        raise InputError("flats", "zero or negative mean counts in some pixel after dark subtraction; "
                                  "check the flat field and the dark frames")
    if not bool((flat[1] > 0).all()):
        raise InputError("flats", "zero visibility in some pixel: D is undefined there")


def retrieve_projections(sample, flats, *, darks=None, sample_phases=None, flat_phases=None, flat_indices=None,
                         sample_indices=None, air_columns: int = 0, air_mask=None, estimate_phases: bool = False,
                         method: str = "auto", clip_dark: bool = False) -> dict[str, Any]:
    """A scan's raw stepping frames -> dfseg's projection stacks ``T``, ``D`` and ``dphi`` ``(N, A, U, Z)``.

    Per orientation: dark subtraction; the flats' step phases (``estimate_phases``, by
    :func:`estimate_steps`) and doses (when an air region is given and M >= 4; with 3 steps a flat's
    dose cannot be told from its curve and stays 1); each flat's curves; for each projection the
    flat interpolated to its time (:func:`interpolate_flats`); the sample's step phases and doses
    from its air region against that flat (:func:`estimate_steps_from_reference`; with phases to
    estimate and no air region, from the whole projection by :func:`estimate_steps`); then
    ``T = a0_s / a0_r``, ``D = V_s / V_r``, ``dphi = phi_s - phi_r``. When the flats' phases and
    doses are both estimated, each flat's unmeasurable first dose harmonic (module doc) is chosen
    by pooling it with the projections it serves, weighted by the dose variance each series shows
    (a few passes over the air pixels of all projections, gathered once per orientation): exact
    when either the flats' or the sample's doses are stable; with both fluctuating, about
    sqrt(projections per flat) times better than each flat alone. Sample doses are normalised to
    mean 1 per projection: frame-to-frame fluctuations within a stepping series are removed here,
    the projection's overall flux stays in ``T`` for the air-column flux normalisation
    (``dfseg.transforms.flux``), so without drift the air columns read T ~ 1, D ~ 1. Work goes
    over orientations and blocks of angles (about 64 MiB of float64 frames at a time).

    Args:
        sample: raw sample frames ``(N, A, M, U, Z)`` (orientations, angles, steps, detector
            columns, rows), counts.
        flats: raw flat-field frames ``(N, F, M, U, Z)``, F flat acquisitions over the scan.
        darks: dark frame ``(U, Z)`` or stack ``(K, U, Z)`` (averaged), counts; None: none.
        sample_phases: sample step phases in radians, ``(M,)``, ``(A, M)`` or ``(N, A, M)``; None:
            ``2 pi k / M``. With ``estimate_phases`` the nominal phases the estimate starts from.
        flat_phases: flat step phases, ``(M,)``, ``(F, M)`` or ``(N, F, M)``; None: ``2 pi k / M``.
        flat_indices: ``(F,)`` time of each flat acquisition on the scale of ``sample_indices``
            (projection index or timestamp), strictly increasing; ``RawScan.flat_indices`` (the
            projection a flat series was taken before, A after the last; docs/raw_frames.md) go
            as they are. None: evenly over the scan, ``linspace(0, A - 1, F)`` (one flat: constant).
        sample_indices: ``(A,)`` time of each projection; None: ``0 .. A - 1``.
        air_columns: air-only detector columns at each edge of U (sidecar ``air_columns``); > 0
            turns on the per-frame dose correction (and the air region phase estimate).
        air_mask: boolean air region broadcastable to ``(N, A, U, Z)``, used instead of
            ``air_columns`` when given.
        estimate_phases: estimate every frame's step phase (jittered or unknown steps).
        method: ``"fft"`` (equally spaced steps), ``"lsq"`` or ``"auto"`` (FFT unless phases are
            given or estimated).
        clip_dark: clip negative dark-subtracted counts to 0.

    Returns:
        ``{"T", "D", "dphi"}``: ``(N, A, U, Z)`` (unitless, unitless, radians in (-pi, pi]);
        ``"phases"``, ``"dose"``: the sample frames' step phases (radians) and doses ``(N, A, M)``;
        ``"flat_phases"``, ``"flat_dose"``: the flats' ``(N, F, M)``. float64; numpy, or torch on
        ``sample``'s device.

    Raises:
        InputError: not 5-D, sample and flats disagree on N, M, U or Z, fewer than 3 steps (4 to
            estimate phases), non-finite frames, flats with zero counts or
            zero visibility, bad phases, indices, air region or method.
    """
    torch = _torch()
    sample = sample if _is_torch(sample) or isinstance(sample, np.ndarray) else np.asarray(sample)
    flats = flats if _is_torch(flats) or isinstance(flats, np.ndarray) else np.asarray(flats)
    sshape, fshape = _frames5(sample, "sample"), _frames5(flats, "flats")
    n, a, m, u, z = sshape
    if (fshape[0], *fshape[2:]) != (n, m, u, z):
        raise InputError("flats", f"shape {fshape} does not match the sample's {sshape} in (N, M, U, Z)")
    n_flats = fshape[1]
    if m < 3:
        raise InputError("sample", f"need at least 3 phase steps, got {m}")
    if a == 0 or n_flats == 0 or n == 0:
        raise InputError("sample" if a == 0 or n == 0 else "flats", "no frames")
    if method not in METHODS:
        raise InputError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    device = sample.device if _is_torch(sample) else torch.device("cpu")
    dark = _dark_frame(darks, (u, z), device).reshape(-1)
    xs_all = _per_frame(sample_phases, (n, a, m), device, "sample_phases")
    xr_all = _per_frame(flat_phases, (n, n_flats, m), device, "flat_phases")
    air = _air_weights(air_columns, air_mask, n, a, u, z, device)
    dose = air is not None
    if estimate_phases and m < 4:
        raise InputError("estimate_phases", f"estimating step phases from the flats needs at least 4 steps, got {m}")
    positions = np.arange(a, dtype=np.float64) if sample_indices is None else sample_indices
    if np.size(_host(positions)) != a:
        raise InputError("sample_indices", f"{np.size(_host(positions))} indices for {a} projections")
    if flat_indices is None:
        flat_indices = np.linspace(0.0, a - 1.0, n_flats) if n_flats > 1 else np.zeros(1)
    if np.size(_host(flat_indices)) != n_flats:
        raise InputError("flat_indices", f"{np.size(_host(flat_indices))} indices for {n_flats} flat acquisitions")
    lo, hi, wt = _interp_weights(_host(flat_indices), _host(positions))

    out = {k: torch.empty((n, a, u, z), dtype=torch.float64, device=device) for k in ("T", "D", "dphi")}
    xs_out, gs_out = xs_all.clone(), torch.ones((n, a, m), dtype=torch.float64, device=device)
    xr_out, gr_out = xr_all.clone(), torch.ones((n, n_flats, m), dtype=torch.float64, device=device)
    block = max(1, _CHUNK_ELEMENTS // (m * u * z))
    joint = bool(estimate_phases) and dose and m >= 4  # the flats' phases and doses both free
    if joint:  # which flats each projection's reference mixes: the gauge refinement's design matrix
        mix = np.zeros((a, n_flats))
        np.add.at(mix, (np.arange(a), lo), 1.0 - wt)
        np.add.at(mix, (np.arange(a), hi), wt)
        mix = torch.from_numpy(mix).to(device)

    def sample_block(i: int, s: int, e: int):
        fs = _as64(sample[i, s:e], "sample", device).reshape(e - s, m, u * z).transpose(1, 2)
        _check_finite(fs, "sample")
        fs = fs - dark[None, :, None]
        return fs.clamp_min(0.0) if clip_dark else fs

    def sample_steps(fs, ref, w, xs):
        """Step phases and doses of sample frames: from the air region against the flat, or AIA, or as given."""
        gs = torch.ones_like(xs)
        if dose:
            xs, gs = _frame_step(fs, _coeffs(*ref), w, xs, gs, estimate_phases, True, "sample", ratio=True)
            gs = gs / gs.mean(dim=-1, keepdim=True)
        elif estimate_phases:
            xs, gs = _als(fs, xs, torch.ones(fs.shape[:2], dtype=torch.float64, device=device),
                          fit_phases=True, fit_dose=False, max_iter=500, tol=1e-12, where="sample")
        return xs, gs

    for i in range(n):
        fr = _as64(flats[i], "flats", device).reshape(n_flats, m, u * z).transpose(1, 2)
        _check_finite(fr, "flats")
        fr = fr - dark[None, :, None]
        if clip_dark:
            fr = fr.clamp_min(0.0)
        xr, gr = xr_all[i], gr_out[i]
        if estimate_phases or (dose and m >= 4):
            xr, gr = _als(fr, xr, torch.ones(fr.shape[:2], dtype=torch.float64, device=device),
                          fit_phases=estimate_phases, fit_dose=dose and m >= 4, max_iter=500, tol=1e-12,
                          where="flats")
        given = estimate_phases or flat_phases is not None
        flat = _fit(fr / gr[:, None, :], xr, method, given, "flat_phases")
        _check_flat(flat)
        if joint:
            # Phases and doses both free leave each flat a Lorentz boost (_boost) that its frames
            # cannot tell: the first harmonic of its doses. Each flat is boosted so that, weighted
            # by the inverse of the dose variance each series shows (the part of it that the data
            # do tell), its own doses and those of the projections it serves have none on average.
            # The air pixels of all projections are gathered once for these passes.
            idx = torch.nonzero(air[i].amax(dim=0) > 0).reshape(-1)
            air_frames = torch.cat([sample_block(i, s, min(a, s + block))[:, idx] for s in range(0, a, block)])
            eye = torch.eye(n_flats, dtype=torch.float64, device=device)
            for _ in range(_MAX_REFINE):
                ref = _interp(tuple(p[:, idx] for p in flat), lo, hi, wt)
                xs, gs = sample_steps(air_frames, ref, air[i][:, idx], xs_all[i])
                weights = [1.0 / math.sqrt(_dose_variance(*q) + 1e-20) for q in ((xs, gs), (xr, gr))]
                design = torch.cat([mix * weights[0], eye * weights[1]])
                rhs = torch.cat([_first_harmonic(xs, gs) * weights[0], _first_harmonic(xr, gr) * weights[1]])
                beta = (torch.linalg.pinv(design) @ rhs).clamp(-0.5, 0.5)
                xr, gr = _gauge(*_boost(xr, gr, beta), xr_all[i], True, True, boost=False)
                flat = _fit(fr / gr[:, None, :], xr, method, given, "flat_phases")
                _check_flat(flat)
                if float(beta.abs().max()) < _REFINE_TOL:
                    break
            del air_frames
        xr_out[i], gr_out[i] = xr, gr
        for s in range(0, a, block):
            e = min(a, s + block)
            fs = sample_block(i, s, e)
            ref = _interp(flat, lo[s:e], hi[s:e], wt[s:e])
            xs, gs = sample_steps(fs, ref, None if air is None else air[i, s:e], xs_all[i, s:e])
            xs_out[i, s:e], gs_out[i, s:e] = xs, gs
            params = _fit(fs / gs[:, None, :], xs, method, estimate_phases or sample_phases is not None,
                          "sample_phases")
            t, d, dphi = _ratios(params, ref)
            out["T"][i, s:e] = t.reshape(e - s, u, z)
            out["D"][i, s:e] = d.reshape(e - s, u, z)
            out["dphi"][i, s:e] = dphi.reshape(e - s, u, z)
    out.update(phases=xs_out, dose=gs_out, flat_phases=xr_out, flat_dose=gr_out)
    return {k: _out(v, sample) for k, v in out.items()}
