"""Regression test: mRoPE position_ids of equal-length sequences through TransferQueue and the actor update.

The batch is built the way verl 0.9.1's v1 trainer builds it: each sample is put by the agent loop
with verl's ``list_of_dict_to_tensordict`` (``AgentLoopWorkerTQ._agent_loop_postprocess``), read
back by TransferQueue's storage manager (``_pack_field_values``) and shipped to the worker through
TransferQueue's serializer. It then goes through the worker's actor-update steps
(``TrainingWorker.train_mini_batch``: fix, mini-batch iterator, fix per mini-batch) and what the
FSDP engine reads from it (``to_padded_tensor`` without remove-padding, ``values()`` with it).
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager
from transfer_queue.utils import serial_utils
from verl.utils import tensordict_utils as tu
from verl_functions import verl_maybe_fix_3d_position_ids

from recipe.papo.compat import verl as position_ids

CHANNELS = 4  # Qwen2/2.5-VL: text positions + 3 mRoPE axes


def _sample_position_ids(index: int, length: int) -> torch.Tensor:
    return torch.arange(CHANNELS * length).view(CHANNELS, length) + 1000 * index


def tq_batch(lengths: list[int]) -> TensorDict:
    """A batch as a worker receives it from TransferQueue, one sample of each length."""
    rows = []
    for index, length in enumerate(lengths):
        put = tu.list_of_dict_to_tensordict(
            [{"input_ids": torch.arange(length), "position_ids": _sample_position_ids(index, length)}]
        )
        rows.append(put[0])
    packed = {key: AsyncSimpleStorageManager._pack_field_values([row[key] for row in rows]) for key in rows[0].keys()}
    batch = TensorDict(packed, batch_size=[len(lengths)])
    return serial_utils.decode(serial_utils.encode(batch))


def actor_update_views(data: TensorDict, mini_batch_size: int) -> list[list[torch.Tensor]]:
    """Per mini-batch, the per-sample position ids the engine sees (padded path and rmpad path)."""
    tu.maybe_fix_3d_position_ids(data)
    views = []
    for mini_batch in tu.make_iterator(data, mini_batch_size=mini_batch_size, epochs=1, seed=0):
        tu.maybe_fix_3d_position_ids(mini_batch)
        nested = mini_batch["position_ids"]
        lengths = mini_batch["input_ids"].offsets().diff().tolist()
        padded = torch.nested.to_padded_tensor(nested, padding=0, output_size=(len(lengths), CHANNELS, max(lengths)))
        rmpad = nested.values()  # (CHANNELS, total_tokens) with use_remove_padding
        assert torch.equal(torch.cat([padded[i, :, :n] for i, n in enumerate(lengths)], dim=-1), rmpad)
        views.append([padded[i, :, :n] for i, n in enumerate(lengths)])
    return views


def expected_samples(batch: TensorDict) -> dict[int, torch.Tensor]:
    """Sample index (recovered from the 1000-offset) -> its position ids."""
    return {int(sample[0, 0]) // 1000: sample for sample in batch["position_ids"].unbind()}


@pytest.fixture(autouse=True)
def fixed():
    position_ids.install_position_ids_fix()


def test_equal_lengths_come_back_ragged_along_the_wrong_dim():
    batch = tq_batch([6, 6, 6, 6])
    assert batch["position_ids"]._ragged_idx == 1  # torch picked the channel dim: (B, j, L)
    assert tq_batch([5, 7, 6, 8])["position_ids"]._ragged_idx == 2


def test_verl_original_fix_breaks_the_actor_update_on_equal_lengths():
    """The defect itself: verl 0.9.1's function, then the mini-batch split, crashes."""
    batch = tq_batch([6, 6, 6, 6])
    verl_maybe_fix_3d_position_ids()(batch)
    with pytest.raises(RuntimeError):
        for mini_batch in tu.make_iterator(batch, mini_batch_size=2, epochs=1, seed=0):
            mini_batch["position_ids"].unbind()


@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [5, 7, 6, 8], [9, 9]])
def test_actor_update_sees_every_sample_intact(lengths):
    batch = tq_batch(lengths)
    expected = {index: _sample_position_ids(index, length) for index, length in enumerate(lengths)}
    seen = [sample for views in actor_update_views(batch, mini_batch_size=2) for sample in views]
    assert len(seen) == len(lengths)
    for sample in seen:
        assert torch.equal(sample, expected[int(sample[0, 0]) // 1000])


def test_fixed_tensor_survives_consolidate_and_pickle():
    """verl's original case (ragged index lost in a pickle round trip) is still repaired."""
    for lengths in ([6, 6, 6], [4, 9, 5]):
        batch = tq_batch(lengths)
        tu.maybe_fix_3d_position_ids(batch)
        expected = expected_samples(batch)
        restored = pickle.loads(pickle.dumps(batch.consolidate()))
        assert restored["position_ids"]._ragged_idx == 1  # lost
        tu.maybe_fix_3d_position_ids(restored)
        assert restored["position_ids"]._ragged_idx == 2
        for sample in restored["position_ids"].unbind():
            assert torch.equal(sample, expected[int(sample[0, 0]) // 1000])


def test_two_dim_and_dense_position_ids_are_left_alone():
    batch = TensorDict({"position_ids": torch.arange(12).view(2, 6)}, batch_size=[2])
    tu.maybe_fix_3d_position_ids(batch)
    assert torch.equal(batch["position_ids"], torch.arange(12).view(2, 6))
    tu.maybe_fix_3d_position_ids(TensorDict({}, batch_size=[2]))


INSTALL_PROBE = """
import verl.workers.engine.base as engine_base  # binds verl's function by name before the fix
from recipe.papo.compat import verl as position_ids
from verl.utils import tensordict_utils as tu

original = tu.maybe_fix_3d_position_ids
position_ids.install_position_ids_fix()
position_ids.install_position_ids_fix()
print(
    tu.maybe_fix_3d_position_ids is engine_base.maybe_fix_3d_position_ids is position_ids.maybe_fix_3d_position_ids,
    position_ids.corrupts_equal_length_batches(original),
)
"""


def test_install_is_idempotent_and_reaches_modules_that_imported_the_function(switch_off_env):
    """In a fresh process (importing verl's engine here would pin this test session's platform)."""
    result = subprocess.run(
        [sys.executable, "-c", INSTALL_PROBE], env=switch_off_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["True", "True"]
    assert tu.maybe_fix_3d_position_ids is position_ids.maybe_fix_3d_position_ids
