"""CaffeNet: a Caffe network definition run as a PyTorch module.

Layers run in file order over named blobs, as Caffe's Net does: layers are filtered by
phase (include/exclude rules), Split layers are inserted where a blob feeds several
layers (with Caffe's names, e.g. ``fc7_relu7_0_split_1``), in-place tops rebind the blob
name, ``propagate_down`` detaches a bottom, loss tops enter the objective with their
``loss_weight`` (1 by default for *Loss layers) and ``param { lr_mult decay_mult }`` is
exposed per parameter for the solver.

After ``forward`` every blob is in ``net.blobs`` (the final value of in-place chains);
after ``backward`` (with ``retain_diffs=True``) ``net.blob_diffs`` holds Caffe's diffs:
the gradient with respect to the first version of a blob (what an in-place chain leaves
in the blob's diff), zeros where Caffe computes none, the loss weight in loss tops.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mlic import ops
from mlic.caffe import proto
from mlic.caffe.errors import NetBuildError
from mlic.caffe.io import NetSpec, load_net_spec
from mlic.caffe.layers import (LAYERS, BuildContext, HumanAttDataLayer, InputLayer, Layer, human_att_data_config,
                               supported_layer_types)
from mlic.caffe.weights import load_weights

# ----------------------------------------------------------------------------- phase filter


def _state_meets_rule(state, rule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer, state) -> bool:
    """Caffe's FilterNet rule for one layer."""
    if len(layer.include) and len(layer.exclude):
        raise ValueError("specify either include rules or exclude rules, not both")
    if len(layer.include):
        return any(_state_meets_rule(state, r) for r in layer.include)
    return not any(_state_meets_rule(state, r) for r in layer.exclude)


# ----------------------------------------------------------------------------- splits


def split_layer_name(layer_name: str, blob_name: str, blob_idx: int) -> str:
    return f"{blob_name}_{layer_name}_{blob_idx}_split"


def split_blob_name(layer_name: str, blob_name: str, blob_idx: int, split_idx: int) -> str:
    return f"{blob_name}_{layer_name}_{blob_idx}_split_{split_idx}"


class RepeatedTop(Exception):
    """(layer index, top index, blob): a layer writes a blob an earlier layer produced,
    without being in place on it."""


def insert_splits(layers: List) -> Tuple[List, List[int], Dict[str, str]]:
    """Caffe's InsertSplits on a list of LayerParameters.

    Returns (new layers, index of the original layer each new one comes from, and for a
    loss top that was split: top name -> the split blob that carries its loss). Raises
    KeyError((layer, bottom, blob)) for a bottom no earlier layer produces and RepeatedTop
    for a top written twice, whichever comes first in the file.
    """
    last_top: Dict[str, Tuple[int, int]] = {}
    source_of: Dict[Tuple[int, int], Tuple[int, int]] = {}
    consumers: Dict[Tuple[int, int], int] = {}
    loss_w: Dict[Tuple[int, int], float] = {}
    for i, lp in enumerate(layers):
        # in Caffe's order (Net::Init): a layer's bottoms, then its tops, layer after layer
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                raise KeyError((i, j, b))
            src = last_top[b]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, t in enumerate(lp.top):
            if t in last_top and not (j < len(lp.bottom) and lp.bottom[j] == t):
                raise RepeatedTop((i, j, t))
            last_top[t] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            src = last_top[lp.top[j]]
            loss_w[src] = lp.loss_weight[j]
            if loss_w[src]:
                consumers[src] = consumers.get(src, 0) + 1
    out, origin, loss_blob = [], [], {}
    next_split: Dict[Tuple[int, int], int] = {}
    for i, lp in enumerate(layers):
        new = proto.LayerParameter()
        new.CopyFrom(lp)
        for j in range(len(new.bottom)):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                new.bottom[j] = split_blob_name(layers[src[0]].name, new.bottom[j], src[1], k)
                next_split[src] = k + 1
        out.append(new)
        origin.append(i)
        for j, t in enumerate(new.top):
            n = consumers.get((i, j), 0)
            if n > 1:
                split = proto.LayerParameter(name=split_layer_name(new.name, t, j), type="Split")
                split.bottom.append(t)
                for k in range(n):
                    split.top.append(split_blob_name(new.name, t, j, k))
                if loss_w.get((i, j)):
                    # the loss is taken on split top 0; consumers start at index 1
                    loss_blob[t] = split.top[0]
                    next_split[(i, j)] = next_split.get((i, j), 0) + 1
                out.append(split)
                origin.append(i)
    return out, origin, loss_blob


# ----------------------------------------------------------------------------- the net


