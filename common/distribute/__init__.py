"""Layer 3, distribution: strategies and the clusters they span.

Owns the one strategy factory (`strategy.get_strategy`, logical CPU
devices, which worker is the chief, the weights checksum), TF_CONFIG's
checked form (`tf_config`), multi-worker start-up with peers waited for
(`clusters`), Slurm job steps as clusters (`slurm`), the roles of a sweep
across processes (`sweep_cluster`: Keras Tuner's chief and workers), and
the helpers that run local processes (`processes`): a training cluster
(`local_cluster`) and a sweep's chief and workers (`local_sweep`), commands
of their own (`python -m common.distribute.local_cluster`, `... .local_sweep`).

Imports: `common.errors`, `common.config` (the strategy names) and this
layer's own modules.
"""
