"""Readable PyTorch modules for the four released networks (wsddn_train/deploy,
train_stage1, train_stage2), with the released layer names as parameter names so Caffe
weights load by name. See each module's docstring for its blob flow.

    from prototxt_ports import NetConfig, WSDDN, Student, KDStage1, KDStage2

Every port has param_specs() -> [('layer/i', param, lr_mult, decay_mult)],
param_groups() (for mlic.solver.CaffeSGD), caffe_param_map() -> {(layer, i): param} and
caffe_params() -> {layer: [blobs]}. The ports know no file format: mlic.caffe reads
and writes their weights (load_port, save_port_caffemodel in mlic.caffe.weight_files).
"""
from prototxt_ports.base import CaffePort, caffe_param_map  # noqa: F401
from prototxt_ports.config import RELEASED_MULTIPLIERS, VGG16_BODY, NetConfig  # noqa: F401
from prototxt_ports.kd import KDStage1, KDStage2  # noqa: F401
from prototxt_ports.student import Student  # noqa: F401
from prototxt_ports.vgg import VGG16  # noqa: F401
from prototxt_ports.wsddn import WSDDN, wsddn_to_kd_name  # noqa: F401

__all__ = ["NetConfig", "VGG16_BODY", "RELEASED_MULTIPLIERS", "CaffePort", "caffe_param_map", "VGG16", "WSDDN",
           "Student", "KDStage1", "KDStage2", "wsddn_to_kd_name"]
