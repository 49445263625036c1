"""int8 quantisation of a layer's operands for the engine.

Scheme (symmetric, no zero point):

* activations: one scale per tensor, ``s_x = max|x| / 127``;
* weights: one scale per output feature (row of W), ``s_w[k] = max_n |W[k, n]| / 127``;
* ``q = clip(rint(v / s), -127, 127)`` (round half to even); a tensor or row that is all zero
  gets scale 1. The value -128 is never produced, so negation can never overflow.

The engine returns ``Y_q = X_q . W_q^T`` in int32; the host dequantises with
``Y ~ Y_q * s_x * s_w[None, :]``. Pruned blocks are zeroed before quantisation, so they
quantise to exact zeros.
"""

from __future__ import annotations

import numpy as np

__all__ = ["quantize_activations", "quantize_weights", "dequantize"]


def _scale(amax: np.ndarray) -> np.ndarray:
    return np.where(amax > 0, amax / 127.0, 1.0)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-tensor symmetric int8: returns ``(x_q, scale)``."""
    x = np.asarray(x, dtype=np.float64)
    s = float(_scale(np.abs(x).max(initial=0.0)))
    return np.clip(np.rint(x / s), -127, 127).astype(np.int8), s


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-feature symmetric int8 of a ``(K, N)`` weight: returns ``(w_q, scales[K])``."""
    w = np.asarray(w, dtype=np.float64)
    s = _scale(np.abs(w).max(axis=1, initial=0.0))
    return np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int8), s


def dequantize(y_q: np.ndarray, x_scale: float, w_scales: np.ndarray) -> np.ndarray:
    """Float output of an int32 result ``(M, K)``."""
    return np.asarray(y_q, dtype=np.float64) * x_scale * np.asarray(w_scales)[None, :]
