"""Every patch in recipe/papo/compat and papo_tools/compat refuses a verl it does not know, or steps aside."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tensordict import TensorDict
from verl_functions import verl_maybe_fix_3d_position_ids

from papo_tools.compat import verl_cpu
from recipe.papo.compat import guard
from recipe.papo.compat import verl as verl_compat
from recipe.papo.compat.guard import UnsupportedVersionError
from recipe.papo.compat.verl_train_batch import run_before_each_mini_batch

REPO = Path(__file__).resolve().parents[2]


def test_require_version_names_the_patch_and_both_versions():
    with pytest.raises(UnsupportedVersionError, match=r"'demo patch'.*verl 0\.0\.1.*verl \d") as info:
        guard.require_version("verl", ("0.0.1",), "demo patch")
    assert "recipe/papo/compat/" in str(info.value)
    assert guard.require_version("verl", verl_cpu.SUPPORTED_VERL, "demo patch") == "0.9.1"


CPU_PATCHES = {
    "process group backend": verl_cpu.install_process_group_backend,
    "rollout registry": lambda: verl_cpu.register_rollout_adapter(
        "hf", "async", "papo_tools.cpu.hf_adapter.HFServerAdapter"
    ),
    "engine registry": lambda: verl_cpu.registered_engine_devices("language_model", "fsdp2"),
    "platform singleton": verl_cpu.resolved_platform,
    "varlen attention": lambda: verl_cpu.install_varlen_attention(print, print),
    "reference offload": verl_cpu.install_unpinned_reference_offload,
}


@pytest.mark.parametrize("name", sorted(CPU_PATCHES))
def test_cpu_patches_refuse_an_unknown_verl(name, monkeypatch):
    monkeypatch.setattr(guard, "installed_version", lambda distribution: "0.10.0")
    with pytest.raises(UnsupportedVersionError, match="verl 0.10.0 is installed"):
        CPU_PATCHES[name]()


def test_cpu_patches_are_in_place_after_activation():
    """The session conftest activated the CPU backend: every patch applied, idempotently."""
    from verl.models.transformers import qwen2_vl
    from verl.workers.engine.fsdp import transformer_impl

    from papo_tools.cpu import varlen_attention

    for name, patch in CPU_PATCHES.items():
        if name != "varlen attention":  # the real functions are passed below
            patch()
    verl_cpu.install_varlen_attention(varlen_attention.varlen_attention, varlen_attention.dense_attention)
    assert qwen2_vl.flash_attn_varlen_func is varlen_attention.varlen_attention
    assert qwen2_vl._flash_attention_forward is varlen_attention.dense_attention
    assert transformer_impl.CPUOffloadPolicy(pin_memory=True).pin_memory is False
    assert "cpu" in verl_cpu.registered_engine_devices("language_model", "fsdp2")


def test_varlen_attention_refuses_when_flash_attn_is_bound(monkeypatch):
    from verl.models.transformers import qwen2_vl

    monkeypatch.setattr(qwen2_vl, "flash_attn_varlen_func", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match="already has flash-attn kernels bound"):
        verl_cpu.install_varlen_attention(print, print)


def test_rollout_registry_refuses_to_replace_another_adapter():
    with pytest.raises(ValueError, match="already registered"):
        verl_cpu.register_rollout_adapter("hf", "async", "somewhere.Else")


def test_position_ids_fix_detects_the_defect_in_verl_0_9_1():
    assert verl_compat.corrupts_equal_length_batches(verl_maybe_fix_3d_position_ids())
    assert not verl_compat.corrupts_equal_length_batches(verl_compat.maybe_fix_3d_position_ids)


def test_position_ids_fix_steps_aside_when_verl_is_fixed(monkeypatch):
    from verl.utils import tensordict_utils as tu

    def upstream_fixed(data):  # a verl whose own function handles equal lengths
        verl_compat.maybe_fix_3d_position_ids(data)

    monkeypatch.setattr(tu, "maybe_fix_3d_position_ids", upstream_fixed)
    assert verl_compat.install_position_ids_fix() is False
    assert tu.maybe_fix_3d_position_ids is upstream_fixed


def test_position_ids_fix_refuses_a_verl_without_the_function(monkeypatch):
    from verl.utils import tensordict_utils as tu

    monkeypatch.delattr(tu, "maybe_fix_3d_position_ids")
    with pytest.raises(UnsupportedVersionError, match="maybe_fix_3d_position_ids"):
        verl_compat.install_position_ids_fix()


def test_no_patch_of_another_package_outside_compat():
    """Only recipe/papo/compat and papo_tools/compat set attributes on modules or write sys.modules."""
    offenders = []
    packages = ("recipe", "data_prep", "papo_tools")
    for path in [path for package in packages for path in REPO.joinpath(package).rglob("*.py")]:
        if "compat" in path.relative_to(REPO).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bsetattr\(|sys\.modules\[[^\]]*\]\s*=|sys\.modules\.(update|setdefault)\(", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def bare_training_worker(cls=None):
    """A verl ``TrainingWorker`` object without its engine (only method lookup is exercised)."""
    from verl.workers.engine_workers import TrainingWorker

    return object.__new__(cls or TrainingWorker)


def test_train_batch_step_runs_before_each_mini_batch_on_verl_0_9_1():
    worker = bare_training_worker()
    calls = []
    worker.train_batch = lambda data: calls.append(("train_batch", data)) or "output"  # stands in for the engine
    run_before_each_mini_batch(worker, lambda data: calls.append(("step", data)))
    mini_batch = TensorDict({}, batch_size=[2])
    assert worker.train_batch(mini_batch) == "output"
    assert [name for name, _ in calls] == ["step", "train_batch"]
    assert all(data is mini_batch for _, data in calls)


def test_train_batch_step_refuses_another_verl(monkeypatch):
    monkeypatch.setattr(guard, "installed_version", lambda distribution: "0.10.0")
    with pytest.raises(UnsupportedVersionError, match="written for verl 0.9.1"):
        run_before_each_mini_batch(bare_training_worker(), print)


def test_train_batch_step_refuses_an_update_loop_that_no_longer_calls_train_batch():
    from verl.workers.engine_workers import TrainingWorker

    class OtherLoop(TrainingWorker):
        def train_mini_batch(self, data):
            return self.engine.forward_backward_batch(data)

    with pytest.raises(UnsupportedVersionError, match="no longer calls per mini-batch"):
        run_before_each_mini_batch(bare_training_worker(OtherLoop), print)


def test_trainer_hooks_are_verl_0_9_1s():
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from recipe.papo.compat.verl_trainer import TRAINER_HOOKS, check_trainer_hooks
    from recipe.papo.trainer import PapoTrainer

    check_trainer_hooks(PPOTrainerSync)
    # every verl method the PAPO trainer overrides is one the check covers
    overridden = {
        name
        for name, value in vars(PapoTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(PPOTrainerSync, name)
    }
    assert overridden and overridden <= set(TRAINER_HOOKS), overridden - set(TRAINER_HOOKS)


@pytest.mark.parametrize("name", ["_update_actor", "_save_checkpoint"])
def test_trainer_hooks_refuse_a_verl_that_renamed_or_changed_one(name):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from recipe.papo.compat.verl_trainer import check_trainer_hooks

    renamed = type("RenamedTrainer", (), {k: getattr(PPOTrainerSync, k) for k in dir(PPOTrainerSync) if k != name})
    with pytest.raises(UnsupportedVersionError, match=rf"RenamedTrainer\.{name} of verl .* is missing"):
        check_trainer_hooks(renamed)

    def changed(self, batch, metrics, extra):
        return batch

    different = type("ChangedTrainer", (PPOTrainerSync,), {name: changed})
    expected = rf"ChangedTrainer\.{name} .* is {name}\('batch', 'metrics', 'extra'\)"
    with pytest.raises(UnsupportedVersionError, match=expected):
        check_trainer_hooks(different)
