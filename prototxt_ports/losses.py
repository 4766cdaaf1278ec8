"""Losses of the released nets (SPEC section 3) and the paper's prediction-level L2.

The Caffe losses are mlic.ops.functional's autograd Functions (their gradients are
Caffe's, e.g. CrossEntropyLoss keeps a gradient where its value is clamped):

- cross_entropy_loss(p, t): the authors' clamped binary cross-entropy on probabilities,
  divided by num (the first dimension of p).
- sigmoid_cross_entropy_loss(x, t, norm=None): Caffe's SigmoidCrossEntropyLoss with soft
  targets, divided by num; gradient (sigmoid(x) - t) / num.
- euclidean_loss(a, b): sum((a - b)^2) / (2 num), num = a.shape[0].

Targets (t, and b wherever it is detached) receive no gradient.
"""
from __future__ import annotations

import torch

from mlic.ops.functional import cross_entropy_loss, euclidean_loss, sigmoid_cross_entropy_loss

__all__ = ["cross_entropy_loss", "sigmoid_cross_entropy_loss", "euclidean_loss", "probability_l2_loss"]


def probability_l2_loss(logits: torch.Tensor, target_prob: torch.Tensor) -> torch.Tensor:
    """The paper's prediction-level loss: squared L2 distance between the student's
    probabilities sigmoid(logits) and the teacher's, in EuclideanLoss's normalisation:
    sum((sigmoid(x) - p)^2) / (2 num). No gradient to the target."""
    if logits.numel() != target_prob.numel():
        raise ValueError(f"probability_l2_loss: logits {tuple(logits.shape)} and targets "
                         f"{tuple(target_prob.shape)} must have the same count")
    return euclidean_loss(torch.sigmoid(logits), target_prob.detach().reshape(logits.shape))
