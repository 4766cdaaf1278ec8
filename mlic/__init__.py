"""mlic: multi-label image classification via knowledge distillation from
weakly-supervised detection, reproducing the authors' Caffe code in PyTorch."""

__version__ = "0.1.0"

from mlic._ext import extension_available, extension_error  # noqa: F401
