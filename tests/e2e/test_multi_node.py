"""Multi-node training on a real two-node Ray cluster, run exactly as docs/training.md writes it.

One bash run of the page's block ("What CI proves, and what it does not", read from the page) in a
fresh short folder with ``scripts/`` linked to the project's: ``ray start --head`` and ``ray start
--address`` (one logical GPU each, their own temp dirs and token file), ``SMOKE=1 NNODES=2
N_GPUS_PER_NODE=1`` of the PAPO-G 7B script against that cluster (verl's trainer and vLLM rollout on
the CPU build of vLLM, FSDP2 on 2 ranks over gloo, the masked pass unshared, ``PAPO_MASK_LOG_DIR`` set
only in the job's runtime env), then a smoke run that resumes from its checkpoint for one more step
with the shared masked pass. While the cluster is up,
Ray's state API lists the nodes, jobs and actors. The block runs in a session of its own; every
process of that session is ended afterwards in every outcome (not ``ray stop``, which would end other
Ray clusters of the machine) and the tests check:

* the two data-parallel ranks' training workers (verl's ``WorkerDict`` actors) ran on different
  nodes, in both runs;
* the first run's ``papo/*`` metrics are finite;
* the mask log: each rank wrote from its own node and process (the state API's), and every prompt both
  ranks masked has one digest pair (the same input and the same mask on both nodes);
* ``metrics.jsonl`` and the checkpoint (a shard per rank) where docs/training.md says;
* the resumed run logs step 3 only and writes ``global_step_3`` next to ``global_step_2``;
* the first run's masked pass is the full one and the resumed run's the shared one (their logs);
* no process of the cluster is left.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from doc_blocks import bash_block_after
from memory_slots import memory_slot
from script_runs import REPO, script_env

from papo_tools.demo.run_demo import read_jsonl
from recipe.papo.mask_log import MASK_LOG_ENV

# The fixture (both runs) runs inside the first test's time limit; the wait for its memory slot does not
# count (tests/support/memory_slots.py).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

PAGE = REPO / "docs" / "training.md"
SECTION = "### What CI proves, and what it does not"
# Where the page's commands leave things (relative to the folder they run in).
TOKEN = Path("ray/auth_token")
ADDRESS = Path("ray/head/ray_current_cluster")
FIRST = Path("smoke_output/run_qwen2_5_vl_7b_papo_g")
RESUMED = Path("resumed/run_qwen2_5_vl_7b_papo_g")
CHECKPOINTS = FIRST / "checkpoints"
MASK_LOG = Path("mask_log")
RANKS = 2
# Both smoke runs with their start-ups: 340-400 s measured on a shared 2-core machine.
BLOCK_TIMEOUT_S = 1800
STATE_TIMEOUT_S = 120
# Ray's Unix socket paths (<folder>/ray/node2/session_<date>_<pid>/sockets/raylet) must fit 107 bytes.
MAX_FOLDER_CHARS = 30
# The grace SIGTERM gets before SIGKILL when the session is ended, s.
TERM_GRACE_S = 5.0
WORKER_NAME = re.compile(r"WorkerDict_(\d+):(\d+)$")  # verl's name: <prefix>WorkerDict_<pg index>:<local rank>

# Run with the block's token file: Ray's state API, printed as JSON (nodes, jobs, actors, dead ones too).
STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_jobs, list_nodes
address = sys.argv[1]
print(json.dumps({
    "nodes": [{"node_id": n.node_id, "is_head_node": n.is_head_node} for n in list_nodes(address=address, detail=True)],
    "jobs": [{"job_id": j.job_id, "entrypoint": j.entrypoint} for j in list_jobs(address=address)],
    "actors": [
        {"class_name": a.class_name, "name": a.name, "job_id": a.job_id, "node_id": a.node_id, "pid": a.pid}
        for a in list_actors(address=address, detail=True, limit=10000)
    ],
}))
"""


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def processes_naming(folder: Path) -> list[int]:
    """Live processes other than this one whose command line names ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z" and str(folder) in command:
            found.append(int(entry.name))
    return found


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def end_session(session: int, folder: Path) -> dict[str, list[int]]:
    """End every process of ``session`` and any other naming ``folder``: SIGTERM, then SIGKILL after
    :data:`TERM_GRACE_S`. Returns what was found outside the session and what is left after all."""
    escaped = sorted(set(processes_naming(folder)) - set(session_processes(session)))
    signal_all([*session_processes(session), *escaped], signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while (session_processes(session) or processes_naming(folder)) and time.monotonic() < deadline:
        time.sleep(0.5)
    signal_all([*session_processes(session), *processes_naming(folder)], signal.SIGKILL)
    time.sleep(1.0)
    return {"escaped": escaped, "left": sorted(set(session_processes(session)) | set(processes_naming(folder)))}


def ray_state(root: Path, env: dict[str, str]) -> dict:
    """:data:`STATE_QUERY` against the block's cluster, with its token file."""
    address = (root / ADDRESS).read_text().strip()
    done = subprocess.run(
        [sys.executable, "-c", STATE_QUERY, address],
        cwd=root,
        env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(root / TOKEN)},
        capture_output=True,
        text=True,
        timeout=STATE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"Ray state query failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class ClusterRun:
    """The block's folder, Ray's state before the cluster ended, and what ending it found."""

    root: Path
    state: dict
    cleanup: dict[str, list[int]]
    wall_s: float

    def job_of(self, run: Path) -> str:
        """The Ray job id of the run whose output folder is ``run`` (its metrics file names it)."""
        marker = f"VERL_FILE_LOGGER_PATH={self.root / run / 'metrics.jsonl'}"
        (job,) = [job["job_id"] for job in self.state["jobs"] if marker in job["entrypoint"]]
        return job

    def rank_workers(self, run: Path) -> dict[int, dict]:
        """Rank -> verl's training worker (``WorkerDict`` actor) of ``run``.

        One worker per node (``N_GPUS_PER_NODE=1``): local rank 0 of placement group ``rank``.
        """
        job, workers = self.job_of(run), {}
        for actor in self.state["actors"]:
            match = WORKER_NAME.search(actor["name"] or "")
            if actor["job_id"] == job and actor["class_name"].endswith("WorkerDict") and match:
                assert match.group(2) == "0", actor
                workers[int(match.group(1))] = actor
        return workers


