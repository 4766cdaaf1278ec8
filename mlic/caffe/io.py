"""Reading and writing Caffe files: prototxt (text format), caffemodel (binary
NetParameter), solver definitions, and conversion of blobs to arrays.

Legacy forms are upgraded the way Caffe's upgrade_proto does: V1 ``layers`` become
``layer`` entries, and net-level ``input``/``input_dim``/``input_shape`` become an
``Input`` layer named "input" placed first.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from mlic.caffe import proto
from mlic.caffe.errors import CaffemodelError, PrototxtError, where
from mlic.caffe.layers import supported_layer_types
from mlic.errors import OutputError
from mlic.integrity import atomic_write

PathLike = Union[str, "os.PathLike[str]"]

# ----------------------------------------------------------------------------- V1 upgrade

V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 (pre-2014) type strings, for reading the weights of very old models.
V0_TYPE_NAMES = {
    "conv": "Convolution", "innerproduct": "InnerProduct", "relu": "ReLU", "pool": "Pooling",
    "lrn": "LRN", "dropout": "Dropout", "softmax": "Softmax", "softmax_loss": "SoftmaxWithLoss",
    "data": "Data", "concat": "Concat", "flatten": "Flatten", "sigmoid": "Sigmoid", "tanh": "TanH",
    "split": "Split", "accuracy": "Accuracy", "euclidean_loss": "EuclideanLoss",
}

_V1_SHARED_PARAMS = (
    "concat_param", "convolution_param", "dropout_param", "inner_product_param", "pooling_param",
    "eltwise_param", "relu_param", "slice_param", "transform_param", "sigmoid_param",
    "softmax_param", "loss_param",
)


def upgrade_v1_layer(v1) -> "proto.LayerParameter":
    """A V1LayerParameter as a LayerParameter (what Caffe's UpgradeV1LayerParameter does
    for the fields this schema knows)."""
    layer = proto.LayerParameter()
    if v1.HasField("layer"):  # V0 nested in V1: only name, type and weights are carried
        v0 = v1.layer
        layer.name = v0.name
        layer.type = V0_TYPE_NAMES.get(v0.type, v0.type)
        layer.blobs.extend(v0.blobs)
        for lr in v0.blobs_lr:
            layer.param.add().lr_mult = lr
        for i, wd in enumerate(v0.weight_decay):
            while len(layer.param) <= i:
                layer.param.add()
            layer.param[i].decay_mult = wd
    if v1.HasField("name"):
        layer.name = v1.name
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[proto.v1_type_name(v1.type)]
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.loss_weight.extend(v1.loss_weight)
    if not v1.HasField("layer"):
        layer.blobs.extend(v1.blobs)
    n_param = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    if n_param:
        del layer.param[:]
    for i in range(n_param):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for name in _V1_SHARED_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


# ----------------------------------------------------------------------------- line locator

_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\f\v]+)|(?P<nl>\n)|(?P<comment>\#[^\n]*)"""
    r"""|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<open>[{<])|(?P<close>[}>])|(?P<other>.)""",
    re.S,
)


@dataclass
class _Block:
    keyword: str
    line: int
    fields: dict = field(default_factory=dict)  # first line of each direct field


def _scan_blocks(text: str):
    """Top-level message blocks and scalar fields of a text-format file, with the line of
    each (used only to point error messages at the right line; protobuf parses)."""
    blocks: List[_Block] = []
    top_fields: dict = {}
    depth = 0
    line = 1
    pending_ident = None  # (name, line) of the last identifier at depth 0 or 1
    current: Optional[_Block] = None
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            line += 1
            continue
        if kind in ("ws", "comment"):
            continue
        if kind == "str":
            line += m.group().count("\n")
            pending_ident = None
            continue
        if kind == "ident":
            if pending_ident is not None:  # an enum or bare value: ends the field
                pending_ident = None
            elif depth == 0:
                pending_ident = (m.group(), line)
                top_fields.setdefault(m.group(), []).append(line)
            elif depth == 1 and current is not None:
                pending_ident = (m.group(), line)
                current.fields.setdefault(m.group(), line)
            continue
        if kind == "open":
            if depth == 0 and pending_ident is not None:
                current = _Block(pending_ident[0], pending_ident[1])
                blocks.append(current)
            depth += 1
            pending_ident = None
            continue
        if kind == "close":
            depth = max(depth - 1, 0)
            if depth == 0:
                current = None
            pending_ident = None
            continue
        # ':' keeps the pending identifier (name: value / name: { ... }); a value ends it
        if m.group() != ":":
            pending_ident = None
    return blocks, top_fields


# ----------------------------------------------------------------------------- net definitions


