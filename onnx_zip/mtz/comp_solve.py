"""The per-task and per-group quantities of the compensated fit (see :mod:`onnx_zip.mtz.compensated`).

* :func:`prepare_task` — for one task: ``λ_t``, ``(G_t + λ_t I)⁻¹``, ``y = C_t w + λ_t w̄``, ``wᵀH_t w`` and
  ``r_t`` for every neuron (rows flattened over the per-channel taps, bias split ``b/P``).
* :func:`build_stage` — for a set of tasks fitted jointly: the placement ``P_t`` of each task's zipped
  coordinates in ``θ = [shared ; bias ; own_t1 ; own_t2 ; …]``, ``(Ĝ + λI)⁻¹``, the priors ``p_t`` and
  the right-hand sides ``v_t`` of every neuron.

Every matrix here is float64; linear systems are solved by Cholesky, with a logged pseudo-inverse
fallback when a matrix is singular or ill-conditioned (possible only with ``ρ = 0`` or dead inputs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, check_square, where
from onnx_zip.mtz._linalg import checked_cholesky, chol_solve, pinv_psd

if TYPE_CHECKING:
    from onnx_zip.mtz.compensated import TaskLayer

__all__ = ["CompensationView", "SpdSolver", "Stage", "TaskTerms", "build_stage", "prepare_task"]

logger = logging.getLogger(__name__)


class SpdSolver:
    """Applies ``A⁻¹`` for a symmetric PSD ``A (D, D)``: Cholesky, or the pseudo-inverse (logged).

    Args:
        a: The matrix.
        what: Its name for the warning (with the layer).
        hint: What the fallback means or how to avoid it, for the warning.
    """

    def __init__(self, a: np.ndarray, what: str, hint: str = "rho > 0 regularises it") -> None:
        self._low, reason = checked_cholesky(a)
        self._pinv: np.ndarray | None = None
        if self._low is None:
            logger.warning("%s (%dx%d) is singular or ill-conditioned (%s); using the pseudo-inverse (%s)",
                           what, a.shape[0], a.shape[0], reason, hint)
            v, inv_w = pinv_psd(a)
            self._pinv = (v * inv_w) @ v.T

    @property
    def pinv_used(self) -> bool:
        """Whether the pseudo-inverse fallback was taken."""
        return self._low is None

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``A⁻¹ rhs`` for ``rhs (D,)`` or ``(D, k)``."""
        if self._low is not None:
            return chol_solve(self._low, rhs)
        return self._pinv @ rhs  # type: ignore[operator]


@dataclass(frozen=True)
class CompensationView:
    """Validated float64 moments ``g (D̃, D̃)``, ``c (D̃, D)``, ``h (D, D)``."""

    g: np.ndarray
    c: np.ndarray
    h: np.ndarray


