"""``SMOKE=1`` with ``NNODES`` > 1 (docs/training.md) and smoke runs that resume from a checkpoint.

Fast: bash runs the script with a stand-in ``$PYTHON`` (``script_runs.python_args_of``) and the tests
compose its arguments in this process against ``configs/papo_trainer.yaml``, as ``python -m
papo_tools.smoke`` does. The run on a real two-node cluster is ``tests/e2e/test_multi_node.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from doc_blocks import bash_block_after
from omegaconf import OmegaConf
from script_runs import python_args_of

from papo_tools.cpu.launch import RUNTIME_ENV_KEY, cpu_env, cpu_runtime_env_overrides
from papo_tools.smoke.checks import Expectations, check_records
from papo_tools.smoke.run import compose, describe, parse_args, plan, resumed_step, split_arguments
from papo_tools.smoke.sizes import Machine, detect_machine, micro_batches_per_worker

PAPO_G = "run_qwen2_5_vl_7b_papo_g.sh"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "training.md"
# What a CPU smoke run on a cluster may set differently from one on this machine: the machine's shape
# and the Ray resources of a Ray it starts itself (a running cluster's come from `ray start`).
MACHINE_KEYS = {
    "trainer.nnodes",
    "trainer.n_gpus_per_node",
    "actor_rollout_ref.rollout.n_gpus_per_node",  # verl's interpolated copy of trainer.n_gpus_per_node
    "ray_kwargs.ray_init.num_cpus",
    "ray_kwargs.ray_init.num_gpus",
    "ray_kwargs.ray_init.include_dashboard",
}


def flat(config) -> dict:
    """``{dotted key: value}`` of ``config`` resolved (lists kept whole)."""
    return pd.json_normalize(OmegaConf.to_container(config, resolve=True), sep=".").iloc[0].to_dict()


@pytest.fixture(scope="module")
def smoke_plan(tmp_path_factory):
    """``smoke_plan(*args, machine=None, **env)``: the plan of ``SMOKE=1 <env> bash scripts/<PAPO-G> args...``
    on ``machine`` (``None``: the one :func:`detect_machine` finds for the script's ``NNODES`` /
    ``N_GPUS_PER_NODE``)."""
    workdir = tmp_path_factory.mktemp("smoke_multi_node")

    def make(*args: str, machine: Machine | None = None, **env: str):
        parsed = parse_args(python_args_of(PAPO_G, *args, cwd=workdir, SMOKE="1", **env)[2:])
        script_args, user_args = split_arguments(parsed.overrides, parsed.user_args)
        return plan(parsed.script, parsed.out, script_args, user_args, machine=machine)

    return make


def test_runtime_env_overrides_carry_the_cpu_env_as_strings(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "my_plugin.module,papo_tools.cpu")
    from ray.runtime_env import RuntimeEnv

    overrides = cpu_runtime_env_overrides()
    env_vars = OmegaConf.to_container(OmegaConf.select(compose(overrides), RUNTIME_ENV_KEY))
    expected = {key: value for key, value in cpu_env().items() if not key.startswith("RAY_")}
    assert env_vars == expected  # the raylet's own settings stay out; every value a string, commas kept
    assert env_vars["VERL_USE_EXTERNAL_MODULES"] == "papo_tools.cpu,my_plugin.module"
    assert env_vars["OMP_NUM_THREADS"] == "1"
    RuntimeEnv(env_vars=env_vars)  # Ray's own validation (string values only) accepts it


def test_detect_machine_keeps_the_script_workers_on_several_nodes():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU machine; the CUDA one is covered by tests/scripts/test_smoke_gpu.py")
    assert detect_machine(8) == Machine("cpu", 2, 1)  # one node: this machine's 2 CPU workers
    assert detect_machine(2, 2) == Machine("cpu", 2, 2)
    assert detect_machine(16, 2) == Machine("cpu", 16, 2)


def test_smoke_on_two_nodes_differs_from_one_node_only_in_the_machine(smoke_plan):
    one = smoke_plan(machine=Machine("cpu", 2))
    two = smoke_plan(NNODES="2", N_GPUS_PER_NODE="1")
    assert two.machine == Machine("cpu", 2, 2)
    assert (two.config.trainer.nnodes, two.config.trainer.n_gpus_per_node) == (2, 1)
    ray_init = two.config.ray_kwargs.ray_init
    assert ray_init.num_cpus is None and "num_gpus" not in ray_init and "include_dashboard" not in ray_init
    # the CPU backend's environment travels in the runtime env (the single-node run inherits it instead)
    env_vars = {f"{RUNTIME_ENV_KEY}.{key}": value for key, value in cpu_env().items() if not key.startswith("RAY_")}
    ours, theirs = (flat(p.config) for p in (two, one))
    differing = {key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)}
    assert differing == MACHINE_KEYS | set(env_vars)
    assert {key: ours[key] for key in env_vars} == env_vars
    assert "on the running Ray cluster's 2 nodes" in describe(two)


def test_four_workers_on_two_nodes_each_run_two_micro_batches(smoke_plan):
    smoke = smoke_plan(NNODES="2", N_GPUS_PER_NODE="2")
    config = smoke.config
    assert smoke.machine == Machine("cpu", 4, 2)
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (2, 2)
    assert config.actor_rollout_ref.actor.ppo_mini_batch_size == 2 * 4  # 2 prompts per data-parallel rank
    assert micro_batches_per_worker(config) >= 2
    share = config.data.train_batch_size * config.actor_rollout_ref.rollout.n // 4
    assert share % config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu == 0


def trainer_config(**trainer) -> OmegaConf:
    base = {"resume_mode": "auto", "resume_from_path": None, "default_local_dir": "checkpoints"}
    return OmegaConf.create({"trainer": {**base, **trainer}})


def save_checkpoint(root: Path, step: int) -> None:
    """What verl's trainer leaves after saving ``step``: its folder and the tracker file."""
    from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename

    (root / f"global_step_{step}" / "actor").mkdir(parents=True)
    Path(get_checkpoint_tracker_filename(str(root))).write_text(str(step))