@dataclass
class NetSpec:
    """A parsed, upgraded network definition and where its layers came from."""

    param: "proto.NetParameter"
    file: Optional[str] = None
    layer_lines: List[Optional[int]] = field(default_factory=list)
    type_lines: List[Optional[int]] = field(default_factory=list)

    def where(self, index: Optional[int] = None, type_line: bool = False) -> str:
        line = None
        if index is not None and 0 <= index < len(self.layer_lines):
            line = (self.type_lines[index] if type_line else None) or self.layer_lines[index]
        return where(self.file, line)


def _supported_types_hint() -> str:
    return "; supported layer types: " + ", ".join(supported_layer_types())


def parse_text(text: str, message, filename: Optional[str] = None):
    """Parse text-format `text` into `message`; errors name filename:line:col."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        msg = str(exc)
        msg = re.sub(r"^\d+:\d+\s*:\s*", "", msg)
        hint = ""
        if "has no field named" in msg and "LayerParameter" in msg:
            hint = _supported_types_hint()
        loc = where(filename or "<text>", line) + (f":{col}" if col else "")
        raise PrototxtError(f"{loc}: {msg}{hint}") from None
    return message


def read_text_file(path: PathLike, what: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PrototxtError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrototxtError(
            f"{path}: not a text {what} (byte {exc.start} is not UTF-8; a binary caffemodel?)"
        ) from None


def net_spec_from_text(text: str, filename: Optional[str] = None) -> NetSpec:
    param = parse_text(text, proto.NetParameter(), filename)
    blocks, top_fields = _scan_blocks(text)
    layer_blocks = [b for b in blocks if b.keyword == "layer"]
    v1_blocks = [b for b in blocks if b.keyword == "layers"]
    lines = [b.line for b in layer_blocks] if len(layer_blocks) == len(param.layer) else [None] * len(param.layer)
    type_lines = (
        [b.fields.get("type") for b in layer_blocks] if len(layer_blocks) == len(param.layer) else [None] * len(param.layer)
    )
    spec = NetSpec(param, filename, lines, type_lines)
    if len(param.layers):
        if len(param.layer):
            first = top_fields.get("layers", [None])[0]
            raise PrototxtError(
                f"{where(filename, first)}: the net mixes V1 'layers' and current 'layer' entries; "
                "use one form"
            )
        ok = len(v1_blocks) == len(param.layers)
        for i, v1 in enumerate(param.layers):
            param.layer.append(upgrade_v1_layer(v1))
            spec.layer_lines.append(v1_blocks[i].line if ok else None)
            spec.type_lines.append(v1_blocks[i].fields.get("type") if ok else None)
        del param.layers[:]
    _upgrade_inputs(spec, top_fields.get("input", [None])[0])
    return spec


def net_spec_from_param(param, filename: Optional[str] = None) -> NetSpec:
    p = proto.NetParameter()
    p.CopyFrom(param)
    spec = NetSpec(p, filename, [None] * len(p.layer), [None] * len(p.layer))
    if len(p.layers):
        if len(p.layer):
            raise PrototxtError(f"{where(filename)}: the net mixes V1 'layers' and current 'layer' entries")
        for v1 in p.layers:
            p.layer.append(upgrade_v1_layer(v1))
            spec.layer_lines.append(None)
            spec.type_lines.append(None)
        del p.layers[:]
    _upgrade_inputs(spec, None)
    return spec


def _upgrade_inputs(spec: NetSpec, line: Optional[int]) -> None:
    p = spec.param
    n_in = len(p.input)
    if not n_in and not len(p.input_dim) and not len(p.input_shape):
        return
    loc = where(spec.file, line)
    if len(p.input_shape) and len(p.input_dim):
        raise PrototxtError(f"{loc}: give input shapes as either input_shape or input_dim, not both")
    if len(p.input_shape) and len(p.input_shape) != n_in:
        raise PrototxtError(f"{loc}: {n_in} input(s) but {len(p.input_shape)} input_shape entries")
    if len(p.input_dim) and len(p.input_dim) != 4 * n_in:
        raise PrototxtError(
            f"{loc}: {n_in} input(s) need {4 * n_in} input_dim values (4 per input), got {len(p.input_dim)}"
        )
    if len(p.input_shape) or len(p.input_dim):
        layer = proto.LayerParameter(name="input", type="Input")
        for i, name in enumerate(p.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if len(p.input_shape):
                shape.CopyFrom(p.input_shape[i])
            else:
                shape.dim.extend(p.input_dim[4 * i : 4 * i + 4])
        rest = []
        for l in p.layer:
            c = proto.LayerParameter()
            c.CopyFrom(l)
            rest.append(c)
        del p.layer[:]
        p.layer.append(layer)
        p.layer.extend(rest)
        spec.layer_lines.insert(0, line)
        spec.type_lines.insert(0, line)
    del p.input[:]
    del p.input_dim[:]
    del p.input_shape[:]


def load_net_spec(source) -> NetSpec:
    """A NetSpec from a path, prototxt text, a NetParameter or a NetSpec."""
    if isinstance(source, NetSpec):
        return source
    if isinstance(source, proto.NetParameter):
        return net_spec_from_param(source)
    if isinstance(source, (bytes, bytearray)):
        source = source.decode("utf-8")
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = os.fspath(source)
        return net_spec_from_text(read_text_file(path, "network definition (prototxt)"), path)
    if isinstance(source, str):
        return net_spec_from_text(source, None)
    raise TypeError(f"expected a prototxt path, prototxt text or NetParameter, got {type(source).__name__}")


def _looks_like_path(s: str) -> bool:
    """A string is a file name unless it reads as text format (an existing file wins)."""
    if os.path.exists(s):
        return True
    return not ("\n" in s or "{" in s or ":" in s)


# ----------------------------------------------------------------------------- solver


def read_solver(source) -> "tuple[proto.SolverParameter, Optional[str]]":
    """(SolverParameter, file or None) from a path, text or SolverParameter."""
    if isinstance(source, proto.SolverParameter):
        return source, None
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = os.fspath(source)
        return parse_text(read_text_file(path, "solver definition"), proto.SolverParameter(), path), path
    if isinstance(source, str):
        return parse_text(source, proto.SolverParameter(), None), None
    raise TypeError(f"expected a solver path, solver text or SolverParameter, got {type(source).__name__}")


# ----------------------------------------------------------------------------- caffemodel


def read_caffemodel(path: PathLike) -> "proto.NetParameter":
    """The NetParameter of a binary caffemodel; clear errors for unreadable, empty,
    truncated or corrupt files."""
    path = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaffemodelError(f"{path}: cannot read caffemodel: {exc.strerror or exc}") from None
    return parse_caffemodel_bytes(data, path)


def parse_caffemodel_bytes(data: bytes, path: str = "<bytes>") -> "proto.NetParameter":
    if not data:
        raise CaffemodelError(f"{path}: empty file, not a caffemodel")
    net = proto.NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        hint = ""
        if data.lstrip()[:5] in (b"name:", b"layer", b"input") or data.lstrip()[:1] == b"#":
            hint = " (it looks like a text prototxt, not a binary caffemodel)"
        raise CaffemodelError(
            f"{path}: not a valid caffemodel (truncated or corrupt binary NetParameter: {exc}){hint}"
        ) from None
    if not len(net.layer) and not len(net.layers):
        raise CaffemodelError(f"{path}: no layers in this caffemodel (empty, truncated or not a caffemodel)")
    if len(net.layer) and len(net.layers):
        raise CaffemodelError(f"{path}: the caffemodel mixes V1 'layers' and current 'layer' entries")
    return net


@dataclass
class StoredLayer:
    name: str
    type: str
    blobs: list  # BlobProto messages


def caffemodel_layers(net: "proto.NetParameter") -> List[StoredLayer]:
    """(name, modern type, blobs) of every layer of a caffemodel, V1/V0 included."""
    if len(net.layers):
        out = []
        for v1 in net.layers:
            up = upgrade_v1_layer(v1)
            out.append(StoredLayer(up.name, up.type, list(up.blobs)))
        return out
    return [StoredLayer(l.name, l.type, list(l.blobs)) for l in net.layer]


def blob_shape(blob) -> tuple:
    """Caffe's Blob::FromProto shape: the legacy num/channels/height/width when any is
    set, else the shape field."""
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def is_legacy_blob(blob) -> bool:
    return blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width")


def blob_to_array(blob, what: str = "blob") -> np.ndarray:
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise CaffemodelError(f"{what}: negative dimension in shape {shape}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(blob.double_data):
        arr = np.asarray(blob.double_data, dtype=np.float64)
    else:
        arr = np.asarray(blob.data, dtype=np.float32)
    if arr.size != count:
        raise CaffemodelError(
            f"{what}: holds {arr.size} values but its shape {list(shape)} needs {count} (truncated or corrupt)"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        raise CaffemodelError(f"{what}: holds {int(arr.size - finite.sum())} non-finite value(s) (nan or inf); "
                              "weights must be finite numbers")
    return arr.reshape(shape)


def array_to_blob(arr, blob=None):
    """A BlobProto (shape + data) holding `arr`; float64 goes to double_data."""
    a = np.asarray(arr)
    blob = proto.BlobProto() if blob is None else blob
    blob.Clear()
    blob.shape.dim.extend(int(d) for d in a.shape)
    if a.dtype == np.float64:
        blob.double_data.extend(a.ravel().tolist())
    else:
        blob.data.extend(a.astype(np.float32, copy=False).ravel().tolist())
    return blob


def write_binary(message, path: PathLike) -> None:
    """The message's binary form, written atomically (OutputError naming the file when it
    cannot be written; nothing partial is left)."""
    data = message.SerializeToString()
    atomic_write(path, lambda f: f.write(data), OutputError)
