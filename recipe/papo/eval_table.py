"""The per-benchmark avg@N table of a PAPO evaluation run (avg@8 as in Table 1 of arXiv 2507.06448).

``scripts/eval_papo.sh`` runs verl validation only (``trainer.val_only=True``) with
``actor_rollout_ref.rollout.val_kwargs.n=N`` over the evaluation parquets, whose rows carry
``data_source = "papo/<benchmark>"``, and with verl's ``file`` logger on. verl 0.9.1 then writes one
JSON line ``{"step": <global step>, "data": {<metric>: <value>, ...}}`` per logged step to
``$VERL_FILE_LOGGER_PATH`` (default ``$VERL_FILE_LOGGER_ROOT/<project_name>/<experiment_name>.jsonl``,
root defaulting to the working directory).

The accuracy of a benchmark is verl's metric ``val-core/papo/<benchmark>/acc/mean@N``: per question,
the mean of the reward's ``acc`` over the N samples (a failed generation counts as 0), then the mean
over questions; that is the paper's avg@N. Group averages are the plain mean of their benchmarks, and
``overall`` is the mean of all benchmarks (9 when complete), not the mean of the two group averages.

CLI::

    python -m recipe.papo.eval_table --metrics <file logger JSONL> --out <dir> [--n 8]

writes ``<dir>/eval_table.md`` and ``<dir>/eval_table.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.papo.prompt import (
    DATA_SOURCE_PREFIX,
    EVAL_BENCHMARKS,
    GENERAL_BENCHMARKS,
    VISION_DEPENDENT_BENCHMARKS,
    benchmark_group,
)

# verl 0.9.1 (trainer/ppo/v1/trainer_base.py::_val_metrics_update) names the core validation metric
# "val-core/<data_source>/<var>/mean@<n>", <var> being "acc" when the reward returns it.
_CORE_MEAN_METRIC = re.compile(r"^val-core/(?P<data_source>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
VAL_CORE_PREFIX = "val-core/"
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("general", GENERAL_BENCHMARKS),
    ("vision-dependent", VISION_DEPENDENT_BENCHMARKS),
    ("overall", EVAL_BENCHMARKS),
)
MARKDOWN_FILE = "eval_table.md"
JSON_FILE = "eval_table.json"


@dataclass(frozen=True)
class BenchmarkRow:
    """One benchmark: its group and avg@n accuracy as a fraction in [0, 1] (None when not evaluated)."""

    benchmark: str
    group: str
    accuracy: float | None


@dataclass(frozen=True)
class AverageRow:
    """A group (or ``overall``) average over the benchmarks of the group that were evaluated."""

    name: str
    accuracy: float | None
    present: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class EvalTable:
    """avg@n per benchmark plus the ``general``, ``vision-dependent`` and ``overall`` averages."""

    n: int
    step: int | None
    benchmarks: tuple[BenchmarkRow, ...]
    averages: tuple[AverageRow, ...]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(row.benchmark for row in self.benchmarks if row.accuracy is None)


def benchmark_accuracies(metrics: Mapping[str, Any], n: int) -> dict[str, float]:
    """avg@n per benchmark from one step's validation metrics (keys as verl logs them).

    Raises ``ValueError`` on a core metric of a data source that is not ``papo/<one of the nine
    benchmarks>``, on a core metric that is not ``acc`` (the run did not use the PAPO reward), on a
    sample count other than ``n``, and when no benchmark accuracy is present at all.
    """
    accuracies: dict[str, float] = {}
    for key, value in metrics.items():
        match = _CORE_MEAN_METRIC.match(key)
        if match is None:
            continue
        source, var, metric_n = match["data_source"], match["var"], int(match["n"])
        benchmark = source[len(DATA_SOURCE_PREFIX) :] if source.startswith(DATA_SOURCE_PREFIX) else None
        if benchmark not in EVAL_BENCHMARKS:
            raise ValueError(
                f"metric {key!r}: data source {source!r} is not an evaluation benchmark; expected "
                f"{DATA_SOURCE_PREFIX!r} + one of {', '.join(EVAL_BENCHMARKS)}. Evaluate only the "
                "prepared evaluation parquets (the training-time validation set is not a benchmark)."
            )
        if var != "acc":
            raise ValueError(
                f"metric {key!r}: verl's core validation metric for {source!r} is {var!r}, not 'acc', so the "
                "reward did not report accuracy. Run with "
                "reward.custom_reward_function.path=pkg://recipe.papo.reward."
            )
        if metric_n != n:
            raise ValueError(
                f"metric {key!r} averages {metric_n} samples per question but avg@{n} was requested; run "
                f"with actor_rollout_ref.rollout.val_kwargs.n={n} or pass --n {metric_n}."
            )
        accuracies[benchmark] = float(value)
    if not accuracies:
        raise ValueError(
            f"no benchmark accuracy in the metrics: expected keys 'val-core/{DATA_SOURCE_PREFIX}<benchmark>/acc/"
            f"mean@{n}'."
        )
    return accuracies


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_table(accuracies: Mapping[str, float], n: int, step: int | None = None) -> EvalTable:
    """Rows for all nine benchmarks (missing ones with ``accuracy=None``) and the three averages."""
    unknown = sorted(set(accuracies) - set(EVAL_BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; known: {', '.join(EVAL_BENCHMARKS)}")
    rows = tuple(BenchmarkRow(name, benchmark_group(name), accuracies.get(name)) for name in EVAL_BENCHMARKS)
    averages = []
    for group, members in GROUPS:
        present = tuple(name for name in members if name in accuracies)
        missing = tuple(name for name in members if name not in accuracies)
        averages.append(AverageRow(group, _mean([accuracies[name] for name in present]), present, missing))
    return EvalTable(n=n, step=step, benchmarks=rows, averages=tuple(averages))


def table_from_metrics(metrics: Mapping[str, Any], n: int, step: int | None = None) -> EvalTable:
    """:func:`build_table` of :func:`benchmark_accuracies`."""
    return build_table(benchmark_accuracies(metrics, n), n, step)


def _percent(accuracy: float | None) -> str:
    return "missing" if accuracy is None else f"{100.0 * accuracy:.2f}"


def render_markdown(table: EvalTable) -> str:
    """The table in Markdown, accuracies in percent with two decimals (as in the paper's Table 1)."""
    metric = f"avg@{table.n}"
    step = "" if table.step is None else f" (validation at step {table.step})"
    lines = [
        f"# PAPO evaluation: {metric} accuracy (%){step}",
        "",
        f"{metric}: per question, the mean accuracy of {table.n} sampled responses; then the mean over "
        "questions. Group averages are the mean of their benchmarks; overall is the mean of all benchmarks.",
        "",
        f"| benchmark | group | {metric} |",
        "|---|---|---:|",
    ]
    lines += [f"| {row.benchmark} | {row.group} | {_percent(row.accuracy)} |" for row in table.benchmarks]
    for average in table.averages:
        count = f"{len(average.present)} of {len(average.present) + len(average.missing)} benchmarks"
        value = _percent(average.accuracy)
        lines.append(f"| **{average.name}** | {count} | **{value}** |")
    if table.missing:
        lines += [
            "",
            f"Missing benchmarks (no metric logged): {', '.join(table.missing)}. "
            "Averages cover the benchmarks present only.",
        ]
    return "\n".join(lines) + "\n"


def to_json_dict(table: EvalTable) -> dict[str, Any]:
    """JSON-ready dict; accuracies are fractions in [0, 1] (``null`` when missing)."""
    return {
        "metric": f"avg@{table.n}",
        "n": table.n,
        "step": table.step,
        "benchmarks": {row.benchmark: {"group": row.group, "accuracy": row.accuracy} for row in table.benchmarks},
        "averages": {
            average.name: {
                "accuracy": average.accuracy,
                "benchmarks": list(average.present),
                "missing": list(average.missing),
            }
            for average in table.averages
        },
        "missing": list(table.missing),
    }


def render_json(table: EvalTable) -> str:
    return json.dumps(to_json_dict(table), indent=2) + "\n"


def read_validation_metrics(path: Path) -> tuple[int, dict[str, Any]]:
    """``(step, metrics)`` of the last record of a verl ``file`` logger JSONL holding validation metrics."""
    if not path.is_file():
        raise FileNotFoundError(
            f"metrics file {path} does not exist; run the evaluation with trainer.logger including 'file' and "
            "VERL_FILE_LOGGER_PATH pointing at this file."
        )
    found: tuple[int, dict[str, Any]] | None = None
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step, data = int(record["step"]), record["data"]
                if not isinstance(data, dict):
                    raise TypeError(f"'data' is a {type(data).__name__}")
            except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
                raise ValueError(
                    f"{path}:{number}: not a verl file-logger record {{'step': ..., 'data': {{...}}}} ({exc!r})"
                ) from exc
            if any(key.startswith(VAL_CORE_PREFIX) for key in data):
                found = (step, data)
    if found is None:
        raise ValueError(f"{path}: no record with validation metrics ('{VAL_CORE_PREFIX}...'); did validation run?")
    return found


def write_table(table: EvalTable, out_dir: Path) -> tuple[Path, Path]:
    """Write ``eval_table.md`` and ``eval_table.json`` into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, json_path = out_dir / MARKDOWN_FILE, out_dir / JSON_FILE
    markdown.write_text(render_markdown(table), encoding="utf-8")
    json_path.write_text(render_json(table), encoding="utf-8")
    return markdown, json_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.papo.eval_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=Path, required=True, help="JSONL written by verl's 'file' logger")
    parser.add_argument("--out", type=Path, required=True, help=f"directory for {MARKDOWN_FILE} and {JSON_FILE}")
    parser.add_argument("--n", type=int, default=8, help="samples per question (val_kwargs.n); default 8")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    try:
        step, metrics = read_validation_metrics(args.metrics)
        table = table_from_metrics(metrics, args.n, step)
    except (OSError, ValueError) as exc:
        print(f"eval_table: error: {exc}", file=sys.stderr)
        return 1
    markdown, json_path = write_table(table, args.out)
    sys.stdout.write(render_markdown(table))
    print(f"wrote {markdown} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
