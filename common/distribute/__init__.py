"""Layer 3, distribution: strategies and the clusters they span.

Owns the one strategy factory (`strategy.get_strategy`, logical CPU
devices, which worker is the chief, the weights checksum), TF_CONFIG's
checked form (`tf_config`), multi-worker start-up with peers waited for
(`clusters`), Slurm job steps as clusters (`slurm`), and the helper that
runs a cluster of local worker processes (`local_cluster`, a command of its
own: `python -m common.distribute.local_cluster`).

Imports: `common.errors`, `common.config` (the strategy names) and this
layer's own modules.
"""
