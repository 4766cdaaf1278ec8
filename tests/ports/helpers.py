"""Shared pieces of the port tests: small versions of the released prototxts, matching
NetConfigs, inputs, and comparisons at SPEC section 7 tolerances."""
from __future__ import annotations

import re

import numpy as np
import torch

from prototxt_ports import NetConfig

# the small geometry every CaffeNet comparison uses
SMALL = dict(div=16, classes=5, rois=8, input_size=64, student_size=32, fc=32, batch=2)


def small_prototxt(text: str, *, div=SMALL["div"], classes=SMALL["classes"], rois=SMALL["rois"],
                   input_size=SMALL["input_size"], student_size=SMALL["student_size"], fc=SMALL["fc"],
                   batch=SMALL["batch"]) -> str:
    """The released prototxt text with small sizes: conv widths / div, fc 4096 -> fc,
    80 classes -> classes, 500 regions -> rois, 672 -> input_size, 224 -> student_size.
    ROIPooling (7x7, 1/16) is unchanged."""
    def conv_width(m):
        n = int(m.group(1))
        return f"num_output: {n // div}" if n in (64, 128, 256, 512) else m.group(0)

    t = re.sub(r"num_output:\s*(\d+)", conv_width, text)
    t = re.sub(r"num_output:\s*4096\b", f"num_output: {fc}", t)
    t = re.sub(r"num_output:\s*80\b", f"num_output: {classes}", t)
    t = re.sub(r"\bdim:\s*500\b", f"dim: {rois}", t)
    t = re.sub(r"\bdim:\s*80\b", f"dim: {classes}", t)
    t = re.sub(r"slice_point:\s*80\b", f"slice_point: {classes}", t)
    t = re.sub(r"att_num:\s*80\b", f"att_num: {classes}", t)
    t = re.sub(r"bbox_num:\s*500\b", f"bbox_num: {rois}", t)
    t = re.sub(r"batch_size:\s*\d+", f"batch_size: {batch}", t)
    t = re.sub(r"(new_width|new_height|origin_scale):\s*672\b", rf"\1: {input_size}", t)
    t = re.sub(r"(height|width|single_scale):\s*224\b", rf"\1: {student_size}", t)
    # wsddn_deploy's legacy inputs: 1 x 3 x 672 x 672 and 1 x 2500 x 1 x 1
    t = re.sub(r"input_dim:\s*672\b", f"input_dim: {input_size}", t)
    t = re.sub(r"input_dim:\s*2500\b", f"input_dim: {5 * rois}", t)
    return t


def small_cfg(**kw) -> NetConfig:
    base = dict(num_classes=SMALL["classes"], num_rois=SMALL["rois"], input_size=SMALL["input_size"],
                student_size=SMALL["student_size"], width=1 / SMALL["div"], fc_dim=SMALL["fc"])
    base.update(kw)
    return NetConfig(**base)


def make_inputs(n=SMALL["batch"], classes=SMALL["classes"], rois=SMALL["rois"], size=SMALL["input_size"], seed=0):
    """data [n, 3, size, size] and label_roi [n, C + 5B] with integer boxes inside the
    image and scores in (0, 1] (what the data layer produces)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(n, 3, size, size, generator=g) * 50
    labels = (torch.rand(n, classes, generator=g) < 0.4).float()
    labels[:, 0] = 1  # every image has a positive
    x1 = torch.randint(0, size - 8, (n, rois), generator=g).float()
    y1 = torch.randint(0, size - 8, (n, rois), generator=g).float()
    x2 = torch.minimum(x1 + torch.randint(0, size // 2, (n, rois), generator=g).float(), torch.tensor(size - 1.0))
    y2 = torch.minimum(y1 + torch.randint(0, size // 2, (n, rois), generator=g).float(), torch.tensor(size - 1.0))
    s = torch.rand(n, rois, generator=g) * 0.9 + 0.1
    boxes = torch.stack([x1, y1, x2, y2, s], 2).reshape(n, 5 * rois)
    return data, torch.cat([labels, boxes], 1)


def randomize_(port, seed=1, bias_std=0.05):
    """Give every bias a small random value (the fillers leave them 0) so that the
    comparisons also cover them; weights keep their xavier fill."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (layer, i), p in port.caffe_param_map().items():
            if i == 1:
                p.add_(torch.randn(p.shape, generator=g) * bias_std)


def close(ours, ref, rel=1e-4, what=""):
    """SPEC section 7: max |ours - ref| <= rel * (1 + max |ref|)."""
    a = ours.detach().double().reshape(-1).cpu()
    b = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref).detach().double().reshape(-1)
    assert a.numel() == b.numel(), f"{what}: {a.numel()} values vs {b.numel()}"
    err = float((a - b).abs().max()) if a.numel() else 0.0
    bound = rel * (1 + float(b.abs().max()) if b.numel() else 1)
    assert err <= bound, f"{what}: max |diff| {err:.3g} > {bound:.3g}"


