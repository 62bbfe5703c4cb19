"""Layer 6, deployment: a trained model taken out to serve.

Owns the serving export (`serving`: SavedModel in TensorFlow Serving's
layout with a raw-pixels signature, float TFLite, labels.txt), TFLite
conversion and measurement (`tflite`: accuracy through the interpreter,
sizes, sparsity, latency), and predictions on image files (`predict`).

Imports: `common.errors`, `common.data` (image decoding, class names),
`common.runs` (declared models), `common.training` (exact scores, float32
copies) and this layer's own modules.
"""
