"""Tools around the PAPO recipe that a GPU training run does not import.

- :mod:`papo_tools.cpu`: the CPU backend that runs verl 0.9.1's real trainer without a GPU (off
  unless ``VERL_PLATFORM=cpu``), used by the tests, the demo and ``SMOKE=1`` on CPU.
- :mod:`papo_tools.compat`: the CPU backend's patches of verl and ``qwen_vl_utils`` (version-guarded
  like :mod:`recipe.papo.compat`).
- :mod:`papo_tools.demo`: tiny random models of each supported family, the counting task, its reward,
  and ``make demo``.
- :mod:`papo_tools.smoke`: ``SMOKE=1 bash scripts/<name>.sh``, a shipped script at tiny scale.
- :mod:`papo_tools.experiments`: the training-dynamics experiment (``make experiment``).

The recipe itself is :mod:`recipe.papo`; nothing under it imports this package.
"""
