"""Layer 2, data: where examples come from and the streams a model reads.

Owns the sources (`sources.load`: TFDS, the datasets' original files in
`local_files`, image folders in `image_folder` with its decoding cache
`image_cache` and cleaning report `image_report`), the image decoding and
conversion shared with prediction (`images`), what a loaded dataset is
(`splits.Splits`, `splits.Pipelines`) and the tf.data pipelines
(`pipeline`: training batches, exact evaluation batches, augmentation).

Imports: `common.errors` and this layer's own modules; nothing of training,
strategies or run folders (a pipeline is told the number of workers).
"""
