"""Console entry points: each runs the packaged binary of the same name (next to the plugin in
this package) in place of this process.

The binaries find ONNX Runtime by asking ``$LOOKAT_PYTHON`` for its onnxruntime package, so the
entry point sets ``LOOKAT_PYTHON`` to this interpreter (whose environment has the onnxruntime this
package depends on) and ``LOOKAT_OP_LIB`` to the packaged plugin: nothing to configure. An explicit
``--ort-lib`` / ``ORT_DYLIB_PATH`` (ONNX Runtime) or ``--op-lib`` (plugin) still takes precedence.
"""

import os
import sys

from . import get_library_path

_HERE = os.path.dirname(os.path.abspath(__file__))


def _exec(tool):
    exe = os.path.join(_HERE, tool)
    if not os.path.isfile(exe):
        sys.exit("{}: the binary is missing from the installed lookat package: {}".format(tool, exe))
    if not os.access(exe, os.X_OK):
        sys.exit("{}: {} is not executable (did the installer drop the wheel's file modes?)".format(tool, exe))
    env = dict(os.environ)
    if sys.executable:
        env["LOOKAT_PYTHON"] = sys.executable
    env["LOOKAT_OP_LIB"] = get_library_path()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, [tool] + sys.argv[1:], env)


def rewrite():
    _exec("lookat-rewrite")


def calibrate():
    _exec("lookat-calibrate")


def generate():
    _exec("lookat-generate")


def evaluate():
    _exec("lookat-eval")


def tokenize():
    _exec("lookat-tokenize")


# The console entry points (name = lookat._cli:function), read by the wheel builder.
ENTRY_POINTS = {
    "lookat-rewrite": "rewrite",
    "lookat-calibrate": "calibrate",
    "lookat-generate": "generate",
    "lookat-eval": "evaluate",
    "lookat-tokenize": "tokenize",
}