@dataclass
class ParamInfo:
    layer: str
    index: int
    lr_mult: float
    decay_mult: float

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.index}"


class CaffeNet(nn.Module):
    """A Caffe network (prototxt path or text, NetParameter or NetSpec) as an nn.Module.

    Arguments:
      phase: "TRAIN" or "TEST" (selects layers by include/exclude; Dropout is active in
        TRAIN while the module is in training mode).
      level, stages: the rest of Caffe's NetState (defaults: the file's ``state``).
      weights: a caffemodel (path or NetParameter) or a param dict file to load.
      force_backward: override the file's ``force_backward``.
      retain_diffs: keep every blob's gradient after backward (``blob_diffs``).
      ops_backend: the mlic.ops back end of the layers' ops (Pooling, SPP, ROIPooling), one
        of mlic.ops.BACKENDS: "auto" (the compiled kernels; the default) or, to check one
        against another, "reference" (mlic.ops.reference) and the test back ends.
      data_dir, data_seed: for HumanAttData layers that are not fed (where a relative
        datalist ``source`` is resolved; the data pipeline's seed).

    ``forward(**blobs)`` feeds Input/data tops by name and returns the net's output
    blobs (those no layer consumes) as an ordered dict.
    """

    def __init__(self, net, phase="TEST", *, level: Optional[int] = None, stages=None, weights=None,
                 force_backward: Optional[bool] = None, retain_diffs: bool = False, ops_backend: str = "auto",
                 data_dir=None, data_seed: int = 0):
        super().__init__()
        ops.check_backend(ops_backend)
        spec: NetSpec = load_net_spec(net)
        self.spec = spec
        self.file = spec.file
        self.name = spec.param.name
        self.phase_value = proto.phase_value(phase)
        self.state = self._net_state(level, stages)
        self.force_backward = bool(spec.param.force_backward if force_backward is None else force_backward)
        self.retain_diffs = retain_diffs

        kept, kept_idx = self._filter_layers()
        try:
            layers, origin, self._loss_blob = insert_splits(kept)
        except KeyError as exc:
            i, j, b = exc.args[0]
            raise NetBuildError(
                f"{spec.where(kept_idx[i])}: layer '{kept[i].name}' (type {kept[i].type}): unknown bottom blob "
                f"'{b}' (bottom {j}); it is not produced by any earlier layer in phase {self.phase}"
            ) from None
        except RepeatedTop as exc:
            i, j, t = exc.args[0]
            raise NetBuildError(
                f"{spec.where(kept_idx[i])}: layer '{kept[i].name}': top blob '{t}' is produced by multiple sources "
                f"(only an in-place layer, with the same blob as bottom {j}, may write it again)"
            ) from None
        self._build_layers(layers, [kept_idx[o] for o in origin], ops_backend, data_dir, data_seed)

        self.register_buffer("_probe", torch.zeros(0), persistent=False)
        self.blobs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._first: Dict[str, torch.Tensor] = {}
        self._loss_terms: List[Tuple[str, torch.Tensor, float]] = []
        self.objective: Optional[torch.Tensor] = None
        if weights is not None:
            self.load_report = load_weights(self, weights)

    # -- construction
    def _net_state(self, level, stages):
        """Caffe's NetState: the file's, with this phase and the given level / stages."""
        state = proto.NetState()
        state.CopyFrom(self.spec.param.state)
        state.phase = self.phase_value
        if level is not None:
            state.level = int(level)
        if stages is not None:
            del state.stage[:]
            state.stage.extend(stages)
        return state

    def _filter_layers(self):
        """The layers this state includes (copies, with the phase set) and their index in the file."""
        kept, kept_idx = [], []
        for i, lp in enumerate(self.spec.param.layer):
            try:
                inc = layer_included(lp, self.state)
            except ValueError as exc:
                raise NetBuildError(f"{self.spec.where(i)}: layer '{lp.name}': {exc}") from None
            if inc:
                c = proto.LayerParameter()
                c.CopyFrom(lp)
                c.phase = self.phase_value
                kept.append(c)
                kept_idx.append(i)
        return kept, kept_idx

    def _build_layers(self, layers, file_index, ops_backend, data_dir, data_seed) -> None:
        """Each layer built on its bottoms' shapes, its tops wired, in file order."""
        self.layers = nn.ModuleDict()
        self.layer_params: List = []
        self.blob_shapes: "OrderedDict[str, tuple]" = OrderedDict()
        self._pd: List[List[bool]] = []
        self._loss_weights: List[List[float]] = []
        self.params: "OrderedDict[str, List[nn.Parameter]]" = OrderedDict()
        self.param_info: "OrderedDict[str, List[ParamInfo]]" = OrderedDict()
        self.input_names: List[str] = []
        self._layer_where: List[str] = []
        available: "OrderedDict[str, None]" = OrderedDict()  # blobs not yet consumed
        for lp, src in zip(layers, file_index):
            where = self.spec.where(src)
            self._layer_where.append(where)
            layer = self._make_layer(lp, src, where, available, BuildContext(self.phase_value, where, ops_backend,
                                                                              data_dir, data_seed))
            for b in lp.bottom:
                available.pop(b, None)
            for j, t in enumerate(lp.top):  # a top written twice was refused by insert_splits
                self.blob_shapes[t] = layer.top_shapes[j]
                available[t] = None
            if isinstance(layer, (InputLayer, HumanAttDataLayer)):
                self.input_names.extend(lp.top)
            self._pd.append(self._propagate_down(layer, lp))
            self._loss_weights.append(self._layer_loss_weights(layer, lp, where))
            self._register(layer, lp, where)
        self.output_names = list(available)

    def _make_layer(self, lp, src: int, where: str, available, ctx) -> Layer:
        cls = LAYERS.get(lp.type)
        if cls is None:
            raise NetBuildError(
                f"{self.spec.where(src, type_line=True)}: layer '{lp.name}': unknown layer type '{lp.type}'; "
                f"supported types: {', '.join(supported_layer_types())}"
            )
        for j, b in enumerate(lp.bottom):
            if b not in available:
                raise NetBuildError(
                    f"{where}: layer '{lp.name}' (type {lp.type}): bottom blob '{b}' (bottom {j}) is not "
                    f"available (unknown, or already consumed by another layer)"
                )
        if len(lp.propagate_down) not in (0, len(lp.bottom)):
            raise NetBuildError(
                f"{where}: layer '{lp.name}': propagate_down must be given 0 or {len(lp.bottom)} times "
                f"(once per bottom), got {len(lp.propagate_down)}"
            )
        try:
            return cls(lp, [self.blob_shapes[b] for b in lp.bottom], ctx)
        except NetBuildError:
            raise
        except ValueError as exc:
            raise NetBuildError(f"{where}: layer '{lp.name}' (type {lp.type}): {exc}") from None

    def _propagate_down(self, layer: Layer, lp) -> List[bool]:
        """Per bottom: whether it receives a gradient (force_backward overriding
        propagate_down where the layer allows; never into a loss layer's labels)."""
        pd = []
        for j in range(len(lp.bottom)):
            p = bool(lp.propagate_down[j]) if len(lp.propagate_down) else True
            if self.force_backward:
                p = p or layer.allow_force_backward(j)
            pd.append(p and j not in layer.LABEL_BOTTOMS)
        return pd

    @staticmethod
    def _layer_loss_weights(layer: Layer, lp, where: str) -> List[float]:
        """loss_weight per top (a loss layer's first top defaults to 1)."""
        lw = [float(w) for w in lp.loss_weight]
        if not lw and layer.IS_LOSS:
            lw = [1.0] + [0.0] * (len(lp.top) - 1)
        if lw and len(lw) != len(lp.top):
            raise NetBuildError(
                f"{where}: layer '{lp.name}': loss_weight must be given once per top ({len(lp.top)}), got {len(lw)}"
            )
        return lw

    def _register(self, layer: Layer, lp, where: str) -> None:
        key = lp.name.replace(".", "_") or f"layer{len(self.layers)}"
        if key in self.layers:
            key = f"{key}_{len(self.layers)}"
        self.layers[key] = layer
        self.layer_params.append(lp)
        blobs = layer.caffe_blobs()
        if len(lp.param) > len(blobs):
            raise NetBuildError(
                f"{where}: layer '{lp.name}': {len(lp.param)} param specs given but the layer has "
                f"{len(blobs)} learnable blob(s)"
            )
        if not blobs:
            return
        if lp.name in self.params:
            raise NetBuildError(
                f"{where}: layer '{lp.name}': another layer with parameters has the same name; weights are "
                f"matched by layer name, so names of layers with parameters must be unique"
            )
        infos = []
        for i, p in enumerate(blobs):
            spec = lp.param[i] if i < len(lp.param) else proto.ParamSpec()
            if spec.name:
                raise NetBuildError(
                    f"{where}: layer '{lp.name}': param {{ name: '{spec.name}' }} (parameter sharing) is not supported"
                )
            info = ParamInfo(lp.name, i, float(spec.lr_mult), float(spec.decay_mult))
            p.lr_mult, p.decay_mult = info.lr_mult, info.decay_mult
            p.caffe_name = info.key
            p.requires_grad_(info.lr_mult != 0 or self.force_backward)
            infos.append(info)
        self.params[lp.name] = blobs
        self.param_info[lp.name] = infos

    # -- introspection
    @property
    def phase(self) -> str:
        return proto.phase_name(self.phase_value)

    @property
    def layer_names(self) -> List[str]:
        return [lp.name for lp in self.layer_params]

    @property
    def layer_types(self) -> List[str]:
        return [lp.type for lp in self.layer_params]

    def layer(self, name: str) -> Layer:
        """The (last) layer called `name`."""
        for lp, layer in zip(reversed(self.layer_params), reversed(list(self.layers.values()))):
            if lp.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in this net")

    def blob_producer(self, blob: str) -> Optional[Layer]:
        """The first layer writing `blob` (not counting in-place layers)."""
        for layer in self.layers.values():
            if blob in layer.top_names:
                return layer
        return None

    @property
    def loss_tops(self) -> Dict[str, float]:
        out = {}
        for lp, lw in zip(self.layer_params, self._loss_weights):
            for t, w in zip(lp.top, lw):
                if w:
                    out[t] = w
        return out

    def human_att_data(self, **overrides):
        """(HumanAttDataConfig, [data top, label_roi top]) of the net's one HumanAttData
        layer in this phase, as the data pipeline takes it; `overrides` replace fields."""
        idx = [i for i, lp in enumerate(self.layer_params) if lp.type == "HumanAttData"]
        if len(idx) != 1 or len(self.layer_params[idx[0]].top) != 2:
            raise NetBuildError(f"{self.file or '<net>'}: needs exactly one HumanAttData layer (tops: data, "
                                f"label_roi) in phase {self.phase}; found {len(idx)}")
        lp = self.layer_params[idx[0]]
        return human_att_data_config(lp, self._layer_where[idx[0]], **overrides), list(lp.top)

    def param_groups(self, only_learnable: bool = False) -> List[dict]:
        """One optimizer param group per learnable blob: {'params': [p], 'lr_mult',
        'decay_mult', 'name': 'layer/i'} (for mlic.solver.CaffeSGD)."""
        groups = []
        for layer, blobs in self.params.items():
            for p, info in zip(blobs, self.param_info[layer]):
                if only_learnable and info.lr_mult == 0:
                    continue
                groups.append({"params": [p], "lr_mult": info.lr_mult, "decay_mult": info.decay_mult,
                               "name": info.key})
        return groups

    def param_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """{'layer/i': tensor}: the learnable blobs, detached."""
        return OrderedDict(
            (f"{layer}/{i}", p.detach()) for layer, blobs in self.params.items() for i, p in enumerate(blobs)
        )

    def _device_dtype(self):
        for p in self.parameters():
            return p.device, p.dtype
        return self._probe.device, (self._probe.dtype if self._probe.is_floating_point() else torch.float32)

    # -- running
    def _as_tensor(self, name, v, device, dtype):
        if isinstance(v, np.ndarray) or not isinstance(v, torch.Tensor):
            v = torch.as_tensor(np.asarray(v))
        if v.dtype != dtype:
            v = v.to(dtype)
        if v.device != device:
            v = v.to(device)
        return v

    def forward(self, *args, **inputs):
        if args:
            if len(args) == 1 and isinstance(args[0], dict):
                inputs = {**args[0], **inputs}
            else:
                raise TypeError("CaffeNet.forward takes blobs by name: net(data=..., label_roi=...) or net({...})")
        unknown = [k for k in inputs if k not in self.input_names]
        if unknown:
            raise ValueError(
                f"{self.file or '<net>'}: unknown input blob(s) {unknown}; this net (phase {self.phase}) takes "
                f"{self.input_names}"
            )
        device, dtype = self._device_dtype()
        # drop the previous pass's blobs first, so they do not stay alive through this one
        self.blobs, self._first, self._loss_terms, self.objective = OrderedDict(), {}, [], None
        keep_first = self.retain_diffs and torch.is_grad_enabled()
        blobs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        first: Dict[str, torch.Tensor] = {}
        loss_terms = []
        for idx, (layer, lp) in enumerate(zip(self.layers.values(), self.layer_params)):
            if isinstance(layer, (InputLayer, HumanAttDataLayer)):
                fed = [t for t in lp.top if t in inputs]
                if isinstance(layer, HumanAttDataLayer) and not fed:
                    tops = layer.next_batch(device)
                    tops = [self._as_tensor(t, v, device, dtype) for t, v in zip(lp.top, tops)]
                else:
                    missing = [t for t in lp.top if t not in inputs]
                    if missing:
                        raise ValueError(
                            f"{self._layer_where[idx]}: layer '{lp.name}' (type {lp.type}): input blob(s) "
                            f"{missing} not given; feed {list(lp.top)} by name"
                        )
                    tops = [self._as_tensor(t, inputs[t], device, dtype) for t in lp.top]
                if self.force_backward:
                    tops = [t if t.requires_grad else t.detach().requires_grad_(True) for t in tops]
            else:
                bottoms = [blobs[b] for b in lp.bottom]
                pd = self._pd[idx]
                bottoms = [b if pd[j] else b.detach() for j, b in enumerate(bottoms)]
                tops = layer(*bottoms)
            for t, v in zip(lp.top, tops):
                blobs[t] = v
                if keep_first and t not in first:
                    first[t] = v
            for t, w, v in zip(lp.top, self._loss_weights[idx], tops):
                if w:
                    loss_terms.append((t, v, w))
        if keep_first:
            for v in first.values():
                if v.requires_grad and not v.is_leaf:
                    v.retain_grad()
        self.blobs = blobs
        self._first = first
        self._loss_terms = loss_terms
        if loss_terms:
            obj = None
            for _, v, w in loss_terms:
                term = v.sum() * w
                obj = term if obj is None else obj + term
            self.objective = obj
        else:
            self.objective = None
        return OrderedDict((n, blobs[n]) for n in self.output_names)

    def backward(self, top_diffs: Optional[Dict[str, object]] = None) -> None:
        """Caffe's Backward: loss tops start from their loss weight, and `top_diffs`
        (blob name -> diff) seed any other blob (e.g. outputs of a net without loss)."""
        top_diffs = dict(top_diffs or {})
        tensors, grads = [], []
        for name, v, w in self._loss_terms:
            if name in top_diffs or self._loss_blob.get(name) in top_diffs:
                continue
            if v.requires_grad:
                tensors.append(v)
                grads.append(torch.full_like(v, w))
        for name, d in top_diffs.items():
            if name not in self.blobs:
                raise KeyError(f"no blob named {name!r} after forward")
            v = self.blobs[name]
            if v.requires_grad:
                d = self._as_tensor(name, d, v.device, v.dtype)
                if tuple(d.shape) != tuple(v.shape):
                    raise ValueError(f"diff for blob {name!r} has shape {tuple(d.shape)}, the blob {tuple(v.shape)}")
                tensors.append(v)
                grads.append(d)
        if not tensors:
            if not self._loss_terms and not top_diffs:
                raise RuntimeError("backward: this net has no loss and no top diffs were given")
            return
        torch.autograd.backward(tensors, grads)

    def forward_backward(self, *args, **inputs) -> torch.Tensor:
        """forward then backward from the loss tops; returns the objective
        (sum of loss_weight * loss), detached."""
        self.forward(*args, **inputs)
        if self.objective is None:
            raise RuntimeError(f"{self.file or '<net>'}: this net has no loss layer (phase {self.phase})")
        self.backward()
        return self.objective.detach()

    @property
    def blob_diffs(self) -> "OrderedDict[str, torch.Tensor]":
        """Caffe's blob diffs after backward (needs retain_diffs=True before forward)."""
        if not self.retain_diffs:
            raise RuntimeError("blob diffs are only kept with retain_diffs=True (set it before forward)")
        out = OrderedDict()
        loss_w = {}
        for name, _, w in self._loss_terms:
            loss_w[self._loss_blob.get(name, name)] = w
        for name, v in self.blobs.items():
            f = self._first.get(name, v)
            if name in loss_w:
                out[name] = torch.full_like(v, loss_w[name]).detach()
            elif f.grad is not None:
                out[name] = f.grad.detach()
            else:
                out[name] = torch.zeros_like(v).detach()
        return out

    def param_diffs(self) -> "OrderedDict[str, torch.Tensor]":
        """{'layer/i': gradient (zeros where none was computed)}."""
        return OrderedDict(
            (f"{layer}/{i}", (p.grad if p.grad is not None else torch.zeros_like(p)).detach())
            for layer, blobs in self.params.items()
            for i, p in enumerate(blobs)
        )

    def zero_diffs(self) -> None:
        for p in self.parameters():
            p.grad = None

    def reset_data(self) -> None:
        """Restart every HumanAttData layer's batch stream."""
        for layer in self.layers.values():
            if isinstance(layer, HumanAttDataLayer):
                layer.reset_data()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, phase={self.phase}, file={self.file!r}"