def sgd_step(port, lr):
    """Plain SGD with the port's lr_mults (no momentum, no weight decay)."""
    with torch.no_grad():
        for _name, p, lr_mult, _dm in port.param_specs():
            if p.grad is not None and lr_mult:
                p.sub_(p.grad, alpha=lr * lr_mult)


def snapshot(port):
    return {name: p.detach().clone() for name, p, _, _ in port.param_specs()}


def changed(before, port):
    now = snapshot(port)
    return {k for k in before if not torch.equal(before[k], now[k])}


# ----------------------------------------------------------------------------- prototxts from SPEC section 4
# Written from the spec's description of the released nets (not from their files), so
# the CaffeNet comparisons also run where the released prototxts are not available.


def _param(*mults):
    return " ".join(f"param {{ lr_mult: {lr:g} decay_mult: {dm:g} }}" for lr, dm in mults)


def _conv(name, bottom, n, pd=False):
    p = " propagate_down: 0" if pd else ""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'{_param((1, 1), (2, 0))}{p} convolution_param {{ num_output: {n} pad: 1 kernel_size: 3 }} }}\n'
            f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')


def _pool(name, bottom):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')


def _fc(name, bottom, n, mults=((1, 1), (2, 0)), relu_drop=True, pd=False):
    p = " propagate_down: 0" if pd else ""
    s = (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {_param(*mults)}{p} '
         f'inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} '
         f'bias_filler {{ type: "constant" value: 0 }} }} }}\n')
    if relu_drop:
        s += (f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
              f'layer {{ name: "drop_{name}" type: "Dropout" bottom: "{name}" top: "{name}" '
              f'dropout_param {{ dropout_ratio: 0.5 }} }}\n')
    return s


def _body(cfg, bottom, kd, pd=False, final_pool=False):
    s, last = "", bottom
    for layer in cfg.body_layers():
        if layer.kind == "conv":
            name = f"conv_wsd_{layer.block}_{layer.index}" if kd else f"conv{layer.block}_{layer.index}"
            s += _conv(name, last, layer.channels, pd)
        else:
            name = f"pool_wsd_{layer.block}" if kd else f"pool{layer.block}"
            s += _pool(name, last)
        last = name
    if final_pool:
        block = [layer for layer in cfg.body_layers() if layer.kind == "conv"][-1].block
        s += _pool(f"pool{block}", last)
        last = f"pool{block}"
    return s, last


def _roi_pool(name, feat, rois, cfg):
    return (f'layer {{ name: "{name}" type: "ROIPooling" bottom: "{feat}" bottom: "{rois}" top: "{name}" '
            f'roi_pooling_param {{ pooled_h: {cfg.pooled_size} pooled_w: {cfg.pooled_size} '
            f'spatial_scale: {cfg.spatial_scale!r} score_scale: 1 score_bias: 0 }} }}\n')


def _heads(cfg, fc7, kd, temperature):
    c8, d8 = ("fc_wsd_8_c", "fc_wsd_8_d") if kd else ("fc8_c", "fc8_d")
    B, C = cfg.num_rois, cfg.num_classes
    s = ""
    for fc, branch, axis in ((c8, 1, 2), (d8, 2, 1)):
        s += _fc(fc, fc7, C, ((10, 10), (20, 0)), relu_drop=False, pd=kd)
        s += (f'layer {{ name: "reshape_branch{branch}" type: "Reshape" bottom: "{fc}" top: "reshape_branch{branch}" '
              f'reshape_param {{ shape {{ dim: -1 dim: {B} dim: {C} dim: 1 }} }} }}\n')
        if temperature:
            s += (f'layer {{ name: "temp_branch{branch}_learn" type: "Scale" bottom: "reshape_branch{branch}" '
                  f'top: "temp_branch{branch}_learn" {_param((1, 0))} scale_param {{ axis: {axis} '
                  f'filler {{ type: "constant" value: 2 }} bias_term: false }} }}\n')
    b1, b2 = ("temp_branch1_learn", "temp_branch2_learn") if temperature else ("reshape_branch1", "reshape_branch2")
    s += (f'layer {{ name: "class_score" type: "Softmax" bottom: "{b1}" top: "class_score" softmax_param {{ axis: 2 }} }}\n'
          f'layer {{ name: "proposal_score" type: "Softmax" bottom: "{b2}" top: "proposal_score" '
          f'softmax_param {{ axis: 1 }} }}\n'
          f'layer {{ name: "proposal_class_score" type: "Eltwise" bottom: "class_score" bottom: "proposal_score" '
          f'top: "proposal_class_score" eltwise_param {{ operation: PROD }} }}\n'
          f'layer {{ name: "image_level_score" type: "Convolution" bottom: "proposal_class_score" '
          f'top: "image_level_score" {_param((0, 0))}{" propagate_down: 0" if kd else ""} '
          f'convolution_param {{ num_output: 1 kernel_size: 1 weight_filler {{ type: "constant" value: 1 }} '
          f'bias_term: false }} }}\n')
    return s


