"""The experiment's own Ray clusters: a run that joins one is the same run, and arms run ``jobs`` at a
time, one per cluster.

No Ray is started here: ``test_dynamics_e2e.py`` runs the experiment on its clusters. The first two
tests compose the real ``main_papo`` config from ``configs/papo_trainer.yaml``; the last one replaces
the trainer runs, the warm-up and the clusters by stand-ins that record what ran where and when.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

import papo_tools.experiments.dynamics as dynamics
from papo_tools.experiments.arms import ARMS
from papo_tools.experiments.cluster import NUM_CPUS, NUM_GPUS, head_command, joining_command
from papo_tools.experiments.run import RunSize, arm_command
from papo_tools.experiments.summary import ACCURACY_KEY, REQUIRED_METRICS
from papo_tools.experiments.warmup import WarmupConfig, WarmupResult

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def composed(command: list[str]):
    """The run config of a ``python -m recipe.papo.main_papo`` command line, resolved."""
    from hydra import compose, initialize_config_dir

    assert command[1:3] == ["-m", "recipe.papo.main_papo"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return OmegaConf.to_container(compose("papo_trainer", overrides=command[3:]), resolve=True)


def test_a_run_on_the_shared_cluster_is_the_same_run_but_for_how_it_reaches_ray(tmp_path):
    metrics = tmp_path / "run" / "metrics.jsonl"
    command = arm_command(
        ARMS[0], 0, tmp_path / "m", tmp_path / "t.parquet", tmp_path / "v.parquet", tmp_path, RunSize(12)
    )
    own, shared = composed(command), composed(joining_command(command, metrics))
    own_init, shared_init = own.pop("ray_kwargs")["ray_init"], shared.pop("ray_kwargs")["ray_init"]
    assert shared == own  # every training, data, model and trainer key
    # The run's own ray.init starts Ray with these resources; on the cluster, ray.init gets none.
    assert (own_init["num_cpus"], own_init["num_gpus"], own_init["include_dashboard"]) == (NUM_CPUS, NUM_GPUS, False)
    assert shared_init["num_cpus"] is None and "num_gpus" not in shared_init and "include_dashboard" not in shared_init
    # The trainer runs in a worker of the head, so the file logger's path travels in the job's runtime env.
    assert shared_init["runtime_env"].pop("env_vars") == {"VERL_FILE_LOGGER_PATH": str(metrics)}
    assert shared_init["runtime_env"] == own_init["runtime_env"]


def test_the_head_has_the_resources_of_a_runs_own_ray_and_free_ports(tmp_path):
    command = head_command(tmp_path / "ray")
    assert command[1:4] == ["start", "--head", "--block"]  # blocks: stopping it stops the head's processes
    assert {f"--num-cpus={NUM_CPUS}", f"--num-gpus={NUM_GPUS}", "--include-dashboard=false", "--port=0"} <= set(command)
    assert f"--temp-dir={tmp_path / 'ray'}" in command


def test_arms_run_jobs_at_a_time_each_alone_on_its_cluster_and_the_summary_keeps_arm_order(tmp_path, monkeypatch):
    started, stopped, log = [], [], []
    lock, second_ended = threading.Lock(), threading.Event()

    @contextmanager
    def cluster(path):  # stands in for ray_cluster: one "head" per call, stopped on leaving
        started.append(path.name)
        yield path.name
        stopped.append(path.name)

    def run_arm(arm, seed, model_dir, train, val, run_dir, size, head):  # stands in for a trainer run
        with lock:
            log.append(("start", arm.name, head))
        if arm.name == ARMS[0].name:  # the first arm ends after the second
            assert second_ended.wait(timeout=30)
        with lock:
            log.append(("end", arm.name, head))
        if arm.name == ARMS[1].name:
            second_ended.set()
        step = {name: 0.5 for name in REQUIRED_METRICS}
        return [{"step": s, "data": {**step, ACCURACY_KEY: ARMS.index(arm) / 10}} for s in (1, 2)], float(len(arm.name))

    monkeypatch.setattr(dynamics, "ray_cluster", cluster)
    monkeypatch.setattr(dynamics, "run_arm", run_arm)
    monkeypatch.setattr(dynamics, "warm_up_model", lambda model_dir, seed, config: WarmupResult([1.0, 0.5], 0.4, []))
    monkeypatch.setattr(dynamics, "write_task", lambda folder, *args: (folder / "t.parquet", folder / "v.parquet"))
    summary = dynamics.run_experiment(tmp_path, ARMS, 1, RunSize(2), WarmupConfig(), "cmd", jobs=2)

    assert started == ["ray_head0.log", "ray_head1.log"] and sorted(stopped) == sorted(started)
    running: dict[str, str] = {}  # head -> arm
    most = 0
    for event, arm, head in log:
        if event == "start":
            assert head not in running, f"{arm} started on {head} while {running.get(head)} ran there"
            running[head] = arm
        else:
            assert running.pop(head) == arm
        most = max(most, len(running))
    assert most == 2
    ends = [arm for event, arm, _ in log if event == "end"]
    assert ends.index(ARMS[1].name) < ends.index(ARMS[0].name)  # they ended out of arm order ...
    assert list(summary["arms"]) == [arm.name for arm in ARMS]  # ... and the summary is in arm order
    assert [summary["arms"][arm.name][ACCURACY_KEY] for arm in ARMS] == [[i / 10] * 2 for i in range(len(ARMS))]
    assert list(summary["run"]["seconds"]) == ["seed0/warmup", *(f"seed0/{arm.name}" for arm in ARMS)]
    assert (tmp_path / "dynamics.png").exists()
