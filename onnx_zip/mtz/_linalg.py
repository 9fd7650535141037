"""Small symmetric-PSD linear-algebra helpers: checked Cholesky, triangular solves, PSD pseudo-inverse.

Conditioning is judged by LAPACK's ``dpocon`` estimate (O(D²)) on the Cholesky factor. Note: on a
2-core machine shared with other processes, OpenBLAS's multi-threaded ``potrf`` was measured very
slow (0.5–1 s for 577², against 0.006 s single-threaded); limit BLAS threads when the cores are busy.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.linalg import lapack


def checked_cholesky(s: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Lower Cholesky factor of ``s`` ``(D, D)``, or ``(None, reason)`` when ``s`` is singular or its
    estimated reciprocal condition number is below ``D·eps``."""
    d = s.shape[0]
    try:
        low = np.linalg.cholesky(s)
    except np.linalg.LinAlgError as exc:
        return None, f"Cholesky failed: {exc}"
    rcond, info = lapack.dpocon(low, np.linalg.norm(s, 1), uplo="L")
    if info != 0 or not rcond >= d * np.finfo(np.float64).eps:
        return None, f"rcond={rcond:.3g}"
    return low, ""


def lower_solve(low: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``L⁻¹ rhs`` for lower-triangular ``L`` ``(D, D)`` and ``rhs`` ``(D,)`` or ``(D, k)``."""
    return sla.solve_triangular(low, rhs, lower=True, check_finite=False)


def chol_solve(low: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``(L Lᵀ)⁻¹ rhs``."""
    return sla.solve_triangular(low, lower_solve(low, rhs), lower=True, trans="T", check_finite=False)


def pinv_psd(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-inverse of symmetric PSD ``s`` as ``V diag(inv_w) Vᵀ``: returns ``V (D, r)``, ``inv_w (r,)``.

    Eigenvalues below ``max eigenvalue · D · eps`` are treated as zero.
    """
    w, v = np.linalg.eigh(s)
    tol = max(float(w.max(initial=0.0)), 0.0) * s.shape[0] * np.finfo(np.float64).eps
    keep = w > tol
    return v[:, keep], 1.0 / w[keep]
