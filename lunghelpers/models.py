"""U-Net models for 2D lung segmentation, built as functional Keras 3 models.

A U-Net (Ronneberger et al., 2015) is an encoder-decoder network. The encoder (contracting
path) applies convolutions and max-pooling: each pooling halves the image and the following
convolutions double the number of feature maps, so deeper levels see a larger part of the image
and learn *what* is there. The decoder (expanding path) upsamples back to the input size. Because
pooling throws away *where* things are, each decoder level concatenates the encoder's feature
maps of the same size (the skip connections) before its convolutions: the decoder combines the
deep context with the fine location detail. The last 1x1 convolution turns the feature maps into
one probability per pixel (sigmoid) or one probability per class and pixel (softmax).

A plain CNN classifier ends in dense layers that collapse the image to one label; the U-Net keeps
the spatial layout throughout, so it outputs a mask of the input's size, and the skip connections
let it draw sharp boundaries even from few training images.

Both builders end in a separate `Activation` layer with `dtype="float32"`: under a mixed-precision
policy (`keras.mixed_precision.set_global_policy("mixed_bfloat16")`) every other layer computes
in bfloat16, but the probabilities (and so the loss) stay float32, as the Keras mixed-precision
guide recommends.

With `batch_norm=True` the U-Net's normalisation layers are `FusedBatchNormalization`: Keras's
`BatchNormalization` (same arguments, weights and results) whose training step runs TensorFlow's
fused kernel. Models saved with it load with `keras.models.load_model` once `lunghelpers.models`
is imported (every kit module that loads a model imports it).
"""

import keras
from keras import layers

UPSAMPLING_MODES = ("transpose", "bilinear")


