"""cffi build script: compiles every csrc/*.c into the extension module ``moe_gguf._kernels``.

The C declarations given to cffi are read from the one header, csrc/moe_gguf.h, with preprocessor
lines dropped, so each exported function is declared (and documented) exactly once.
SIMD code is selected at run time (per-function target attributes + a CPU check), so the build
itself uses only portable flags and one binary runs on any x86-64 (and the scalar path elsewhere).
"""
from __future__ import annotations

import glob
import os
import platform

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "moe_gguf.h")


def _cdef_from_header(path: str) -> str:
    """The header's declarations for cffi: preprocessor lines and `#ifdef __cplusplus` blocks dropped."""
    lines = []
    skipping = False
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            s = line.strip()
            if s.startswith("#ifdef __cplusplus"):
                skipping = True
            elif skipping and s.startswith("#endif"):
                skipping = False
            elif not skipping and not s.startswith("#"):
                lines.append(line)
    return "".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(HEADER))

_sources = sorted(glob.glob(os.path.join(HERE, "*.c")))
_extra = ["-std=c11", "-O3", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-math-errno", "-pthread"]
if os.environ.get("MOE_GGUF_ASAN"):
    _extra += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
_link = ["-pthread", "-lm"]
if os.environ.get("MOE_GGUF_ASAN"):
    _link += ["-fsanitize=address,undefined"]

ffibuilder.set_source(
    "moe_gguf._kernels",
    '#include "moe_gguf.h"\n',
    sources=[os.path.relpath(s, os.getcwd()) if s.startswith(os.getcwd()) else s for s in _sources],
    include_dirs=[HERE],
    extra_compile_args=_extra,
    extra_link_args=_link,
)

if __name__ == "__main__":  # python csrc/build_ffi.py  -> builds in place into moe_gguf/
    ffibuilder.compile(tmpdir=os.path.join(HERE, ".."), verbose=True)
    print("built for", platform.machine())
