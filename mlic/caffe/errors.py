"""Errors of the Caffe interop layer. All are ValueErrors whose message names the file
(and line, where one is known) or the layer at fault."""


class CaffeError(ValueError):
    pass


class PrototxtError(CaffeError):
    """A network or solver definition cannot be parsed."""


class CaffemodelError(CaffeError):
    """A binary caffemodel (or weights file) cannot be read or does not fit the net."""


class NetBuildError(CaffeError):
    """A parsed network cannot be built (unknown layer type, bad wiring, bad params)."""


def where(file, line=None) -> str:
    """'file:line' (or 'file', or '<net>' when neither is known)."""
    if file is None:
        return "<net>" if line is None else f"<net>:{line}"
    return f"{file}:{line}" if line is not None else str(file)
