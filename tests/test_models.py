"""Tests for lunghelpers.models: shapes, ranges, parameter counts, validation, mixed precision."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from lunghelpers import models


def conv_parameters(kernel, in_channels, out_channels, bias=True):
    """Weights of a Conv2D / Conv2DTranspose layer: kernel^2 * in * out (+ out biases)."""
    return kernel * kernel * in_channels * out_channels + (out_channels if bias else 0)


def images(shape, count=2):
    return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


def test_simple_unet_parameter_count_follows_the_layer_formula():
    expected = (
        conv_parameters(3, 1, 64)  # down 1
        + conv_parameters(3, 64, 128)  # down 2
        + conv_parameters(3, 128, 256)  # bottom
        + conv_parameters(2, 256, 128)  # up-conv 2
        + conv_parameters(3, 128 + 128, 128)  # conv after concatenation with skip 2
        + conv_parameters(2, 128, 64)  # up-conv 1
        + conv_parameters(3, 64 + 64, 64)  # conv after concatenation with skip 1
        + conv_parameters(1, 64, 1)  # 1x1 head
    )
    assert expected == 902_593
    assert models.simple_unet((128, 128, 1)).count_params() == expected


def test_simple_unet_uses_only_the_allowed_layers_and_keeps_the_input_size():
    model = models.simple_unet((32, 32, 1))
    allowed = {"InputLayer", "Conv2D", "MaxPooling2D", "UpSampling2D", "Dropout",
               "Concatenate", "Activation"}
    assert {type(layer).__name__ for layer in model.layers} <= allowed
    assert model.get_layer("dropout").rate == 0.5
    assert model.get_layer("probabilities").dtype_policy.name == "float32"
    output = model.predict(images((32, 32, 1)), verbose=0)
    assert output.shape == (2, 32, 32, 1)
    assert output.min() >= 0 and output.max() <= 1


def test_simple_unet_rejects_a_size_not_divisible_by_4():
    with pytest.raises(ValueError, match="input_shape"):
        models.simple_unet((30, 32, 1))


def unet_parameters(in_channels, base_filters, depth, convs_per_level, n_classes, batch_norm):
    """Parameter count of models.unet, layer by layer (BN adds gamma, beta, mean and variance)."""

    def block(in_channels, filters):
        total = 0
        for _ in range(convs_per_level):
            total += conv_parameters(3, in_channels, filters, bias=not batch_norm)
            total += 4 * filters if batch_norm else 0
            in_channels = filters
        return total

    total, channels = 0, in_channels
    for level in range(depth + 1):
        total += block(channels, base_filters * 2**level)
        channels = base_filters * 2**level
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        total += conv_parameters(2, channels, filters)  # 2x2 up-conv or transposed conv
        total += block(2 * filters, filters)  # after concatenation with the skip
        channels = filters
    return total + conv_parameters(1, channels, n_classes)


def test_unet_default_parameter_count():
    # Hand check of base 8, depth 4: encoder 664 + 3,488 + 13,888 + 55,424, bottleneck 221,440,
    # decoder (up-conv + block) 32,832 + 110,720 + 8,224 + 27,712 + 2,064 + 6,944 + 520 + 1,744,
    # head 9.
    assert unet_parameters(1, 8, 4, 2, 1, batch_norm=False) == 485_673
    assert models.unet((64, 64, 1)).count_params() == 485_673


@pytest.mark.parametrize(
    "options",
    [
        dict(base_filters=8, depth=4, batch_norm=True, n_classes=3),
        dict(base_filters=4, depth=2, convs_per_level=1, upsampling="bilinear"),
        dict(base_filters=16, depth=3, convs_per_level=3, batch_norm=True, dropout_rate=0.2),
    ],
)
def test_unet_parameter_count_matches_the_formula(options):
    model = models.unet((32, 32, 1), **options)
    expected = unet_parameters(
        1,
        options["base_filters"],
        options["depth"],
        options.get("convs_per_level", 2),
        options.get("n_classes", 1),
        options.get("batch_norm", False),
    )
    assert model.count_params() == expected


@pytest.mark.parametrize(
    "input_shape, options",
    [
        ((32, 32, 1), dict()),
        ((32, 48, 1), dict(depth=3, upsampling="bilinear")),
        ((16, 16, 2), dict(depth=2, batch_norm=True, dropout_rate=0.2)),
    ],
)
def test_unet_sigmoid_output_keeps_the_input_size_and_lies_in_0_1(input_shape, options):
    output = models.unet(input_shape, **options).predict(images(input_shape), verbose=0)
    assert output.shape == (2, *input_shape[:2], 1)
    assert output.min() >= 0 and output.max() <= 1


def test_unet_softmax_output_sums_to_one_per_pixel():
    output = models.unet((32, 32, 1), n_classes=3, batch_norm=True).predict(
        images((32, 32, 1)), verbose=0
    )
    assert output.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(output.sum(axis=-1), 1.0, atol=1e-5)


def test_unet_layers_follow_the_options():
    model = models.unet((32, 32, 1), depth=2, batch_norm=True, dropout_rate=0.2)
    layer_types = [type(layer).__name__ for layer in model.layers]
    # One spatial dropout per block: 2 encoder blocks, the bottleneck, 2 decoder blocks.
    assert layer_types.count("SpatialDropout2D") == 5
    assert layer_types.count("Conv2DTranspose") == 2
    assert model.get_layer("down_0_conv_1").use_bias is False
    assert model.get_layer("probabilities").dtype_policy.name == "float32"

    plain = models.unet((32, 32, 1), depth=2, upsampling="bilinear")
    plain_types = [type(layer).__name__ for layer in plain.layers]
    assert "SpatialDropout2D" not in plain_types
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    assert plain_types.count("UpSampling2D") == 2
    assert plain.get_layer("down_0_conv_1").use_bias is True


def test_unet_batch_norm_momentum_reaches_every_normalisation_layer():
    def momenta(model):
        return {layer.momentum for layer in model.layers if isinstance(layer, models.FusedBatchNormalization)}

    assert momenta(models.unet((32, 32, 1), depth=2, batch_norm=True)) == {0.99}
    assert momenta(models.unet((32, 32, 1), depth=2, batch_norm=True, batch_norm_momentum=0.9)) == {0.9}


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="the fused kernel is TensorFlow's")
@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_fused_batch_norm_trains_like_keras_batch_norm(policy, tolerance):
    """Outputs, input and weight gradients and the moving averages match Keras's own layer."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 8, 8, 6)).astype("float32"))
    keras.mixed_precision.set_global_policy(policy)
    try:
        fused = models.FusedBatchNormalization(momentum=0.9)
        plain = keras.layers.BatchNormalization(momentum=0.9)
        for layer in (fused, plain):
            layer.build(x.shape)
        fused.gamma.assign(rng.normal(1.0, 0.2, 6).astype("float32"))
        fused.beta.assign(rng.normal(0.0, 0.2, 6).astype("float32"))
        plain.set_weights(fused.get_weights())
        results = []
        for layer in (fused, plain):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.cast(layer(tf.cast(x, layer.compute_dtype), training=True), "float32")
                loss = tf.reduce_sum(y**2 * tf.range(6, dtype="float32"))
            results.append((y, *tape.gradient(loss, [x, layer.gamma, layer.beta]),
                            layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert fused.compute_dtype == ("bfloat16" if policy == "mixed_bfloat16" else "float32")
    for mine, theirs in zip(*results):
        scale = max(1.0, float(np.abs(np.asarray(theirs)).max()))
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), atol=tolerance * scale)
    # The moving variance moved towards the biased batch variance (9 here), not the unbiased one.
    assert np.abs(fused.moving_variance.numpy() - plain.moving_variance.numpy()).max() < 1e-4


