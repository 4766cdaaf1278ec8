"""Back ends the tests select by name, beside the library's own dispatch:

- :data:`emulated_cuda`: the CUDA back end's host side and kernels run on the host for
  CPU tensors (blocks and threads emulated; slow). It checks the CUDA code's indexing,
  launch geometry and arithmetic on a machine without a GPU (not CUDA's own ``expf`` or
  its scheduling). Operators ``torch.ops.mlic_emulated_cuda.*``.
- :data:`nvrtc`: CUDA tensors through the NVRTC back end even when the extension has
  compiled CUDA kernels (to compare the two on a GPU). Operators ``torch.ops.mlic_nvrtc.*``.

Each is a namespace with the public op functions of mlic.ops (roi_pool, roi_spp, spp,
caffe_pool2d, wsddn_two_stream), differentiable like them.
"""
from mlic.ops import bind

emulated_cuda = bind("mlic_emulated_cuda")
nvrtc = bind("mlic_nvrtc")

__all__ = ["emulated_cuda", "nvrtc"]
