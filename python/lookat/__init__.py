"""lookat: attention over a product-quantized key cache, as an ONNX Runtime custom-op library.

    import lookat, onnxruntime as ort
    session = ort.InferenceSession("model.onnx", lookat.session_options())

The wheel holds the plugin (``liblookat_op.so``, registering ``com.lookat::LookatAttention``), the
command-line tools ``lookat-rewrite``, ``lookat-calibrate``, ``lookat-generate`` and
``lookat-eval`` (console entry points that run the packaged binaries with this interpreter's
onnxruntime), and this module.
"""

import os

from ._version import MIN_ONNXRUNTIME, __version__

__all__ = ["__version__", "MIN_ONNXRUNTIME", "get_library_path", "session_options"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_library_path():
    """The absolute path of the packaged plugin, for ``SessionOptions.register_custom_ops_library``
    (or for copying to a C/C++ host)."""
    path = os.path.join(_HERE, "liblookat_op.so")
    if not os.path.isfile(path):
        raise FileNotFoundError("the lookat plugin is missing from the installed package: " + path)
    return path


def session_options(options=None):
    """``options`` (a new ``onnxruntime.SessionOptions`` when None) with the plugin registered.

    Register it once per SessionOptions: onnxruntime refuses a second registration of the same
    domain on one object."""
    import onnxruntime

    if options is None:
        options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options
