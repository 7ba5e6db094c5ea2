"""The cost of gptqmodel's clipping search (`mse > 0`), set in the worker process.

gptqmodel 7.6's Quantizer.find_params tries the scales max·(1 − i/grid) for i < maxshrink·grid and keeps
each row's least |error|^mse. `grid` (100) and `maxshrink` (0.8) are arguments of Quantizer.configure, which
its GPTQ processor calls with the defaults — they are not QuantizeConfig fields. Two things here:

* `grid`: the preset's `mse_grid` is passed to configure (80 candidates at 100, 16 at 20: 5 % steps);
* the whole-matrix find_params that GPTQ.quantize runs before the per-group ones is a plain min/max pass
  when the module is grouped: with `group_size > 0` every group searches its own scale before any of its
  columns is quantized (and static groups search each group up front), so that result is never used and
  its search would be about 40 % of the search's time. Weights are identical to gptqmodel's own.

Only the worker (a child process that ends with the job) enters `clipping_search`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Iterator

from hubtool.errors import QuantizeError

GPTQMODEL_GRID = 100  # Quantizer.configure's default: the preset value that leaves gptqmodel's search as it is


def _quantizer_class() -> Any:
    """gptqmodel's Quantizer, or None where its API is not the one this module knows (another gptqmodel)."""
    from gptqmodel.quantization.quantizer import Quantizer

    params = inspect.signature(Quantizer.configure).parameters
    find = inspect.signature(Quantizer.find_params).parameters
    known = "grid" in params and "maxshrink" in params and list(find)[:3] == ["self", "x", "weight"]
    return Quantizer if known else None


@contextlib.contextmanager
def clipping_search(grid: int) -> Iterator[None]:
    """Within this block, gptqmodel's quantizers search GRID steps per unit of range (maxshrink stays 0.8) and
    skip the unused whole-matrix search of grouped modules. With another Quantizer API, grid 100 runs
    gptqmodel's search untouched (the same weights, only slower); any other grid is an error."""
    quantizer = _quantizer_class()
    if quantizer is None:
        if grid != GPTQMODEL_GRID:
            raise QuantizeError(f"mse_grid {grid} needs gptqmodel 7.6's Quantizer.configure(grid=, maxshrink=), which the installed "
                                f"gptqmodel lacks: set mse_grid: {GPTQMODEL_GRID} in the preset (gptqmodel's own search) or install gptqmodel 7.6")
        yield
        return
    configure, find_params = quantizer.configure, quantizer.find_params

    def configure_grid(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["grid"] = grid
        return configure(self, *args, **kwargs)

    def find_params_grouped(self: Any, x: Any, weight: bool = False) -> Any:
        group = int(getattr(self.qcfg, "group_size", -1) or -1)
        if weight and group > 0 and x.dim() == 2 and x.shape[1] > group and getattr(self.qcfg, "mse", 0):
            own = self.qcfg
            self.qcfg = copy.copy(own)
            self.qcfg.mse = 0.0
            try:
                return find_params(self, x, weight)
            finally:
                self.qcfg = own
        return find_params(self, x, weight)

    quantizer.configure, quantizer.find_params = configure_grid, find_params_grouped
    try:
        yield
    finally:
        quantizer.configure, quantizer.find_params = configure, find_params
