"""The trainer hands the run's ``data.mm_processor_kwargs`` to the masked pass (as JSON per batch)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf


def test_mm_processor_kwargs_json_carries_the_runs_processor_options():
    from recipe.papo.trainer import mm_processor_kwargs_json

    config = OmegaConf.create({"data": {"mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 1003520}}})
    assert json.loads(mm_processor_kwargs_json(config)) == {"min_pixels": 200704, "max_pixels": 1003520}
    assert json.loads(mm_processor_kwargs_json(OmegaConf.create({"data": {}}))) == {}
