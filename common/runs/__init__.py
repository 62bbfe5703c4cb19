"""Layer 4, run folders: how a run is kept on disk and read back.

Owns the folder layout's files (`files`: strict JSON written atomically,
history.csv, checked names), the one-process lock (`lock`), a run folder's
life from claim to metrics.json (`folder.RunFolder`), finished runs as
readers see them (`saved`: found, their declared models loaded), the
report over every run (`report`, a command of its own:
`python -m common.runs.report`), and where a bug's traceback goes
(`crash`).

Imports: `common.errors`, `common.config` (RunOptions, SweepTrial),
`common.distribute` (which process is the chief) and this layer's own
modules.
"""
