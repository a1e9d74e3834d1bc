"""Hand-weighted models whose masks are known pixel by pixel, shared by the predict and evaluate tests."""

import keras
import numpy as np

from lunghelpers import paths

SIZE = 32
MONTGOMERY = paths.PROJECT_ROOT.parent / "shared" / "data" / "montgomery"


def threshold_model(size=SIZE):
    """Lung where the normalised intensity is above 0.5: sigmoid(20 x - 10) > 0.5."""
    return keras.Sequential([
        keras.Input((size, size, 1)),
        keras.layers.Conv2D(1, 1, activation="sigmoid",
                            kernel_initializer=keras.initializers.Constant(20.0),
                            bias_initializer=keras.initializers.Constant(-10.0)),
    ])


def left_right_model(size=SIZE):
    """Softmax over (background, right lung, left lung): logits (0, 2 - 10 x, 10 x - 8).

    x = 0 (dark) -> class 1, x = 0.5 (mid-grey) -> background, x = 1 (bright) -> class 2.
    """
    layer = keras.layers.Conv2D(3, 1, activation="softmax")
    model = keras.Sequential([keras.Input((size, size, 1)), layer])
    layer.set_weights([np.array([0.0, -10.0, 10.0]).reshape(1, 1, 1, 3), np.array([0.0, 2.0, -8.0])])
    return model