def block_env() -> dict[str, str]:
    """A user's environment for the block: no Ray settings or mask log of the caller's own."""
    return {key: value for key, value in script_env().items() if not key.startswith("RAY_") and key != MASK_LOG_ENV}


@pytest.fixture(scope="module")
def cluster() -> ClusterRun:
    block = bash_block_after(PAGE, SECTION)
    for path in (TOKEN, ADDRESS, RESUMED.parent, MASK_LOG):
        assert str(path) in block, f"{PAGE.name}'s block no longer uses {path}: update this test"
    root = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))
    assert len(str(root)) <= MAX_FOLDER_CHARS, root
    (root / "scripts").symlink_to(REPO / "scripts")
    env = block_env()
    state: dict = {}
    # Memory: the "cluster" slot of tests/support/memory_slots.py (its peak measured there).
    with memory_slot("cluster"), (root / "block.log").open("w") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the cluster's processes: this session (ray start daemonises into it)
        )
        try:
            returncode = process.wait(timeout=BLOCK_TIMEOUT_S)
            wall_s = time.monotonic() - started
            if returncode == 0:
                state = ray_state(root, env)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            cleanup = end_session(process.pid, root)
    if returncode != 0:
        logs = [root / "block.log", root / FIRST / "run.log", root / RESUMED / "run.log"]
        tails = "\n".join(f"--- {log}\n{log.read_text()[-5000:]}" for log in logs if log.exists())
        pytest.fail(f"the block failed (rc={returncode}); kept {root}; ending the cluster: {cleanup}\n{tails}")
    print(f"multi-node block: {wall_s:.0f} s")
    yield ClusterRun(root, state, cleanup, wall_s)
    shutil.rmtree(root, ignore_errors=True)


def test_no_process_of_the_cluster_is_left(cluster):
    assert cluster.cleanup == {"escaped": [], "left": []}