def spec_prototxt(kind: str, cfg: NetConfig, batch: int = SMALL["batch"]) -> str:
    """A network definition for `kind` in wsddn_train, wsddn_deploy, stage1, stage2."""
    C, B, S, size = cfg.num_classes, cfg.num_rois, cfg.student_size, cfg.input_size
    fc = cfg.fc_width
    label = "labels" if kind.startswith("wsddn") else "label"
    s = (f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {batch} dim: 3 '
         f'dim: {size} dim: {size} }} }} }}\n'
         f'layer {{ name: "label_roi" type: "Input" top: "label_roi" input_param {{ shape {{ dim: {batch} '
         f'dim: {C + 5 * B} }} }} }}\n'
         f'layer {{ name: "slice_label_roi" type: "Slice" bottom: "label_roi" top: "{label}" top: "list_roi" '
         f'slice_param {{ axis: 1 slice_point: {C} }} }}\n'
         f'layer {{ name: "roi" type: "WsdRoigen" bottom: "list_roi" top: "roi" }}\n')
    if kind.startswith("wsddn"):
        body, feat = _body(cfg, "data", kd=False)
        s += body + _roi_pool("roi_pooling", feat, "roi", cfg)
        s += _fc("fc6", "roi_pooling", fc) + _fc("fc7", "fc6", fc) + _heads(cfg, "fc7", False, False)
        if kind == "wsddn_train":
            s += ('layer { name: "loss" type: "CrossEntropyLoss" bottom: "image_level_score" bottom: "labels" '
                  'top: "loss" loss_weight: 1 }\n')
        else:
            s += 'layer { name: "silence" type: "Silence" bottom: "labels" }\n'
        return s
    if kind == "stage1":
        s += ('layer { name: "silence" type: "Silence" bottom: "label" }\n'
              f'layer {{ name: "roi_{S}" type: "WsdRoigenSingleScale" bottom: "list_roi" top: "roi_{S}" '
              f'roi_pooling_param {{ single_scale: {S} origin_scale: {size} }} }}\n')
    body, feat = _body(cfg, "data", kd=True, pd=True)
    s += body + _roi_pool("roi_pooling", feat, "roi", cfg)
    s += _fc("fc_wsd_6", "roi_pooling", fc, pd=True) + _fc("fc_wsd_7", "fc_wsd_6", fc, pd=True)
    if kind == "stage2":
        s += _heads(cfg, "fc_wsd_7", True, True)
    s += (f'layer {{ name: "data_size{S}" type: "Interp" bottom: "data" top: "data_size{S}" '
          f'interp_param {{ height: {S} width: {S} }} }}\n')
    body, feat = _body(cfg, f"data_size{S}", kd=False, final_pool=kind == "stage2")
    s += body
    if kind == "stage1":
        s += _roi_pool(f"roi_pooling_{S}", feat, f"roi_{S}", cfg)
        s += _fc("fc6", f"roi_pooling_{S}", fc) + _fc("fc7", "fc6", fc)
        s += ('layer { name: "loss_euclid" type: "EuclideanLoss" bottom: "fc_wsd_7" bottom: "fc7" '
              'top: "loss_euclid" propagate_down: 0 propagate_down: 1 loss_weight: 1 }\n')
        return s
    head = cfg.student_head
    s += _fc("fc6", feat, fc) + _fc("fc7", "fc6", fc) + _fc(head, "fc7", C, ((10, 10), (20, 0)), relu_drop=False)
    s += (f'layer {{ name: "{head}_soft" type: "Scale" bottom: "{head}" top: "{head}_soft" {_param((10, 0))} '
          f'scale_param {{ filler {{ type: "constant" value: 0.2 }} bias_term: false }} }}\n'
          f'layer {{ name: "loss_soft" type: "SigmoidCrossEntropyLoss" bottom: "{head}_soft" '
          f'bottom: "image_level_score" propagate_down: 1 propagate_down: 0 top: "loss_soft" loss_weight: 1 }}\n'
          f'layer {{ name: "loss_sig" type: "SigmoidCrossEntropyLoss" bottom: "{head}" bottom: "label" '
          f'propagate_down: 1 propagate_down: 0 top: "loss_sig" loss_weight: 1 }}\n')
    return s
