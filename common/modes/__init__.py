"""Layer 7, modes: one module per --mode, and the dispatcher launch.py calls.

`dispatch.run(options)` checks what it can before TensorFlow does any work,
creates the strategy (before any other TensorFlow op), and hands over to
the module named after the mode: `train`, `eval`, `tune`, `export`,
`predict`. Each provides `run(experiment, options, config, strategy)` and
returns what it wrote (metrics.json, eval.json, best_hparams.json, ...).

Imports: every layer below and `experiments` (the contract: an
experiment's module by name). A mode never imports another mode: what two
modes share lives in a layer below (a sweep's trial is training/run.py's
train_run, as a plain run is).
"""