@pytest.mark.parametrize("run", [FIRST, RESUMED], ids=["first", "resumed"])
def test_the_two_ranks_trained_on_different_nodes(cluster, run):
    nodes = {node["node_id"] for node in cluster.state["nodes"]}
    assert len(nodes) == 2
    workers = cluster.rank_workers(run)
    assert sorted(workers) == list(range(RANKS))
    assert {worker["node_id"] for worker in workers.values()} == nodes


def test_papo_metrics_are_finite(cluster):
    records = [r for r in read_jsonl(cluster.root / FIRST / "metrics.jsonl") if "training/global_step" in r["data"]]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        papo = {key: value for key, value in record["data"].items() if key.startswith("papo/")}
        assert {"papo/kl_prcp", "papo/loss", "papo/entropy_ori", "papo/entropy_aug"} <= set(papo)
        assert all(math.isfinite(value) for value in papo.values()), papo
        assert papo["papo/kl_prcp"] > 0


def test_every_rank_masks_a_shared_prompt_alike_from_its_own_node(cluster):
    workers = cluster.rank_workers(FIRST)
    head = next(node["node_id"] for node in cluster.state["nodes"] if node["is_head_node"])
    lines = [line for path in sorted((cluster.root / MASK_LOG).glob("*.jsonl")) for line in read_jsonl(path)]
    digests, ranks = defaultdict(set), defaultdict(set)
    for line in lines:
        worker = workers[line["rank"]]
        assert (line["node_id"], line["pid"]) == (worker["node_id"], worker["pid"]), line
        digests[line["step"], line["uid"]].add((line["pixels"], line["masked"]))
        ranks[line["step"], line["uid"]].add(line["rank"])
    assert {line["rank"] for line in lines} == set(range(RANKS))
    # PAPO_MASK_LOG_DIR was set only in the runtime env: it reached the rank on the second node
    assert any(line["node_id"] != head for line in lines)
    assert {step for step, _ in digests} == {1, 2}  # the first run's steps; the resumed run logs none
    for step in (1, 2):
        assert sum(ranks[key] == set(range(RANKS)) for key in ranks if key[0] == step) > 0, step
    assert all(len(pairs) == 1 for pairs in digests.values()), {k: v for k, v in digests.items() if len(v) > 1}
    assert all(line["rows_blackened"] > 0 for line in lines)  # the masks blacken something


def shards(step_dir: Path) -> list[Path]:
    return [step_dir / "actor" / f"model_world_size_{RANKS}_rank_{rank}.pt" for rank in range(RANKS)]


def test_metrics_and_checkpoint_land_where_the_docs_say(cluster):
    assert (cluster.root / FIRST / "metrics.jsonl").is_file()
    step_2 = cluster.root / CHECKPOINTS / "global_step_2"
    assert all(path.is_file() for path in shards(step_2)), sorted(step_2.rglob("*"))
    assert (step_2 / "data.pt").is_file()


def test_the_resumed_run_continues_the_step_count(cluster):
    records = [r for r in read_jsonl(cluster.root / RESUMED / "metrics.jsonl") if "training/global_step" in r["data"]]
    assert [r["step"] for r in records] == [3]
    assert sorted(path.name for path in (cluster.root / CHECKPOINTS).glob("global_step_*")) == [
        "global_step_2",
        "global_step_3",
    ]
    assert all(path.is_file() for path in shards(cluster.root / CHECKPOINTS / "global_step_3"))
    assert (cluster.root / CHECKPOINTS / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    log = (cluster.root / RESUMED / "run.log").read_text()
    assert f"Resuming from {cluster.root / CHECKPOINTS / 'global_step_2'}, setting global step to 2" in log


def test_the_first_run_masks_unshared_and_the_resumed_run_shares_the_masked_prompt(cluster):
    """The page's first run turns sharing off (so both ranks mask rollouts of one prompt); the resumed run
    keeps the default, the shared masked pass, on two nodes."""
    assert "PAPO masked pass: full sequence per rollout, not shared" in (cluster.root / FIRST / "run.log").read_text()
    assert "PAPO masked pass: shared" in (cluster.root / RESUMED / "run.log").read_text()
