"""The clipping search's grid and the skipped whole-matrix search (hubtool/gptq/search.py), on gptqmodel's own
Quantizer and GPTQ classes: grid 100 gives gptqmodel's weights bit for bit, a coarser grid picks from its own steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hubtool.errors import QuantizeError
from tests.extras import require_extra

require_extra("gptqmodel", "gptq")  # skipped locally without the extra; a failure in CI

from gptqmodel.quantization.quantizer import Quantizer  # noqa: E402

from hubtool.gptq.search import clipping_search  # noqa: E402


def _quantizer(mse: float, group_size: int = 32) -> Quantizer:
    q = Quantizer(SimpleNamespace(bits=4, sym=True, mse=mse, group_size=group_size, format="gptq", method="gptq"))
    q.configure(perchannel=True)
    return q


def _weights(rows: int = 48, cols: int = 128) -> torch.Tensor:
    torch.manual_seed(3)
    w = torch.randn(rows, cols)
    w[:, ::17] *= 6  # outliers, so that clipping pays off in most rows
    return w


def _scales(q: Quantizer, x: torch.Tensor) -> torch.Tensor:
    q.find_params(x, weight=True)
    return q.scale.flatten().clone()


def test_coarse_grid_picks_each_scale_from_its_own_steps():
    w = _weights()[:, :32]
    minmax = _scales(_quantizer(0.0), w)
    fine = _scales(_quantizer(2.4), w)
    with clipping_search(20):
        coarse = _scales(_quantizer(2.4), w)
    shrink = coarse / minmax
    steps = torch.tensor([1 - i / 20 for i in range(16)])  # gptqmodel's maxshrink 0.8: 16 candidates at grid 20
    assert torch.isclose(shrink.unsqueeze(1), steps.unsqueeze(0), atol=1e-5).any(dim=1).all()
    assert (shrink < 1).any() and not torch.equal(coarse, fine)  # it searched, on another grid than gptqmodel's 100


def test_whole_matrix_search_skipped_only_where_groups_replace_it():
    w = _weights()
    with clipping_search(100):
        grouped = _scales(_quantizer(2.4, group_size=32), w)
        per_channel = _scales(_quantizer(2.4, group_size=-1), w)
        group_slice = _scales(_quantizer(2.4, group_size=32), w[:, :32])
    assert torch.equal(grouped, _scales(_quantizer(0.0, group_size=32), w))  # min/max: every group searches its own
    assert torch.equal(per_channel, _scales(_quantizer(2.4, group_size=-1), w))  # no groups: this is the search
    assert not torch.equal(per_channel, grouped)
    assert torch.equal(group_slice, _scales(_quantizer(2.4, group_size=32), w[:, :32]))  # groups search as before


def test_grid_100_quantizes_exactly_like_gptqmodel():
    """GPTQ on one Linear (act-order, 32-wide groups, mse 2.4): same weights, scales and g_idx with and without."""
    from gptqmodel.looper.named_module import NamedModule
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=False)
    inputs = torch.randn(4, 64, 256) * torch.linspace(0.1, 3, 256)

    def quantize(grid: int | None) -> tuple:
        def run() -> tuple:
            qcfg = QuantizeConfig(bits=4, group_size=32, desc_act=True, act_group_aware=False, sym=True, mse=2.4, damp_percent=0.01)
            gptq = GPTQ(NamedModule(linear, name="proj", full_name="model.layers.0.proj", layer_index=0), qcfg)
            gptq.quantizer.configure(perchannel=True)
            for x in inputs:
                gptq.add_batch(x, None)
            return gptq.quantize()[:4]  # weight, scales, zeros, g_idx
        if grid is None:
            return run()
        with clipping_search(grid):
            return run()

    own, ours, coarse = quantize(None), quantize(100), quantize(20)
    assert all(torch.equal(a, b) for a, b in zip(own, ours))
    assert not torch.equal(own[1], coarse[1])  # the grid reaches GPTQ's quantizer


def test_patch_is_undone_and_checked():
    configure, find_params = Quantizer.configure, Quantizer.find_params
    with pytest.raises(RuntimeError):
        with clipping_search(20):
            assert Quantizer.configure is not configure
            raise RuntimeError("quantization failed")
    assert (Quantizer.configure, Quantizer.find_params) == (configure, find_params)
    q = _quantizer(2.4)
    assert q.grid == 100


def test_unknown_quantizer_api_is_an_error(monkeypatch):
    def configure(self, perchannel=False):  # a gptqmodel without the grid argument
        return None

    monkeypatch.setattr(Quantizer, "configure", configure)
    with pytest.raises(QuantizeError, match="mse_grid 20 needs gptqmodel 7.6.*set mse_grid: 100"):
        with clipping_search(20):
            pass
    with clipping_search(100):  # gptqmodel's own grid: its search runs untouched
        assert Quantizer.configure is configure
