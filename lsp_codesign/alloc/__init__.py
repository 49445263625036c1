"""The LSP allocator: per-layer block sparsity from second-order distortion and a power term.

For every prunable linear layer ``i`` (weight ``W`` of shape ``(K, N)``, blocks ``BK x BN``) and
calibration images ``n = 1..N`` (``docs/allocator.md``):

1. **Calibration** (:mod:`.calibration`): one forward pass and one backward pass per curvature
   sample collect the per-sample block sums ``s[n, b] = <g_{n,b}, W_b>``, where ``g_n`` is the
   per-sample gradient the chosen :class:`Curvature` defines (by default the cross entropy's
   gradient at the data set's label, as the paper; ``fisher`` and ``ggn`` are the alternatives),
   and the mean loss gradient ``gbar`` when it is needed.
2. **Curves** (:mod:`.curves`, :mod:`.numerics`): blocks are ranked by a :class:`Score` (by
   default the block's own second-order distortion) and pruned in ascending order; the
   distortion ``delta(k) = [gbar^T dW] + 1/2 dW^T (kappa I + (1/N) sum_n g_n g_n^T) dW`` is
   computed at every block count incrementally, at ``O(N)`` per block, without forming the
   matrix. The first-order term in brackets is off by default.
3. **Hardware term**: ``P_i(k)``, the layer's energy with ``k`` blocks pruned, from the
   cycle/energy model of the config; ``beta`` from the paper's Eq. 14; target slopes
   ``lambda_i = lambda + beta |dP_i/dalpha|``.
4. **Search** (:mod:`.search`): a layer prunes while the running maximum of its smoothed
   curve's slope stays at or below ``lambda_i``; ``lambda`` is bisected to the FLOPs target.

Baselines use the same search (:class:`Method`): ``beta0``, ``uniform`` and ``global``.
torch is imported inside the functions that need it; the numerics are numpy.
"""

from .pipeline import allocate, allocate_from_calibration
from .calibration import Calibration, LayerStats, calibrate
from .distributed import DistributedError, Group, Shard
from .curves import LayerCurve, block_scores, layer_curve
from .layers import check_reachable, select_layers
from .numerics import (block_reduce, distortion_curve, ema_smooth, fd_weights,
                       single_block_delta, slope_5pt)
from .options import (CURVATURES, DEFAULT_CHUNK_MIB, DEFAULT_CURVATURE, DEFAULT_KAPPA,
                      DEFAULT_MICRO_BATCH, DEFAULT_SAMPLES, DEFAULT_SCORE, DEFAULT_SMOOTH,
                      METHODS, SCORES, AllocError, Curvature, CurvatureOptions, Method, Score,
                      check_flops_target, check_options)
from .result import Allocation, LayerResult, summary_by_kind
from .search import eq14_beta, method_thresholds, search_allocation

__all__ = [
    "METHODS", "CURVATURES", "SCORES", "DEFAULT_KAPPA", "DEFAULT_SMOOTH", "DEFAULT_CHUNK_MIB",
    "DEFAULT_MICRO_BATCH", "DEFAULT_CURVATURE", "DEFAULT_SCORE", "DEFAULT_SAMPLES",
    "AllocError", "Method", "Curvature", "Score", "CurvatureOptions", "fd_weights", "slope_5pt",
    "ema_smooth", "block_reduce", "distortion_curve", "single_block_delta", "select_layers",
    "check_reachable", "check_flops_target", "check_options", "LayerStats", "Calibration",
    "calibrate", "LayerCurve", "layer_curve", "block_scores", "eq14_beta", "method_thresholds",
    "search_allocation", "LayerResult", "Allocation", "allocate", "allocate_from_calibration",
    "summary_by_kind", "Group", "Shard", "DistributedError",
]
