"""Loading of the compiled extension ``mlic._C``.

``import mlic`` must work without it; the ops then raise :class:`ExtensionNotBuilt`.
"""
import importlib

BUILD_HINT = (
    "build it with `make build` in the repository, or `pip install -e . --no-build-isolation`, "
    "or `python setup.py build_ext --inplace` (set MLIC_CPU_ONLY=1 to skip the CUDA kernels)"
)


class ExtensionNotBuilt(RuntimeError):
    pass


_C = None
_error = None
try:
    import torch  # noqa: F401  (loads libtorch before our library)

    _C = importlib.import_module("mlic._C")
except Exception as exc:  # ImportError, or an OSError from a stale build
    _error = exc


def extension_available() -> bool:
    return _C is not None


def extension_error():
    return _error


def extension_has_cuda() -> bool:
    return _C is not None and bool(_C.compiled_with_cuda())


def require_extension(what: str = "this op"):
    if _C is None:
        raise ExtensionNotBuilt(
            f"{what} needs the compiled extension mlic._C, which could not be loaded "
            f"({type(_error).__name__}: {_error}); {BUILD_HINT}"
        )
    return _C
