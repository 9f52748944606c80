"""Start-up checks before Ray: registry names (issue 11.5), the H_aug warning (issue 13.7), and the
compat checks of the engine hand-off and the rollout registry (issue 13.2)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf
from papo_configs import composed
from user_env import user_env

from recipe.papo.compat import UnsupportedVersionError
from recipe.papo.compat.verl_engine import check_engine_forward_step, forward_log_probs_with_grad
from recipe.papo.compat.verl_registries import rollout_names
from recipe.papo.config import PapoConfigError
from recipe.papo.run_checks import check_papo_run_config, check_registry_names, warn_ineffective_settings


def test_the_default_config_uses_only_registered_names():
    check_registry_names(composed())


@pytest.mark.parametrize(
    "override, key, value, some_allowed",
    [
        ("algorithm.adv_estimator=foo", "algorithm.adv_estimator", "'foo'", ["grpo", "gae", "papo", "rloo"]),
        (
            "actor_rollout_ref.actor.policy_loss.loss_mode=bar",
            "actor_rollout_ref.actor.policy_loss.loss_mode",
            "'bar'",
            ["vanilla", "gspo", "papo"],
        ),
        ("reward.reward_manager.name=nope", "reward.reward_manager.name", "'nope'", ["naive", "dapo"]),
        ("actor_rollout_ref.rollout.name=vllmm", "actor_rollout_ref.rollout.name", "'vllmm'", ["vllm", "sglang"]),
    ],
)
def test_an_unknown_registry_name_names_the_key_and_the_allowed_values(override, key, value, some_allowed):
    with pytest.raises(PapoConfigError) as error:
        check_papo_run_config(composed(override))
    message = str(error.value)
    assert f"{key}={value}" in message
    for name in some_allowed:
        assert name in message


def test_unknown_base_loss_mode_names_the_allowed_values():
    with pytest.raises(PapoConfigError, match=r"papo.base_loss_mode='x'.*'vanilla'.*'gspo'"):
        check_papo_run_config(composed("papo.base_loss_mode=x"))


def test_an_importlib_reward_manager_is_not_looked_up_in_the_registry():
    config = composed("reward.reward_manager.source=importlib", "reward.reward_manager.name=anything")
    check_registry_names(config)


def test_rollout_names_include_the_cpu_backends_hf_only_when_it_is_on():
    names = rollout_names()
    assert {"vllm", "sglang", "trtllm"} <= set(names)
    assert ("hf" in names) == (os.environ.get("VERL_PLATFORM") == "cpu")  # the test session runs the CPU backend


def test_rollout_names_refuse_a_registry_of_another_shape(monkeypatch):
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    monkeypatch.setattr(RolloutReplicaRegistry, "_registry", ["vllm"])
    with pytest.raises(UnsupportedVersionError, match="RolloutReplicaRegistry._registry"):
        rollout_names()


def test_dry_run_with_an_unknown_estimator_fails_in_seconds_naming_it_and_the_allowed_names(tmp_path):
    env = user_env({"PAPO_DRY_RUN": "1", "HYDRA_FULL_ERROR": "1"})
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recipe.papo.main_papo",
            "actor_rollout_ref.model.path=/nonexistent/model",
            "algorithm.adv_estimator=foo",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "algorithm.adv_estimator='foo' is not a registered advantage estimator" in output
    assert "grpo" in output and "papo" in output and "reinforce_plus_plus" in output
    assert "Started a local Ray instance" not in output
    assert elapsed < 60, f"the dry run took {elapsed:.0f} s"


def test_entropy_aug_with_precompute_warns_once_at_start_up(caplog):
    from recipe.papo.config import PapoConfig

    with caplog.at_level(logging.WARNING, logger="recipe.papo.run_checks"):
        warn_ineffective_settings(PapoConfig(entropy_aug_coef=0.05))
    assert len(caplog.records) == 1
    assert "not to the gradient" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recipe.papo.run_checks"):
        warn_ineffective_settings(PapoConfig(entropy_aug_coef=0.05, masked_logprob_mode="recompute"))
        warn_ineffective_settings(PapoConfig(entropy_aug_coef=0.0))
        warn_ineffective_settings(PapoConfig(entropy_aug_coef=0.05, monitor=True))
    assert caplog.records == []


def test_the_full_start_up_check_warns_for_the_7b_setting(caplog):
    with caplog.at_level(logging.WARNING, logger="recipe.papo.run_checks"):
        check_papo_run_config(composed("papo.entropy_ori_coef=0.05", "papo.entropy_aug_coef=0.05"))
    assert sum("papo.entropy_aug_coef=0.05" in r.getMessage() for r in caplog.records) == 1


class _EngineWithForwardStep:
    """Stands in for verl 0.9.1's FSDP engine: same per-micro-batch signature; its loss sees the output."""

    def __init__(self):
        import torch

        self.weight = torch.tensor(2.0, requires_grad=True)

    def forward_step(self, micro_batch, loss_function, forward_only):
        log_probs = self.weight * micro_batch
        loss, _ = loss_function(model_output={"log_probs": log_probs}, data=micro_batch, dp_group=None)
        return loss, {"loss": loss.detach().item()}


class _EngineOfAnotherShape:
    def forward_step(self, batch_iter, model, logits_processor_func, postprocess_micro_batch_func):
        raise AssertionError("never called")


def test_engine_check_accepts_verls_fsdp_shape_and_the_output_keeps_its_gradient():
    import torch

    engine = _EngineWithForwardStep()
    check_engine_forward_step(engine)
    log_probs = forward_log_probs_with_grad(engine, torch.tensor([1.0, 3.0]))
    log_probs.sum().backward()
    assert engine.weight.grad == 4.0


@pytest.mark.parametrize("engine", [_EngineOfAnotherShape(), object()], ids=["megatron-like", "no forward_step"])
def test_engine_check_refuses_another_shape_with_a_clear_message(engine):
    with pytest.raises(UnsupportedVersionError, match=r"masked_logprob_mode=precompute"):
        check_engine_forward_step(engine)


def test_engine_check_accepts_the_installed_verl_fsdp_engine_class():
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    engine = FSDPEngineWithLMHead.__new__(FSDPEngineWithLMHead)  # the bound method's signature, no model
    check_engine_forward_step(engine)


def test_composed_config_is_plain_yaml():
    assert OmegaConf.select(composed(), "papo.monitor") is False
