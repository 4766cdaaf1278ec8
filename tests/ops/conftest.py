"""Kernel tests: the `emulated-cuda` device runs the CUDA back end on the host."""
import pytest

from tests.ops.kernel_utils import EMULATED_CUDA, EXT


@pytest.fixture(autouse=True)
def _emulated_cuda(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device") != EMULATED_CUDA:
        yield
        return
    if not EXT:
        pytest.skip("the compiled extension mlic._C is not built")
    import mlic.ops

    with mlic.ops.emulated_cuda():
        assert mlic.ops.backend_for("cpu") == EMULATED_CUDA
        yield