def test_fused_batch_norm_uses_keras_code_outside_training():
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype("float32")
    fused = models.FusedBatchNormalization()
    plain = keras.layers.BatchNormalization()
    fused.build(x.shape)
    plain.build(x.shape)
    fused.moving_mean.assign([1.0, -1.0, 0.5])
    plain.set_weights(fused.get_weights())
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-6)
    # Not (batch, height, width, channels): Keras's own training step.
    sequence = x[:, :, 0]
    np.testing.assert_allclose(models.FusedBatchNormalization()(sequence, training=True),
                               keras.layers.BatchNormalization()(sequence, training=True), atol=1e-5)


def test_unet_with_batch_norm_saves_and_loads_in_safe_mode(tmp_path):
    model = models.unet((32, 32, 1), depth=2, batch_norm=True, batch_norm_momentum=0.9)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(images((32, 32, 1)), np.ones((2, 32, 32, 1), "float32"), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    assert isinstance(loaded.get_layer("down_0_bn_1"), models.FusedBatchNormalization)
    assert loaded.get_layer("down_0_bn_1").momentum == 0.9
    np.testing.assert_allclose(loaded.predict(images((32, 32, 1)), verbose=0),
                               model.predict(images((32, 32, 1)), verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(input_shape=(60, 64, 1)), "input_shape"),
        (dict(input_shape=(64, 64)), "input_shape"),
        (dict(input_shape=(64, 64, 1), depth=0), "depth"),
        (dict(input_shape=(64, 64, 1), base_filters=0), "base_filters"),
        (dict(input_shape=(64, 64, 1), convs_per_level=0), "convs_per_level"),
        (dict(input_shape=(64, 64, 1), dropout_rate=1.0), "dropout_rate"),
        (dict(input_shape=(64, 64, 1), dropout_rate=-0.1), "dropout_rate"),
        (dict(input_shape=(64, 64, 1), upsampling="nearest"), "upsampling"),
        (dict(input_shape=(64, 64, 1), n_classes=0), "n_classes"),
        (dict(input_shape=(64, 64, 1), batch_norm=True, batch_norm_momentum=1.0), "batch_norm_momentum"),
    ],
)
def test_unet_validates_its_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        models.unet(**options)


def test_mixed_bfloat16_policy_keeps_float32_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for model in (
            models.simple_unet((16, 16, 1)),
            models.unet((16, 16, 1), depth=2, batch_norm=True, n_classes=3),
        ):
            assert model.get_layer("down_1_conv" if model.name == "simple_unet"
                                   else "down_0_conv_1").compute_dtype == "bfloat16"
            output = model(images((16, 16, 1)))
            assert keras.backend.standardize_dtype(output.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
