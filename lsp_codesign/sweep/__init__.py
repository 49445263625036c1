"""Co-design sweeps: a grid of configs, blocks, token tiles, FLOPs targets and methods.

``lsp-codesign sweep`` (``lsp_codesign/commands/sweep.py``) builds the models and images and
hands this package the task functions; here live the grid (:mod:`.grid`), what the results
depend on and their keys (:mod:`.plan`), the SWEEP_DIR cache (:mod:`.store`), where tasks run
(:mod:`.backend`, :mod:`.ray_backend`), the scheduling (:mod:`.engine`), the table
(:mod:`.results`) and the Pareto fronts (:mod:`.pareto`). Like the rest of the core it imports
neither ``models/`` nor ``sim/``.
"""

from .backend import Executor, PoolExecutor, SerialExecutor, make_executor
from .engine import KINDS, SweepOutcome, Tasks, run_sweep
from .grid import Grid, Point, SweepError, build_grid, check_grid_on_model, parse_list
from .pareto import front_summary, mark_fronts, pareto_front, plot_front
from .plan import Settings, code_digest
from .results import COLUMNS, point_record, to_csv, to_markdown, to_text
from .store import FORMAT, SweepStore

__all__ = [
    "Executor", "PoolExecutor", "SerialExecutor", "make_executor", "KINDS", "SweepOutcome",
    "Tasks", "run_sweep", "Grid", "Point", "SweepError", "build_grid", "check_grid_on_model",
    "parse_list", "front_summary", "mark_fronts", "pareto_front", "plot_front", "Settings",
    "code_digest", "COLUMNS", "point_record", "to_csv", "to_markdown", "to_text", "FORMAT",
    "SweepStore",
]
