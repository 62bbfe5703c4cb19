"""Layer 5, training: stages, the stage runner, and one run of an experiment.

Owns what an experiment declares about its training (`stages.Stage`,
`StageContext`, `FinishContext`), the runner of any list of stages with
one resume layout (`stage_runner`), the callbacks every stage trains with
(`callbacks`), the optimizer and compile() (`optimizers`), numeric
precision (`precision`), exact evaluation on every strategy (`evaluation`),
and one whole training run, data to metrics.json (`run.train_run`).

Imports: `common.errors`, `common.config`, `common.data`,
`common.distribute`, `common.runs` and this layer's own modules. Never
`experiments`: an experiment's module is passed in.
"""