@keras.saving.register_keras_serializable(package="lunghelpers")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step uses TensorFlow's fused kernel.

    Same arguments, weights, outputs and moving-average update as Keras's layer (to float
    rounding). Keras 3 computes a training step's batch statistics, the normalisation and their
    gradients as separate element-wise operations, and in float32 even under a bfloat16 policy;
    TensorFlow's `FusedBatchNormV3` does each in one pass over the activations, in bfloat16 with
    the statistics accumulated in float32. On the 2-core build machine this makes the lab's
    base-16 U-Net with batch norm train faster in float32 and much faster in bfloat16
    (`benchmarks/bench_training.py`). Inference, masks, renormalisation, synchronised statistics,
    inputs that are not (batch, height, width, channels) and other Keras backends use Keras's
    own code.
    """

    def call(self, inputs, training=None, mask=None):
        if (
            not (training and self.trainable)
            or mask is not None
            or self.renorm
            or self.synchronized
            or keras.config.backend() != "tensorflow"
            or len(inputs.shape) != 4
            or self.axis not in (-1, 3)
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones([channels])
        offset = self.beta if self.center else tf.zeros([channels])
        outputs, mean, sample_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(scale, "float32"), offset=tf.cast(offset, "float32"),
            mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=self.epsilon,
            data_format="NHWC", is_training=True,
        )
        # The kernel returns the unbiased (n - 1) variance; Keras averages the biased one.
        count = tf.cast(tf.size(inputs) // channels, "float32")
        variance = sample_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def simple_unet(input_shape=(128, 128, 1)):
    """Build the CT assignment's simplified U-Net.

    Only `Conv2D`, `MaxPool2D`, `UpSampling2D`, `Dropout` and concatenation are used; every
    convolution is 3x3 with ReLU and `same` padding unless stated:

    ```
    input (H, W, C)
    level 1: Conv2D 64                          -> skip 1 (H, W, 64)
             MaxPool2D 2x2                       (H/2, W/2)
    level 2: Conv2D 128                         -> skip 2 (H/2, W/2, 128)
             MaxPool2D 2x2                       (H/4, W/4)
    bottom:  Conv2D 256                          (H/4, W/4, 256)
    up 2:    UpSampling2D 2x2 + Conv2D 128 2x2 ("up-conv"), concatenate skip 2, Conv2D 128
    up 1:    UpSampling2D 2x2 + Conv2D 64 2x2 ("up-conv"), concatenate skip 1, Conv2D 64
    Dropout 0.5, Conv2D 1 1x1, sigmoid           (H, W, 1)
    ```

    The assignment's "filters 64/128/256 down and 256/128/64 up" names the same 256-filter
    level twice: with two poolings there are three resolutions, so the 256-filter convolution
    at the bottom is the last step down and the first step up at once. It is built once; the upward path then
    has two levels, 128 and 64, each starting with an up-conv (upsampling doubles the size, the
    2x2 convolution mixes the upsampled features and halves their number, as in the original
    U-Net).

    For a 128x128x1 input the model has 902,593 parameters. Height and width must be divisible
    by 4 so the two poolings and two upsamplings give back the input size.
    """
    _check_input_shape(input_shape, depth=2)
    inputs = keras.Input(shape=input_shape, name="image")

    level_1 = layers.Conv2D(64, 3, padding="same", activation="relu", name="down_1_conv")(inputs)
    x = layers.MaxPool2D(2, name="down_1_pool")(level_1)
    level_2 = layers.Conv2D(128, 3, padding="same", activation="relu", name="down_2_conv")(x)
    x = layers.MaxPool2D(2, name="down_2_pool")(level_2)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="bottom_conv")(x)

    x = layers.UpSampling2D(2, name="up_2_upsample")(x)
    x = layers.Conv2D(128, 2, padding="same", activation="relu", name="up_2_upconv")(x)
    x = layers.Concatenate(name="up_2_concat")([x, level_2])
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="up_2_conv")(x)

    x = layers.UpSampling2D(2, name="up_1_upsample")(x)
    x = layers.Conv2D(64, 2, padding="same", activation="relu", name="up_1_upconv")(x)
    x = layers.Concatenate(name="up_1_concat")([x, level_1])
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="up_1_conv")(x)

    x = layers.Dropout(0.5, name="dropout")(x)
    x = layers.Conv2D(1, 1, name="head")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="simple_unet")


def unet(
    input_shape,
    base_filters=8,
    depth=4,
    convs_per_level=2,
    dropout_rate=0.0,
    batch_norm=False,
    upsampling="transpose",
    n_classes=1,
    name=None,
    batch_norm_momentum=0.99,
):
    """Build a configurable U-Net (the lab's model and the poster's).

    Level `l` (0 at full resolution, `depth` at the bottleneck) has `base_filters * 2**l`
    filters. Each level is a block of `convs_per_level` times
    `Conv2D 3x3 (same) -> FusedBatchNormalization (if batch_norm) -> ReLU`; the convolution has no
    bias when batch normalisation follows, because the normalisation's own offset (beta) makes
    a bias redundant. The encoder has `depth` blocks each followed by a 2x2 max-pool, then the
    bottleneck block; each decoder level upsamples by 2, halves the filters, concatenates the
    encoder block of the same size and runs a block.

    Upsampling:
    - `"transpose"`: `Conv2DTranspose(filters, 2x2, strides 2)`, a learned upsampling (poster).
    - `"bilinear"`: `UpSampling2D(bilinear)` then `Conv2D(filters, 2x2, same)`. It has the same
      parameter count as the transposed convolution and avoids its checkerboard artefacts.

    Dropout: when `dropout_rate > 0`, a `SpatialDropout2D(dropout_rate)` follows every block
    (encoder, bottleneck and decoder). Neighbouring pixels of one feature map are strongly
    correlated, so element-wise `Dropout` is largely undone by the neighbours; dropping whole
    feature maps is the regulariser that works for convolutional features (Tompson et al.,
    2015). Every block gets it so that the effect of the one `dropout_rate` switch (lab task 1c)
    is spread over the whole network.

    Batch normalisation keeps moving averages of each channel's mean and variance for inference,
    updated every training step as `moving = momentum * moving + (1 - momentum) * batch`.
    `batch_norm_momentum` is Keras's 0.99 by default; PyTorch's default corresponds to 0.9. With
    0.99 the averages need several hundred steps to forget their initial values (0.99**300 is
    about 0.05), so a run of only a few dozen steps (a tiny training set, a quick test) predicts
    with statistics that do not describe its data; 0.9 settles within about 30 steps.

    Head: a 1x1 convolution to `n_classes` channels and a separate float32 `Activation`:
    sigmoid for `n_classes=1` (binary mask), softmax over the channels for `n_classes > 1`
    (background, patient's right lung, left lung).

    Height and width of `input_shape` must be divisible by `2**depth` (`None` allows any size
    at call time). With the defaults and a 1-channel input the model has 485,673 parameters.
    """
    _check_input_shape(input_shape, depth)
    if not isinstance(base_filters, int) or base_filters <= 0:
        raise ValueError(f"base_filters must be a positive integer, got {base_filters!r}.")
    if not isinstance(convs_per_level, int) or convs_per_level <= 0:
        raise ValueError(f"convs_per_level must be a positive integer, got {convs_per_level!r}.")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}.")
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be an integer >= 1, got {n_classes!r}.")
    if not 0 < batch_norm_momentum < 1:
        raise ValueError(f"batch_norm_momentum must be in (0, 1), got {batch_norm_momentum!r}.")

    def block(x, filters, prefix):
        for index in range(1, convs_per_level + 1):
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=not batch_norm, name=f"{prefix}_conv_{index}"
            )(x)
            if batch_norm:
                x = FusedBatchNormalization(
                    momentum=batch_norm_momentum, name=f"{prefix}_bn_{index}"
                )(x)
            x = layers.Activation("relu", name=f"{prefix}_relu_{index}")(x)
        if dropout_rate > 0:
            x = layers.SpatialDropout2D(dropout_rate, name=f"{prefix}_dropout")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"down_{level}")
        skips.append(x)
        x = layers.MaxPool2D(2, name=f"down_{level}_pool")(x)
    x = block(x, base_filters * 2**depth, "bottleneck")

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up_{level}_transpose")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up_{level}_upsample")(x)
            x = layers.Conv2D(filters, 2, padding="same", name=f"up_{level}_upconv")(x)
        x = layers.Concatenate(name=f"up_{level}_concat")([x, skips[level]])
        x = block(x, filters, f"up_{level}")

    x = layers.Conv2D(n_classes, 1, name="head")(x)
    activation = "sigmoid" if n_classes == 1 else "softmax"
    outputs = layers.Activation(activation, dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name or f"unet_base{base_filters}_depth{depth}")


def _check_input_shape(input_shape, depth):
    """Raise ValueError unless input_shape is (height, width, channels) fitting `depth` poolings."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}.")
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got input_shape={input_shape!r}."
        )
    factor = 2**depth
    for size in input_shape[:2]:
        if size is not None and size % factor != 0:
            raise ValueError(
                f"input_shape={tuple(input_shape)!r}: height and width must be divisible by "
                f"2**depth = {factor} so that {depth} poolings and upsamplings restore the size."
            )
