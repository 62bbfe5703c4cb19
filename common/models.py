"""Model transformations the stage runner applies."""

import tf_keras


def _policies(model: tf_keras.Model) -> set[str]:
    names = set()
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            names |= _policies(layer)
        else:
            names.add(layer.dtype_policy.name)
    return names


def as_float32(model: tf_keras.Model) -> tf_keras.Model:
    """`model` itself when every layer computes in float32; else a copy whose
    layers (nested models' too) are float32, with the same weights. Compression
    (pruning, quantization-aware training) only runs in float32, so a model
    trained under mixed_bfloat16 or mixed_float16 is converted on entry."""
    if _policies(model) <= {"float32"}:
        return model

    def clone(layer):
        if isinstance(layer, tf_keras.Model):
            return as_float32(layer)
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = tf_keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
