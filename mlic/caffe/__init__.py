"""Caffe interop: the prototxt/caffemodel schema, a net builder running Caffe network
definitions as PyTorch modules, weight conversion, and comparison against Caffe outputs."""
from mlic.caffe.errors import CaffeError, CaffemodelError, NetBuildError, PrototxtError  # noqa: F401
from mlic.caffe.io import NetSpec, load_net_spec, read_caffemodel, read_solver  # noqa: F401
from mlic.caffe.layers import supported_layer_types  # noqa: F401
from mlic.caffe.net import CaffeNet  # noqa: F401
from mlic.caffe.weights import (LoadReport, caffemodel_to_param_dict, load_caffemodel,  # noqa: F401
                                load_param_dict, load_weights, net_to_caffemodel, read_param_dict,
                                save_caffemodel, save_param_dict)
