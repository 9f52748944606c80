"""The CPU launch helpers compose against verl's real Hydra config and switch the plug-in on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from papo_tools.cpu.launch import PLUGIN_MODULE, TQ_DEFAULT_THREADS, cpu_env, cpu_overrides, rollout_overrides
from papo_tools.demo.reward import reward_overrides


def test_the_hf_rollout_is_one_argument_away_and_unknown_engines_are_refused(tmp_path):
    vllm = rollout_overrides("vllm")
    hf = rollout_overrides("hf")
    assert hf[0] == "actor_rollout_ref.rollout.name=hf" and not any("vllm" in o or "sleep" in o for o in hf)
    assert hf[1:] == vllm[-len(hf) + 1 :]  # the same replica, agent-loop, reward and storage counts
    with pytest.raises(ValueError, match="rollout='sglang': choose one of vllm, hf"):
        rollout_overrides("sglang")


def test_overrides_compose_and_validate_against_verl_ppo_trainer(tmp_path):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    overrides = cpu_overrides(tmp_path / "model", tmp_path / "t.parquet", tmp_path / "v.parquet", output_dir=tmp_path)
    with initialize_config_module("verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=[*overrides, "algorithm.adv_estimator=grpo", *reward_overrides()])
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert config.trainer.device == "cpu" and config.actor_rollout_ref.rollout.name == "vllm"
    rollout = config.actor_rollout_ref.rollout
    assert not rollout.enable_sleep_mode and rollout.enforce_eager
    assert rollout.engine_kwargs.vllm == {"kv_cache_memory_bytes": 256 * 2**20, "mm_device_do_normalize": False}
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert config.actor_rollout_ref.model.use_remove_padding  # verl's default, left to the caller
    assert config.ray_kwargs.ray_init.num_gpus == 1
    assert config.trainer.default_local_dir == str(tmp_path)


def test_world_size_splits_each_rank_share_into_one_micro_batch(tmp_path):
    overrides = cpu_overrides("m", "t", "v", batch_size=4, rollout_n=2, world_size=2)
    assert "trainer.n_gpus_per_node=2" in overrides and "++ray_kwargs.ray_init.num_gpus=2" in overrides
    assert "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4" in overrides
    with pytest.raises(ValueError, match="divisible"):
        cpu_overrides("m", "t", "v", batch_size=3, rollout_n=1, world_size=2)


def test_env_switches_the_plugin_on_and_keeps_other_modules(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", f"my.plugin,{PLUGIN_MODULE}")
    env = cpu_env("/tmp/metrics.jsonl")
    assert env["VERL_PLATFORM"] == "cpu"
    assert env["VERL_USE_EXTERNAL_MODULES"] == f"{PLUGIN_MODULE},my.plugin"
    assert env["VERL_FILE_LOGGER_PATH"] == "/tmp/metrics.jsonl"


def test_env_caps_transfer_queue_threads_at_the_physical_cores(monkeypatch):
    import psutil

    # TransferQueue's own default, as its modules read it at import
    unset = {key: value for key, value in os.environ.items() if key != "TQ_NUM_THREADS"}
    probe = (
        "import transfer_queue.client as c, transfer_queue.storage.simple_storage as s; "
        "print(c.TQ_NUM_THREADS, s.TQ_NUM_THREADS)"
    )
    assert run_probe(probe, unset) == f"{TQ_DEFAULT_THREADS} {TQ_DEFAULT_THREADS}"
    monkeypatch.delenv("TQ_NUM_THREADS", raising=False)
    assert cpu_env()["TQ_NUM_THREADS"] == str(min(TQ_DEFAULT_THREADS, psutil.cpu_count(logical=False)))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 64)
    assert cpu_env()["TQ_NUM_THREADS"] == str(TQ_DEFAULT_THREADS)  # a large machine keeps TransferQueue's default
    monkeypatch.setenv("TQ_NUM_THREADS", "3")
    assert cpu_env()["TQ_NUM_THREADS"] == "3"  # the user's value


PROBE = """
import sys, verl
from verl.plugin.platform import PlatformRegistry
print("cpu" in PlatformRegistry.registered_names(), "qwen_vl_utils" in sys.modules)
"""


def run_probe(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_package_without_the_switch_does_nothing(switch_off_env):
    assert run_probe(PROBE, {**switch_off_env, "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE}) == "False False"


def test_switch_makes_verl_see_a_cpu_platform_in_a_fresh_process():
    code = """
import verl
from verl.utils.device import get_device_name, get_nccl_backend, get_resource_name, get_torch_device
from verl.workers.engine import EngineRegistry
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import get_rollout_replica_class
import verl.utils.tensordict_utils as tu
engine = EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__
print(get_device_name(), get_nccl_backend(), get_resource_name(), get_torch_device().memory_allocated(), engine,
      get_rollout_class("hf").__name__, get_rollout_replica_class("hf").__name__,
      tu.maybe_fix_3d_position_ids.__module__)
"""
    out = run_probe(code, {**os.environ, **cpu_env()})
    assert out == "cpu gloo GPU 0 FSDPEngineWithLMHead HFServerAdapter HFReplica recipe.papo.compat.verl"


def test_openmp_threads_sleep_at_barriers_unless_the_user_says_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cpu_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cpu_env()["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's value