@dataclass(frozen=True)
class TaskTerms:
    """One task's prepared quantities; row arrays are ``(N·P, ·)`` (per-channel taps flattened).

    Attributes:
        n: Neurons ``N``.
        n_own: ``E_t`` (own zipped input features).
        w: Original rows ``(N·P, D)`` (per-channel: bias entry ``b/P``).
        wbar: Priors in zipped coordinates ``(N·P, D̃)`` (same bias split).
        cw: ``C_t w`` per row ``(N·P, D̃)``.
        y: ``C_t w + λ_t w̄`` ``(N·P, D̃)``.
        q: ``(N,)`` ``Σ_taps wᵀ H_t w``.
        r: ``(N,)`` ``r_t`` (error plus ridge after refitting alone).
        lam: ``λ_t``.
        solver: ``(G_t + λ_t I)⁻¹``.
        stats: The moments.
    """

    n: int
    n_own: int
    w: np.ndarray
    wbar: np.ndarray
    cw: np.ndarray
    y: np.ndarray
    q: np.ndarray
    r: np.ndarray
    lam: float
    solver: SpdSolver
    stats: CompensationView

    @property
    def zsize(self) -> int:
        """``D̃``."""
        return int(self.wbar.shape[1])

    def error(self, fit: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``(M,)`` ``E[(fitᵀx̃ − wᵀx)²] = wᵀHw − 2 fitᵀCw + fitᵀG fit`` for rows ``fit (M, D̃)``, ``w (M, D)``."""
        st = self.stats
        hw = np.einsum("ij,ij->i", w @ st.h, w)
        cross = np.einsum("ij,ij->i", fit, w @ st.c.T)
        gf = np.einsum("ij,ij->i", fit @ st.g, fit)
        return hw - 2.0 * cross + gf


def _ridge(g: np.ndarray, rho: float) -> float:
    return rho * float(np.mean(np.diag(g))) if g.size else 0.0


def _rows(arr: np.ndarray, name: str, label: str, taps: int, size: int) -> np.ndarray:
    """Validate ``(N, D)`` / ``(N, P, D)`` rows and flatten to ``(N·P, D)`` (a float64 copy)."""
    a = np.array(as_f64(arr, name, None, ndim=(2, 3)), dtype=np.float64, copy=True)
    want = 2 if taps == 1 else 3
    if a.ndim != want or (taps > 1 and a.shape[1] != taps) or a.shape[-1] != size:
        shape = f"(N, {size})" if taps == 1 else f"(N, {taps}, {size})"
        raise InputError(f"{label}: {name} has shape {a.shape}, expected {shape} to fit the moments")
    return a.reshape(-1, size)


def prepare_task(task: TaskLayer, n_shared: int, bias: bool, taps: int, rho: float, label: str) -> TaskTerms:
    """Check one :class:`~onnx_zip.mtz.compensated.TaskLayer` and compute its :class:`TaskTerms`.

    Raises:
        InputError: Moments of the wrong shape, rows or prior that do not fit them, a bias mismatch.
    """
    st = task.stats
    g = as_f64(st.g, "G", None, ndim=2)
    h = as_f64(st.h, "H", None, ndim=2)
    check_square(g, f"{label}: G", None)
    check_square(h, f"{label}: H", None)
    c = as_f64(st.c, "C", None, ndim=2)
    if c.shape != (g.shape[0], h.shape[0]) or st.bias != bias:
        raise InputError(f"{label}: C has shape {c.shape} (G {g.shape}, H {h.shape}), bias {st.bias} (layer: {bias})")
    own = g.shape[0] - n_shared - int(bias)
    if own < 0:
        raise InputError(f"{label}: the zipped input has {g.shape[0]} entries, fewer than the {n_shared} shared"
                         + (" plus the bias" if bias else ""))
    w = _rows(task.rows, "rows", label, taps, h.shape[0])
    wbar = _rows(task.prior, "prior", label, taps, g.shape[0])
    if w.shape[0] != wbar.shape[0]:
        raise InputError(f"{label}: rows {np.shape(task.rows)} and prior {np.shape(task.prior)} differ in neurons")
    if taps > 1 and bias:
        w[:, -1] /= taps
        wbar[:, -1] /= taps
    lam = _ridge(g, rho)
    gl = g.copy()
    gl[np.diag_indices_from(gl)] += lam
    solver = SpdSolver(gl, f"{label}: G + λI")
    cw = w @ c.T
    y = cw + lam * wbar
    n = w.shape[0] // taps
    q = np.einsum("ij,ij->i", w @ h, w).reshape(n, taps).sum(axis=1)
    yky = np.einsum("ij,ij->i", y, solver.solve(y.T).T).reshape(n, taps).sum(axis=1)
    r = q + lam * np.einsum("ij,ij->i", wbar, wbar).reshape(n, taps).sum(axis=1) - yky
    return TaskTerms(n=n, n_own=own, w=w, wbar=wbar, cw=cw, y=y, q=q, r=r, lam=lam, solver=solver,
                     stats=CompensationView(g=g, c=c, h=h))


def _placement(zsize: int, n_shared: int, bias: bool, offset: int) -> np.ndarray:
    """``(D̃,)`` θ index of each coordinate of ``[shared ; own ; 1]``, θ = ``[shared ; 1 ; … own at offset …]``."""
    own = zsize - n_shared - int(bias)
    parts = [np.arange(n_shared), offset + np.arange(own)]
    if bias:
        parts.append(np.array([n_shared]))
    return np.concatenate(parts).astype(np.int64)


def _sb_index(zsize: int, n_shared: int, bias: bool) -> np.ndarray:
    """Indices of the shared features and the bias in ``x̃`` (in θ's order ``[shared ; 1]``)."""
    return np.concatenate([np.arange(n_shared), [zsize - 1]] if bias else [np.arange(n_shared)]).astype(np.int64)


def _merge_maps(terms: Sequence[TaskTerms], sbs: Sequence[np.ndarray], layer: str | None) -> list[np.ndarray]:
    """Per task ``Φ_t = I/m + Σ⁺(G_t^{sb} − Σ/m)`` with ``Σ = Σ_t G_t^{sb}`` (the paper's merge, linear in w̄_t)."""
    m = len(terms)
    size = sbs[0].size
    if m == 1:
        return [np.eye(size)]
    blocks = [t.stats.g[np.ix_(sb, sb)] for t, sb in zip(terms, sbs)]
    total = np.sum(blocks, axis=0)
    solver = SpdSolver(total, f"{where(layer)}Σ_t G_t over the shared inputs (prior merge)",
                       "usual with inputs that never vary; their prior stays at the plain mean")
    return [np.eye(size) / m + solver.solve(b - total / m) for b in blocks]


@dataclass(frozen=True)
class Stage:
    """Everything for one set of tasks fitted jointly (a shared neuron joins one neuron of each).

    Attributes:
        tasks: The task indices, in θ order.
        place: Per task ``(D̃_t,)``: θ index of each zipped coordinate (``P_t``).
        solver: ``(Ĝ + λI)⁻¹``, Θ × Θ.
        lam: ``λ = Σ_t λ_t``.
        p: Per task ``(N_t·P, Θ)``: the prior parts ``p_t`` (``θ₀ = Σ_t p_t``).
        v: Per task ``(N_t·P, Θ)``: ``P_t C_t w + λ p_t``.
    """

    tasks: tuple[int, ...]
    place: tuple[np.ndarray, ...]
    solver: SpdSolver
    lam: float
    p: tuple[np.ndarray, ...]
    v: tuple[np.ndarray, ...]


def build_stage(
    terms: Sequence[TaskTerms], tasks: tuple[int, ...], n_shared: int, bias: bool, layer: str | None
) -> Stage:
    """The joint-fit quantities for the tasks ``tasks`` whose terms are ``terms`` (in θ order)."""
    sb = n_shared + int(bias)
    places, off = [], sb
    for t in terms:
        places.append(_placement(t.zsize, n_shared, bias, off))
        off += t.n_own
    theta = off
    g_hat = np.zeros((theta, theta))
    for t, pl in zip(terms, places):
        g_hat[np.ix_(pl, pl)] += t.stats.g
    lam = float(sum(t.lam for t in terms))
    g_hat[np.diag_indices_from(g_hat)] += lam
    solver = SpdSolver(g_hat, f"{where(layer)}Ĝ + λI of the shared fit")
    sbs = [_sb_index(t.zsize, n_shared, bias) for t in terms]
    phis = _merge_maps(terms, sbs, layer)
    ps, vs = [], []
    for t, pl, sbi, phi in zip(terms, places, sbs, phis):
        own_z = np.setdiff1d(np.arange(t.zsize), sbi)
        p = np.zeros((t.wbar.shape[0], theta))
        p[:, :sb] = t.wbar[:, sbi] @ phi.T
        p[:, pl[own_z]] = t.wbar[:, own_z]
        v = lam * p
        v[:, pl] += t.cw
        ps.append(p)
        vs.append(v)
    return Stage(tasks=tasks, place=tuple(places), solver=solver, lam=lam, p=tuple(ps), v=tuple(vs))
