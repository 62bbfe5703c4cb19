"""Layer 1, configuration: what a command asks for, checked before any work.

Owns the hyperparameters and their valid ranges (`hparams`), launch.py's
flags as one value (`options.RunOptions`) and a sweep trial's own state
(`options.SweepTrial`), the names a user chooses from (`choices`), and the
resolution of an experiment's hyperparameters from its defaults, a file,
`--hparams` and the dedicated flags (`resolve`).

Imports: `common.errors` only; no TensorFlow, so launch.py can check its
flags before TensorFlow loads.
"""
