"""``SMOKE=1 bash scripts/<name>.sh``: a script's own configuration, tiny, on the machine at hand.

A smoke run composes exactly what the script composes, then changes only sizes (batch and
mini-batch sizes, prompt/response lengths, pixel bounds, steps, workers, memory utilisation), the
model (a tiny random model of the script's model family, built in code and loaded through
``from_pretrained``) and the task (the built-in counting task and its reward), and runs 2 training
steps plus one validation pass through ``recipe.papo.main_papo``. Everything else stays the script's:
algorithm, losses, clip ratios, reference KL, group filtering, remove-padding, micro-batch size,
rollout n, validation n, logger.

Modules: :mod:`.sizes` (the overrides), :mod:`.checks` (the health checks on the logged metrics),
:mod:`.run` (compose, run and check: ``python -m papo_tools.smoke``, which ``scripts/common.sh``
runs).
"""
