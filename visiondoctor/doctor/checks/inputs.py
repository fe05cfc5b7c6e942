"""The pixels as the network sees them, and outputs that are already probabilities.

input.range reads the tensor entering the model's first convolution in a training forward (after
whatever scaling and normalisation the data pipeline and the model applied): convolution weights
are initialised for inputs of about unit spread (He/Kaiming), so inputs a hundred times smaller
(images scaled twice) or in the hundreds (0-255 pixels, or normalised twice) start training far from
where the initialisation expects it, and a constant image carries nothing to learn.

loss.probabilities-as-logits reads a segmentation model's main output: values in [0, 1] that sum to
one over the classes at every pixel are probabilities already; cross-entropy applies its own
softmax on top, which flattens the gradient to a fraction of what logits would give.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from visiondoctor.doctor.checks import FindingDoc, check
from visiondoctor.doctor.model_io import ModelIO, stack_masks
from visiondoctor.doctor.probe import Observation
from visiondoctor.findings import Finding

TOO_SMALL_STD = 0.01  # 100x below the unit spread the initialisation assumes
TOO_LARGE = 100.0  # |value| beyond this: pixel units (0..255) or worse reach the first layer
CONSTANT_STD = 1e-6


@check("probe", order=5, findings=[FindingDoc(
    "input.range", "the images reach the first layer in the wrong range (scaled twice, 0-255, constant)",
    "min, max, mean and spread of the tensor entering the model's first convolution in a training forward",
    severity=f"error when the spread is below {TOO_SMALL_STD} (or an image is constant) or values exceed "
             f"{TOO_LARGE:g}")])
def check_input_range(obs: Observation) -> list[Finding]:
    stats = obs.first_input
    if stats is None:
        return []
    evidence = {"first_layer_input_shape": list(stats.shape), "min": round(stats.min, 5), "max": round(stats.max, 5),
                "mean": round(stats.mean, 5), "std": round(stats.std, 6),
                "most_uniform_image_std": round(stats.smallest_image_std, 6)}
    if stats.smallest_image_std < CONSTANT_STD:
        title = "An image reaches the first layer as a constant: the network sees nothing in it"
        cause = "A constant input carries no signal: a conversion that zeroes or saturates the pixels (wrong dtype, " \
                "a division by a huge number, a mask passed as the image)."
    elif stats.std < TOO_SMALL_STD:
        title = (f"The images reach the first layer with a spread of {stats.std:.2g} (values {stats.min:.3g}..{stats.max:.3g}): "
                 "about a hundred times too small — scaled twice?")
        cause = "The pixels were divided by 255 (or normalised) twice: the first layer sees a nearly constant image, " \
                "its activations start ~100x smaller than the weights' initialisation assumes, and training stalls."
    elif max(abs(stats.min), abs(stats.max)) > TOO_LARGE:
        title = (f"The images reach the first layer with values up to {max(abs(stats.min), abs(stats.max)):.0f} "
                 f"(spread {stats.std:.3g}): pixel units where a normalised image is expected")
        cause = "0-255 pixels (or an image normalised twice, or multiplied back to 0-255 before a normalisation meant for " \
                "0-1) reach convolutions initialised for inputs of about unit spread: activations and gradients start " \
                "hundreds of times too large."
    else:
        return []
    return [Finding(
        id="input.range", severity="error", title=title, evidence=evidence, cause=cause,
        fix="Convert the images once: uint8 -> float in [0, 1] (ToDtype(float32, scale=True)), then normalise once "
            "(in the data pipeline or in the model, not both).",
        where="first layer input")]


@check("probe", order=6, findings=[FindingDoc(
    "loss.probabilities-as-logits", "outputs that are already probabilities are passed to a loss that expects logits",
    "a segmentation model's main output in a training forward: in [0, 1] and summing to one over the classes at "
    "every pixel; with the default loss, or a loss whose value equals cross-entropy on those outputs",
    severity="error")])
def check_probabilities_as_logits(obs: Observation, io: ModelIO, targets: Any, task: str) -> list[Finding]:
    out = obs.seg_outputs
    if task != "segmentation" or out is None or not out.probabilities or out.channels < 2:
        return []
    if io.loss_fn is not None:  # a user's loss: flag it only when it computes cross-entropy on the probabilities
        logits = obs.seg_main_output
        if logits is None:
            return []
        ce = float(F.cross_entropy(logits.float(), stack_masks(targets).to(logits.device), ignore_index=io.ignore_index))
        user = sum(obs.losses.values())
        if not abs(user - ce) <= 1e-4 * max(1.0, abs(ce)):
            return []
    return [Finding(
        id="loss.probabilities-as-logits", severity="error",
        title="The model outputs probabilities (softmax applied) and cross-entropy applies its own softmax on top",
        evidence={"output_min": round(out.min, 5), "output_max": round(out.max, 5),
                  "max_deviation_of_class_sum_from_1": float(f"{out.channel_sum_deviation:.2g}"), "classes": out.channels,
                  "loss": "the default cross-entropy" if io.loss_fn is None else "the loss file's (equal to cross-entropy)"},
        cause="Cross-entropy expects logits; on probabilities it computes softmax(softmax(z)), whose values all lie "
              "between e^0 and e^1: the predicted distribution can never be confident, and the gradient reaching the "
              "network shrinks to a fraction of what logits would give.",
        fix="Return the logits from forward (apply softmax only at inference, or use NLLLoss on log-probabilities).",
        where="model output")]
