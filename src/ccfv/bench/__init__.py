"""The transfer benchmark (``ccfv bench``): leave one task out, pre-train, fine-tune, score.

- :mod:`ccfv.bench.config`: the config file (tasks, architectures, sizes, budgets, seeds).
- :mod:`ccfv.bench.tasks`: tasks in one input format with a fixed split, cached.
- :mod:`ccfv.bench.train`: networks, pre-training / fine-tuning loops, Dice (MONAI).
- :mod:`ccfv.bench.run`: the stages, cached and resumable.
- :mod:`ccfv.bench.report`: statistics, tables, plots, ``summary.json``.
"""
