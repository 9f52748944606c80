"""The user's journey on CPU, run exactly as docs/data.md ("The whole journey on CPU") writes it.

One bash run of the page's command block, read from the page: hub-layout copies of the three
datasets and the tiny scorer model (``python -m papo_tools.journey``), ``python -m data_prep.all``,
``SMOKE=1 SMOKE_DATA=script SMOKE_MODEL=script`` of the PAPO-G 7B script (verl's trainer and vLLM rollout
on the CPU build of vLLM, the paper's prompt and reward, a 2-rank FSDP checkpoint), ``python -m
verl.model_merger merge``, ``SMOKE=1 bash scripts/eval_papo.sh`` (avg@8) and the table. The tests then
check each step's output against an independent computation:

* the merged folder loads through ``AutoModelForImageTextToText`` / ``AutoProcessor`` and every weight
  equals the checkpoint's shards, concatenated along their FSDP shard dimension;
* the evaluation's generations hold each prepared row 8 times, under the paper's prompt of the hub
  question, and every score equals ``recipe/papo/reward.py`` applied again to the response;
* every number of ``eval_table.json`` / ``.md`` equals the mean recomputed from the generations, grouped
  as Table 1 of arXiv 2507.06448; at least three benchmarks score strictly between 0 and 1;
* every training reward equals the reward applied again to the rollout dumps; the advantages are not 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from doc_blocks import bash_block_after
from memory_slots import memory_slot
from omegaconf import OmegaConf
from script_runs import REPO, script_env

from papo_tools.demo.run_demo import read_jsonl
from papo_tools.journey.hub_copies import EVAL_REPO, TRAIN_REPO
from recipe.papo.prompt import EVAL_BENCHMARKS, GENERAL_BENCHMARKS, VISION_DEPENDENT_BENCHMARKS, format_question
from recipe.papo.reward import compute_score

# The fixture (the preparation, then both runs) runs inside the first test's time limit: pytest's 900 s
# are too few on a loaded machine. The wait for the vLLM slot does not count (tests/support/memory_slots.py).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

PAGE = REPO / "docs" / "data.md"
SECTION = "### The whole journey on CPU"
EVAL_N = 8
ROLLOUT_N = 5
JOURNEY_TIMEOUT_S = 2400
# Where the page's commands leave their outputs (relative to the folder they run in).
TRAINING = Path("smoke_output/run_qwen2_5_vl_7b_papo_g")
CHECKPOINT = TRAINING / "checkpoints/global_step_2/actor"
MERGED = Path("journey/papo_g/global_step_2/hf")
RESULTS = Path("eval_results/papo_g__global_step_2")
DATA = Path("journey/data")


def journey_block() -> str:
    """The first ``bash`` block after the page's :data:`SECTION` heading."""
    return bash_block_after(PAGE, SECTION)


def split_at_first_run(block: str) -> tuple[str, str]:
    """``(preparation, runs)``: the block's lines before its first ``SMOKE=1`` command, and from there on.

    ``runs`` starts with the preparation's ``export`` lines, so both parts run in the same environment;
    only ``runs`` needs a training run's memory (the preparation is data and a small CPU warm-up).
    """
    lines = block.splitlines(keepends=True)
    first = next(index for index, line in enumerate(lines) if line.startswith("SMOKE=1"))
    exports = [line for line in lines[:first] if line.startswith("export ")]
    return "".join(lines[:first]), "".join(exports + lines[first:])


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> Path:
    """The folder the page's block ran in (as the repository root: ``scripts/`` links to the project's)."""
    root = tmp_path_factory.mktemp("journey")
    (root / "scripts").symlink_to(REPO / "scripts")
    preparation, runs = split_at_first_run(journey_block())
    outputs = []
    for part, slot in ((preparation, None), (runs, "vllm")):
        with memory_slot(slot) if slot else contextlib.nullcontext():
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", part],
                cwd=root,
                env=script_env(),
                capture_output=True,
                text=True,
                timeout=JOURNEY_TIMEOUT_S,
                check=False,
            )
        outputs.append(done.stdout + done.stderr)
        (root / "journey.log").write_text("".join(outputs))
        logs = "\n".join((root / log).read_text()[-4000:] for log in (TRAINING / "run.log",) if (root / log).exists())
        assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}\n{logs}"
    return root


