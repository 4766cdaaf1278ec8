"""mlic: multi-label image classification via knowledge distillation from
weakly-supervised detection, reproducing the authors' Caffe code in PyTorch."""

__version__ = "0.1.0"

from mlic import portable as _portable
from mlic._ext import extension_available, extension_error  # noqa: F401

_portable.apply()

if extension_available():
    # Registers the ops' fake kernels and autograd formulas with the schemas of mlic._C,
    # so torch.ops.mlic.* is differentiable however it is reached.
    from mlic import ops as _ops  # noqa: F401
