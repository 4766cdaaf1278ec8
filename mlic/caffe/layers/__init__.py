"""Caffe layers as PyTorch modules (SPEC section 3), one module per family as in Caffe:
data, utility (blob plumbing), vision, rois (the fork's), neuron, common, loss.

Each layer is built from its LayerParameter and the shapes of its bottoms (Caffe's
SetUp: the parameter blobs are created and filled here), and runs
``forward(*bottoms) -> list of tops``. The net (mlic.caffe.net) handles wiring, phases,
propagate_down, loss weights and in-place blobs. A layer type is registered in LAYERS
by its family's module, all of which are imported here.

The Pooling, SPP and ROIPooling layers run ``mlic.ops`` on the back end the net was built
with (BuildContext.ops_backend; the compiled extension by default, and without it the
layers that need it raise an error that says how to build it).
"""
from mlic.caffe.layers import common, loss, neuron, rois, utility, vision  # noqa: F401  (registers them)
from mlic.caffe.layers.base import LAYERS, BuildContext, Layer, supported_layer_types  # noqa: F401
from mlic.caffe.layers.data import HumanAttDataLayer, InputLayer, human_att_data_config  # noqa: F401