def test_resumed_step_finds_the_checkpoint_as_verl_does(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    absolute = tmp_path / "ckpt"
    assert resumed_step(trainer_config(default_local_dir=str(absolute)), run_dir) == 0  # nothing saved yet
    save_checkpoint(absolute, 2)
    save_checkpoint(absolute, 4)
    assert resumed_step(trainer_config(default_local_dir=str(absolute)), run_dir) == 4  # the tracker's
    assert resumed_step(trainer_config(default_local_dir=str(absolute), resume_mode="disable"), run_dir) == 0
    by_path = trainer_config(resume_mode="resume_path", resume_from_path=str(absolute / "global_step_2"))
    assert resumed_step(by_path, run_dir) == 2
    # a relative folder is the run folder's (verl joins it with main_papo's working directory)
    save_checkpoint(run_dir / "checkpoints", 7)
    assert resumed_step(trainer_config(), run_dir) == 7
    assert resumed_step(trainer_config(), tmp_path) == 0


def test_smoke_that_resumes_describes_and_checks_the_steps_after_the_checkpoint(smoke_plan):
    assert "2 steps + 1 validation pass on 2 cpu worker(s)" in describe(smoke_plan(machine=Machine("cpu", 2)))
    resumed = smoke_plan("trainer.total_training_steps=3", machine=Machine("cpu", 2))
    assert "steps 3..3 + 1 validation pass" in describe(resumed, first_step=3)
    records = [
        {"step": 3, "data": {"training/global_step": 3, "actor/pg_loss": 0.1, "val-core/x": 0.0}},
    ]
    expect = Expectations(3, papo_enabled=False, use_kl_loss=False, rollout_log_probs=False, first_step=3)
    assert check_records(records, expect) == []
    earlier = [{"step": 2, "data": {"training/global_step": 2, "actor/pg_loss": 0.1}}, *records]
    assert any("expected training steps 3..3" in failure for failure in check_records(earlier, expect))
    from_scratch = Expectations(3, papo_enabled=False, use_kl_loss=False, rollout_log_probs=False)
    assert any("expected training steps 1..3" in failure for failure in check_records(records, from_scratch))


def commands(block: str) -> list[str]:
    """The program and first argument of each command of a bash block (continuation lines joined,
    leading ``NAME=value`` settings dropped)."""
    heads = []
    for line in block.replace("\\\n", " ").splitlines():
        words = line.split()
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        heads.append(" ".join(words[:2]))
    return heads


def test_the_ci_block_runs_the_pages_cluster_commands():
    """The block tests/e2e/test_multi_node.py runs starts its cluster and its run with the commands the
    page gives users (``ray start --head``, ``ray start --address``, the script)."""
    user = bash_block_after(PAGE, "# Multi-node training on a Ray cluster")
    ci = bash_block_after(PAGE, "### What CI proves, and what it does not")
    wanted = ["ray start", "ray start", "bash scripts/run_qwen2_5_vl_7b_papo_g.sh"]
    assert [head for head in commands(user) if head in wanted] == wanted
    assert [head for head in commands(ci) if head in wanted] == [*wanted, wanted[-1]]  # then the resumed run
    assert "--head" in ci and "--address=" in ci and "NNODES=2" in ci
