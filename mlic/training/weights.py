"""Initial weights of a training run: --weights and a KD stage's --teacher."""
from __future__ import annotations

import logging
import os

import torch

from mlic.errors import UserInputError

log = logging.getLogger("mlic.train")


def load_weights_into(model, path: str, what: str, rename=None) -> None:
    """A .caffemodel (by layer name) or one of our checkpoints/state dicts."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserInputError(f"{what}: {path} does not exist")
    if path.endswith(".caffemodel"):
        if hasattr(model, "load_caffe_weights"):
            report = model.load_caffe_weights(path, rename=rename)
        else:  # a CaffeNet (--prototxt)
            from mlic.caffe.weights import load_caffemodel

            report = load_caffemodel(model, path, rename=rename)
        log.info("%s: loaded %s (%s)", what, path, report)
        return
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    target = model
    student = getattr(model, "student", None)
    own = set(model.state_dict())
    if isinstance(student, torch.nn.Module) and not own.intersection(state) and \
            set(student.state_dict()).intersection(state):
        # a classifier's weights (the student or its initialisation) for a KD stage
        target, what = student, f"{what} (into the student)"
    missing, unexpected = target.load_state_dict(state, strict=False)
    loaded = len(state) - len(unexpected)
    if loaded == 0:
        raise UserInputError(f"{what}: no parameter of {path} matches the model (unexpected: {unexpected[:5]} ...)")
    log.info("%s: loaded %d tensors from %s; missing %d, unexpected %d", what, loaded, path, len(missing),
             len(unexpected))


def teacher_rename(key: str) -> str:
    """WSDDN names -> the KD nets' teacher names (conv1_1 -> conv_wsd_1_1, fc6 -> fc_wsd_6, ...)."""
    from prototxt_ports.wsddn import wsddn_to_kd_name

    layer, _, rest = key.partition(".")
    return f"{wsddn_to_kd_name(layer)}.{rest}" if rest else wsddn_to_kd_name(layer)
