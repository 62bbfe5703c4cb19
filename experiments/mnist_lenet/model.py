"""Classic LeNet-5 (LeCun et al., 1998) with ReLU and max pooling."""

import tf_keras
from tf_keras import layers


def build_model(config: dict, image_shape: tuple[int, ...],
                num_classes: int) -> tf_keras.Model:
    """conv 6@5x5 (same) - pool - conv 16@5x5 - pool - 120 - 84 - classes.

    Takes raw pixel values (0..255) and returns logits: the scaling lives in
    the model so a saved model serves raw images.
    """
    dropout = config["dropout"]
    inputs = tf_keras.Input(shape=image_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    # float32 logits under mixed precision too: a stable softmax and loss.
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return tf_keras.Model(inputs, outputs, name="lenet5")
