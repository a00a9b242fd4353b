"""Training-time augmentation as seeded Keras layers (active only with ``training=True``).

Living in the model rather than the loader, augmentation runs on the accelerator, is the
same for every loader engine and backend, and its random state is checkpointed with the
model weights, so a resumed run continues the same random stream.
"""

from __future__ import annotations

import keras


def augmentation_layers(cfg) -> list[keras.layers.Layer]:
    """The augmentation layers a stage-1 config asks for (float32, on 0..255 pixels)."""
    seed = int(cfg["seed"])
    size = int(cfg["input_size"])
    layers: list[keras.layers.Layer] = []
    if cfg["random_flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 1, dtype="float32",
                                              name="aug_flip"))
    if cfg["random_crop"]:
        shift = float(cfg["random_crop"]) / size
        layers.append(keras.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 2,
                                                     dtype="float32", name="aug_translate"))
    if cfg["random_brightness"]:
        layers.append(keras.layers.RandomBrightness(float(cfg["random_brightness"]), value_range=(0, 255),
                                                    seed=seed + 3, dtype="float32", name="aug_brightness"))
    if cfg["random_contrast"]:
        layers.append(keras.layers.RandomContrast(float(cfg["random_contrast"]), value_range=(0, 255),
                                                  seed=seed + 4, dtype="float32", name="aug_contrast"))
    return layers
