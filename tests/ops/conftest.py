"""Kernel tests: the `emulated-cuda` device runs the CUDA back end on the host, the
`cuda-nvrtc` device runs CUDA tensors through the NVRTC back end."""
import pytest

from tests.ops.kernel_utils import EMULATED_CUDA, EXT, NVRTC, select_ops


@pytest.fixture(autouse=True)
def _selected_back_end(request):
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec is not None else None
    if device not in (EMULATED_CUDA, NVRTC):
        yield
        return
    if not EXT:
        pytest.skip("the compiled extension mlic._C is not built")
    from mlic.ops import testing

    select_ops(testing.emulated_cuda if device == EMULATED_CUDA else testing.nvrtc)
    try:
        yield
    finally:
        select_ops(None)
