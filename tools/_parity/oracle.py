"""The oracle: the official Model Garden MoViNet, built, given weights, run and restored.

This module owns building ``movinet_model.MovinetClassifier`` in the released base or stream
configuration, giving every variable a seeded non-trivial value, calibrating the BN moving
statistics so that activations do not drift with depth, running the network (XLA-compiled and
eager; a stream model on the whole clip and frame by frame) and checking that the saved
checkpoint restores to the same logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from .variants import Variant

# --------------------------------------------------------------------------------------------------
# Model construction


def build_model(variant: Variant, num_classes: int):
    from official.projects.movinet.modeling import movinet, movinet_model

    if variant.is_stream:
        backbone = movinet.Movinet(
            model_id=variant.backbone,
            causal=True,
            conv_type="2plus1d",
            se_type="2plus3d",
            activation="hard_swish",
            gating_activation="hard_sigmoid",
            use_positional_encoding=variant.use_positional_encoding,
            use_external_states=True,
            norm_epsilon=1e-3,
        )
    else:
        backbone = movinet.Movinet(
            model_id=variant.backbone,
            causal=False,
            conv_type="3d",
            se_type="3d",
            activation="swish",
            gating_activation="sigmoid",
            norm_epsilon=1e-3,
        )
    return movinet_model.MovinetClassifier(backbone, num_classes=num_classes, output_states=variant.is_stream)


def count_params(model) -> tuple[int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable


# --------------------------------------------------------------------------------------------------
# Weights: seeded random values that exercise every parameter


def _leaf_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _fan_in(variable) -> int:
    shape = variable.shape.as_list()
    if _leaf_name(variable) == "depthwise_kernel":  # [kh, kw, C, 1]: one kh*kw filter per channel
        return shape[0] * shape[1]
    return int(np.prod(shape[:-1]))  # [.., Cin/groups, Cout]


def randomise_weights(model, rng: np.random.Generator) -> None:
    """Give every variable a non-trivial value; BN moving statistics are calibrated afterwards."""
    assigned = 0
    for variable in model.weights:
        leaf, shape = _leaf_name(variable), variable.shape.as_list()
        if leaf in ("kernel", "depthwise_kernel"):
            # LeCun-normal keeps SE pre-activations O(1) (no BN follows them). The classifier head
            # sees a clip-averaged feature with a small spread, so it gets a larger gain to put
            # its swish in the non-linear range and the logits near O(1).
            gain = 2.5 if variable.name.startswith("classifier_head/") else 1.0
            value = rng.normal(0.0, gain / np.sqrt(_fan_in(variable)), size=shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.1, size=shape)
        elif leaf == "gamma":
            value = rng.uniform(0.5, 1.5, size=shape)
        elif leaf == "beta":
            value = rng.normal(0.0, 0.2, size=shape)
        elif leaf == "moving_mean":
            value = np.zeros(shape)
        elif leaf == "moving_variance":
            value = np.ones(shape)
        elif leaf == "scale":
            # ReZero and positional-encoding scales start at 0 in TF; 0 would hide a whole branch
            value = rng.uniform(0.3, 1.0, size=shape)
        else:
            raise ValueError(f"don't know how to initialise variable {variable.name}")
        variable.assign(np.asarray(value, dtype=variable.dtype.as_numpy_dtype))
        assigned += 1
    if assigned != len(model.weights):
        raise ValueError("not every variable was assigned")


def _batch_norm_layers(model) -> list:
    # _flatten_layers walks nested layers once each (MobileConv2D shares its ConvBlock's BN)
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, tf_keras.layers.BatchNormalization)]


def calibrate_batch_norm(model, inputs: dict, rng: np.random.Generator) -> int:
    """Give BN layers random moving statistics without letting activations drift with depth.

    Random moving statistics alone make a deep network's activations grow layer after layer. So each
    BN first measures what it actually sees on the calibration clip (one training-mode pass with
    momentum 0 copies the batch mean and variance into the moving statistics), then gets random
    moving statistics around those, and gamma/beta are rewritten so that inference still computes
    ``gamma0 * (x - batch_mean) / sqrt(batch_var + eps) + beta0`` with the random gamma0/beta0.
    The saved moving statistics are far from the batch statistics and gamma/beta are not gamma0/beta0,
    so a port that normalised with batch statistics (training mode) would not pass by accident.
    """
    layers = _batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
        # from 0, "moving - (moving - batch) * 1" is exactly the batch value
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.zeros_like(layer.moving_variance))
    model(inputs, training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        eps = layer.epsilon
        batch_mean = layer.moving_mean.numpy().astype(np.float64)
        # a dead channel has ~0 variance; normalising it by sqrt(eps) would amplify rounding noise
        batch_var = np.maximum(layer.moving_variance.numpy().astype(np.float64), 1e-2)
        batch_std = np.sqrt(batch_var + eps)
        gamma0 = layer.gamma.numpy().astype(np.float64)
        beta0 = layer.beta.numpy().astype(np.float64)

        moving_mean = batch_mean + 0.5 * batch_std * rng.normal(size=batch_mean.shape)
        moving_var = batch_var * rng.uniform(0.5, 2.0, size=batch_var.shape)
        gamma = gamma0 * np.sqrt(moving_var + eps) / batch_std
        beta = beta0 + gamma0 * (moving_mean - batch_mean) / batch_std
        for variable, value in (
            (layer.moving_mean, moving_mean),
            (layer.moving_variance, moving_var),
            (layer.gamma, gamma),
            (layer.beta, beta),
        ):
            variable.assign(value.astype(np.float32))
    return len(layers)


# --------------------------------------------------------------------------------------------------
# Running the oracle


def jit_call(model):
    # The official Conv3D already compiles itself with XLA; compiling the whole call as the TF-Hub
    # exports and the MoViNet tutorial do avoids the known CPU tf.nn.conv3d issue everywhere.
    return tf.function(lambda inputs: model(inputs, training=False), jit_compile=True)


def init_states(model, shape) -> dict:
    return {name: value for name, value in model.init_states(tf.constant(shape, tf.int32)).items()}


def run_base(model, video: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    logits = jit_call(model)({"image": tf.constant(video)})
    eager = model({"image": tf.constant(video)}, training=False)
    return {"logits": logits.numpy()}, {"max_abs_jit_vs_eager": _max_abs(logits, eager)}


def run_stream(model, video: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    call = jit_call(model)
    states = init_states(model, video.shape)
    logits_clip, final_states = call({**states, "image": tf.constant(video)})
    eager_logits, _ = model({**states, "image": tf.constant(video)}, training=False)

    states = init_states(model, video.shape)
    steps = []
    for t in range(video.shape[1]):
        logits, states = call({**states, "image": tf.constant(video[:, t : t + 1])})
        steps.append(logits.numpy())
    logits_steps = np.stack(steps)  # (T, B, classes)

    arrays = {"logits_clip": logits_clip.numpy(), "logits_steps": logits_steps}
    for name in sorted(final_states):
        arrays[f"state/{name}"] = final_states[name].numpy()
    checks = {
        "max_abs_jit_vs_eager": _max_abs(logits_clip, eager_logits),
        "max_abs_clip_vs_last_step": float(np.max(np.abs(arrays["logits_clip"] - logits_steps[-1]))),
        "max_abs_state_after_steps_vs_clip": max(
            float(np.max(np.abs(np.asarray(states[n], np.float64) - np.asarray(final_states[n], np.float64))))
            for n in final_states
        ),
    }
    return arrays, checks


def check_restore(variant: Variant, ckpt_dir: Path, num_classes: int, video, logits) -> float:
    """Restore the saved checkpoint into a fresh model the README way and rerun it."""
    fresh = build_model(variant, num_classes)
    status = tf.train.Checkpoint(model=fresh).restore(tf.train.latest_checkpoint(str(ckpt_dir)))
    status.assert_consumed()  # every saved value found a home, and vice versa
    inputs = {"image": tf.constant(video)}
    if variant.is_stream:
        inputs.update(init_states(fresh, video.shape))
    restored = jit_call(fresh)(inputs)
    if variant.is_stream:
        restored = restored[0]
    difference = _max_abs(restored, logits)
    if difference > 1e-5:
        raise ValueError(f"{variant.name}: restored checkpoint gives different logits ({difference})")
    return difference


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
