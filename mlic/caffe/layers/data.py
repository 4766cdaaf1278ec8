"""Data layers: Input (tops fed by the caller) and the authors' HumanAttData, whose
LayerParameter becomes the data pipeline's HumanAttDataConfig here (the one place that
reads its protobuf fields)."""
from __future__ import annotations

from mlic.caffe.errors import NetBuildError
from mlic.caffe.layers.base import Layer, register
from mlic.data import HumanAttDataConfig, build_loader


@register
class InputLayer(Layer):
    """Tops are fed by the caller (net.forward(**blobs)); shapes from input_param."""

    TYPE = "Input"
    MAX_BOTTOMS = 0
    MIN_TOPS = 1
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        shapes = [tuple(int(d) for d in s.dim) for s in self.lp.input_param.shape]
        nt = len(self.top_names)
        if len(shapes) == 1:
            shapes = shapes * nt
        if len(shapes) != nt:
            raise self.error(
                f"input_param must give one shape, or one per top ({nt}); got {len(self.lp.input_param.shape)}"
            )
        for s in shapes:
            if any(d < 0 for d in s):
                raise self.error(f"negative dimension in input shape {list(s)}")
        return shapes

    def forward(self):
        raise AssertionError("Input tops are fed by the net")


def _human_att_data_fields(lp, where: str):
    """(human_att_data_param, transform_param) of a HumanAttData layer; refuses what the
    pipeline does not support and a label_roi top without its label and box counts."""
    def bad(msg):
        return NetBuildError(f"{where}: layer '{lp.name}' (type HumanAttData): {msg}")

    if not lp.HasField("human_att_data_param"):
        raise bad("human_att_data_param is required")
    hp, tp = lp.human_att_data_param, lp.transform_param
    if len(lp.top) > 1:  # label_roi is N x (att_num + 5 bbox_num): both must be stated
        for name, what in (("att_num", "labels"), ("bbox_num", "boxes")):
            if not hp.HasField(name):
                raise bad(f"human_att_data_param has no {name} (the number of {what} per image, which sizes its "
                          f"top '{lp.top[1]}')")
    if hp.crop_size or tp.crop_size:
        raise bad("crop_size is not supported by this data layer")
    if hp.mean_file or tp.mean_file:
        raise bad("mean_file is not supported; give transform_param.mean_value")
    if not hp.is_color:
        raise bad("is_color: false is not supported (colour images only)")
    if hp.rand_skip:
        raise bad("rand_skip is not supported")
    return hp, tp


def human_att_data_config(lp, where: str = "<net>", **overrides) -> HumanAttDataConfig:
    """The data pipeline's settings of a HumanAttData LayerParameter (human_att_data_param
    and transform_param); `overrides` replace fields (e.g. a source resolved elsewhere).
    The transformer's scale is transform_param.scale; human_att_data_param's own `scale`
    is honoured only when the transform one is absent."""
    hp, tp = _human_att_data_fields(lp, where)
    kw = dict(source=hp.source, root_folder=hp.root_folder, batch_size=hp.batch_size, shuffle=hp.shuffle,
              new_width=hp.new_width, new_height=hp.new_height, scale_factors=tuple(hp.scale_factors),
              att_num=hp.att_num if hp.HasField("att_num") else None,
              bbox_num=hp.bbox_num if hp.HasField("bbox_num") else None,
              mirror=tp.mirror, mean_values=tuple(tp.mean_value))
    if tp.HasField("scale"):
        kw["scale"] = tp.scale
    elif hp.HasField("scale"):
        kw["scale"] = hp.scale
    kw.update(overrides)
    try:
        return HumanAttDataConfig(**kw)
    except ValueError as exc:
        raise NetBuildError(f"{where}: layer '{lp.name}' (type HumanAttData): {exc}") from None


@register
class HumanAttDataLayer(Layer):
    """The authors' data layer. Its tops (data, label_roi) can always be fed directly;
    otherwise batches come from mlic.data (a loader built from this layer's params)."""

    TYPE = "HumanAttData"
    MAX_BOTTOMS = 0
    MIN_TOPS, MAX_TOPS = 1, 2
    EXACT = True

    def setup(self, bottom_shapes, ctx):
        hp, _ = _human_att_data_fields(self.lp, self._where)
        if hp.batch_size < 1:
            raise self.error("human_att_data_param.batch_size must be >= 1")
        if hp.new_height < 1 or hp.new_width < 1:
            raise self.error("human_att_data_param.new_height and new_width must be set (blob shapes are fixed "
                             "when the net is built)")
        self.data_dir = ctx.data_dir
        self.data_seed = ctx.data_seed
        self._stream = None
        n = hp.batch_size
        shapes = [(n, 3, hp.new_height, hp.new_width)]
        if len(self.top_names) > 1:
            shapes.append((n, hp.att_num + 5 * hp.bbox_num))
        return shapes

    def next_batch(self, device=None):
        if self._stream is None:
            try:
                loader = build_loader(human_att_data_config(self.lp, self._where), base_dir=self.data_dir,
                                      seed=self.data_seed)
            except (ValueError, OSError) as exc:
                raise self.runtime_error(f"cannot build its data loader: {exc}") from None
            self._stream = iter(loader.iter_steps(0))
        batch = next(self._stream)
        tops = [batch.data, batch.label_roi][: len(self.top_names)]
        return [t.to(device) if device is not None else t for t in tops]

    def reset_data(self):
        self._stream = None

    def forward(self):
        raise AssertionError("data tops are produced by the net")
