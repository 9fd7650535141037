"""Input validation shared by the MTZ numerics: float64 conversion, finiteness and shape checks.

Every message starts with the layer name when one is given, names the offending array and gives its
shape, so a user can find the tensor at fault.
"""

from __future__ import annotations

import numpy as np

from onnx_zip.errors import DataError, InputError, NumericalError


def where(layer: str | None) -> str:
    """Return the message prefix naming ``layer`` (empty when no name is given)."""
    return f"layer {layer!r}: " if layer else ""


def as_f64(
    arr: object,
    name: str,
    layer: str | None,
    *,
    ndim: int | tuple[int, ...] | None = None,
    data: bool = False,
) -> np.ndarray:
    """Convert ``arr`` to a float64 array, checking its rank and that every entry is finite.

    Args:
        arr: Array-like to convert.
        name: Name of the array used in error messages (e.g. ``"W_A"``).
        layer: Layer name used in error messages.
        ndim: Allowed rank(s); ``None`` accepts any.
        data: ``True`` for calibration activations (raises :class:`DataError` on NaN/Inf),
            ``False`` for weights and statistics (raises :class:`NumericalError`).

    Returns:
        The float64 array (a copy only when a conversion was needed).

    Raises:
        InputError: Wrong rank or a non-numeric array.
        DataError: Non-finite activations (``data=True``).
        NumericalError: Non-finite weights or statistics (``data=False``).
    """
    try:
        out = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where(layer)}{name} is not a numeric array ({exc})") from exc
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if out.ndim not in allowed:
            raise InputError(
                f"{where(layer)}{name} has shape {out.shape} (rank {out.ndim}); expected rank "
                + " or ".join(str(a) for a in allowed)
            )
    if not np.isfinite(out).all():
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        msg = f"{where(layer)}{name} (shape {out.shape}) contains {bad} NaN or Inf value(s)"
        if data:
            raise DataError(msg, hint="check the calibration data and the model's earlier layers")
        raise NumericalError(msg, hint="check the model weights / statistics for overflow")
    return out


def check_square(h: np.ndarray, name: str, layer: str | None) -> None:
    """Raise :class:`InputError` unless ``h`` is a square 2-D matrix."""
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise InputError(f"{where(layer)}{name} must be a square matrix, got shape {h.shape}")
