"""CPU-scale experiments that show PAPO's training dynamics through verl's real trainer.

``python -m papo_tools.experiments.dynamics --out DIR [--quick] [--seeds N]`` (docs/dynamics.md).
"""
