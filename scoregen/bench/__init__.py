"""Benchmarks that rank samplers: scoregen's samplers and its peers' on the same model, scored the same way.

* :mod:`.subjects`: what is sampled (an exact target, a built-in or trained network, a diffusers folder) and the
  scorer its samples get;
* :mod:`.scorers`: the metrics against an exact mixture (MMD^2 with its standard error, per-component Fréchet,
  sliced W2, mode TV) or against real digits through an independent judge network, each with its floor;
* :mod:`.run`: every sampler at every NFE budget (:func:`run_bench`) and guidance-scale sweeps;
* :mod:`.peers`: diffusers' schedulers and k-diffusion's samplers on the same model, NFE counted by scoregen;
* :mod:`.report`: ranked tables, markdown, JSON, CSV, plots and sample grids.
"""

from .report import format_markdown, format_pivot, format_table, plot_guidance, plot_quality, rank, write_csv, write_report
from .run import DEFAULT_BUDGETS, BenchResult, BenchRow, budget_options, guidance_sweep, run_bench
from .subjects import DEFAULT_N, Subject, resolve_subject

__all__ = ["resolve_subject", "Subject", "run_bench", "guidance_sweep", "BenchResult", "BenchRow", "budget_options",
           "format_table", "format_pivot", "format_markdown", "write_report", "write_csv", "plot_quality", "plot_guidance", "rank",
           "DEFAULT_BUDGETS", "DEFAULT_N"]