def test_the_block_splits_into_preparation_and_runs_that_together_are_the_block():
    preparation, runs = split_at_first_run(journey_block())
    exports = [line for line in preparation.splitlines(keepends=True) if line.startswith("export ")]
    assert exports and "SMOKE=1" not in preparation and runs.startswith("".join(exports) + "SMOKE=1")
    assert preparation + runs.removeprefix("".join(exports)) == journey_block()


def prepared_rows(parquet: Path) -> pd.DataFrame:
    return pd.read_parquet(parquet)


def dumped_input(content: str, tokenizer) -> str:
    """What verl dumps as a row's input: its chat prompt decoded without special tokens (images are special)."""
    text = "".join(
        "<|vision_start|><|image_pad|><|vision_end|>" if part == "<image>" else part
        for part in re.split("(<image>)", content)
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"], skip_special_tokens=True)


def hub_questions(repo: Path) -> dict[str, list[str]]:
    """Split name -> the user turn of every row of a ShareGPT hub copy."""
    return {
        shard.name.split("-00000")[0]: [
            next(turn["content"] for turn in messages if turn["role"] == "user")
            for messages in pd.read_parquet(shard)["messages"]
        ]
        for shard in sorted((repo / "data").glob("*.parquet"))
    }


@pytest.fixture(scope="module")
def tokenizer(journey):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(journey / MERGED)


def test_data_prep_writes_every_row_or_its_reason(journey):
    summaries = {
        path.name: json.loads(path.read_text())
        for path in [*(journey / DATA).glob("*.summary.json"), *(journey / DATA / "eval").glob("*.summary.json")]
    }
    train = summaries["virl39k_train.summary.json"]
    assert (train["rows_in"], train["rows_written"], train["skipped_by_reason"]) == (32, 31, {"missing_answer": 1})
    for benchmark in EVAL_BENCHMARKS:
        summary = summaries[f"{benchmark}.summary.json"]
        assert (summary["rows_in"], summary["rows_written"]) == (4, 3), benchmark
        assert summary["skipped_by_reason"] == {"missing_image_file": 1}, benchmark


def test_merged_model_loads_and_equals_the_checkpoint_shards(journey):
    from torch.distributed.tensor import DTensor, Shard
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, info = AutoModelForImageTextToText.from_pretrained(
        journey / MERGED, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    processor = AutoProcessor.from_pretrained(journey / MERGED)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    shards = [
        torch.load(journey / CHECKPOINT / f"model_world_size_2_rank_{rank}.pt", map_location="cpu", weights_only=False)
        for rank in range(2)
    ]
    merged = model.state_dict()
    assert set(merged) == set(shards[0]) == set(shards[1])
    sharded = 0
    for key, value in merged.items():
        parts = [shard[key] for shard in shards]
        if isinstance(parts[0], DTensor):
            (placement,) = parts[0].placements
            assert isinstance(placement, Shard), (key, placement)
            full = torch.cat([part.to_local() for part in parts], dim=placement.dim)
            sharded += 1
        else:
            full = parts[0]
        assert value.dtype == torch.bfloat16, key  # verl's merger writes bf16
        assert torch.equal(value, full.to(torch.bfloat16)), key
    assert sharded > 0


@pytest.fixture(scope="module")
def generations(journey) -> list[dict]:
    (dump,) = sorted((journey / RESULTS / "generations").glob("*.jsonl"))
    return read_jsonl(dump)


@pytest.fixture(scope="module")
def expected_eval_inputs(journey, tokenizer) -> dict[str, dict[str, str]]:
    """Benchmark -> {dumped input of each prepared row: its ground truth}, after checking its prompt."""
    questions = hub_questions(journey / "journey/hub" / EVAL_REPO)
    expected = {}
    for benchmark in EVAL_BENCHMARKS:
        rows = prepared_rows(journey / DATA / "eval" / f"{benchmark}.parquet")
        contents = [prompt[0]["content"] for prompt in rows["prompt"]]
        # the paper's prompt applied to the hub's question (the written rows are the hub's first three)
        assert contents == [format_question(question) for question in questions[benchmark][: len(rows)]]
        truths = [reward["ground_truth"] for reward in rows["reward_model"]]
        expected[benchmark] = {dumped_input(c, tokenizer): t for c, t in zip(contents, truths, strict=True)}
    return expected


def test_eval_generations_hold_every_prepared_row_eight_times_and_its_reward(generations, expected_eval_inputs):
    benchmark_of = {text: name for name, inputs in expected_eval_inputs.items() for text in inputs}
    counts = Counter(line["input"] for line in generations)
    assert set(counts) == set(benchmark_of)
    assert set(counts.values()) == {EVAL_N}
    for line in generations:
        benchmark = benchmark_of[line["input"]]
        assert line["gts"] == expected_eval_inputs[benchmark][line["input"]]
        again = compute_score(f"papo/{benchmark}", line["output"], line["gts"])
        assert {key: line[key] for key in again} == again, line


def test_table_equals_the_means_of_the_generations(journey, generations, expected_eval_inputs):
    benchmark_of = {text: name for name, inputs in expected_eval_inputs.items() for text in inputs}
    per_question = defaultdict(list)
    for line in generations:
        per_question[line["input"]].append(compute_score("papo/x", line["output"], line["gts"])["acc"])
    per_benchmark = defaultdict(list)
    for text, accs in per_question.items():
        per_benchmark[benchmark_of[text]].append(sum(accs) / len(accs))
    avg = {name: sum(values) / len(values) for name, values in per_benchmark.items()}

    table = json.loads((journey / RESULTS / "eval_table.json").read_text())
    assert (table["metric"], table["n"], table["missing"]) == (f"avg@{EVAL_N}", EVAL_N, [])
    for name in EVAL_BENCHMARKS:
        assert math.isclose(table["benchmarks"][name]["accuracy"], avg[name], abs_tol=1e-6), name
    groups = {
        "general": GENERAL_BENCHMARKS,
        "vision-dependent": VISION_DEPENDENT_BENCHMARKS,
        "overall": EVAL_BENCHMARKS,
    }
    for group, members in groups.items():
        mean = sum(avg[name] for name in members) / len(members)
        assert math.isclose(table["averages"][group]["accuracy"], mean, abs_tol=1e-6), group
        assert table["averages"][group]["benchmarks"] == list(members)
    markdown = (journey / RESULTS / "eval_table.md").read_text()
    for name in EVAL_BENCHMARKS:
        assert f"| {name} | {table['benchmarks'][name]['group']} | {100 * avg[name]:.2f} |" in markdown
    assert len(re.findall(r"^\| (?!\*\*)\w+ \| (general|vision-dependent) \|", markdown, re.MULTILINE)) == 9
    # the scorer answers part of the questions right: the table is not all zeros or ones
    assert sum(0 < value < 1 for value in avg.values()) >= 3, avg


def test_training_rewards_equal_the_reward_on_its_rollouts(journey, tokenizer):
    rows = prepared_rows(journey / DATA / "virl39k_train.parquet")
    (shard,) = (journey / "journey/hub" / TRAIN_REPO / "data").glob("train-*.parquet")
    questions = pd.read_parquet(shard)["problem"]
    contents = [prompt[0]["content"] for prompt in rows["prompt"]]
    assert set(contents) <= {format_question(question) for question in questions}
    prompts = {dumped_input(content, tokenizer) for content in contents}
    records = [r for r in read_jsonl(journey / TRAINING / "metrics.jsonl") if "training/global_step" in r["data"]]
    assert [r["step"] for r in records] == [1, 2]
    batch = OmegaConf.load(journey / TRAINING / "config.yaml").data.train_batch_size
    for record in records:
        lines = read_jsonl(journey / TRAINING / "rollouts" / f"{record['step']}.jsonl")
        assert len(lines) == batch * ROLLOUT_N
        for line in lines:
            assert line["input"] in prompts
            score = compute_score("papo/virl39k", line["output"], line["gts"])["score"]
            assert math.isclose(line["score"], score, rel_tol=1e-6, abs_tol=1e-7), line
        scores = [line["score"] for line in lines]
        assert math.isclose(record["data"]["critic/score/mean"], sum(scores) / len(scores), rel_tol=1e-5)
        # right and wrong answers within groups: the advantages are not all 0
        assert record["data"]["critic/advantages/max"] > 0 > record["data"]["critic/advantages/min"]
