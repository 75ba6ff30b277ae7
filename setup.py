"""Build hook: the C kernels in csrc/ are compiled through cffi (out-of-line API mode) at install time."""
from setuptools import setup

setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"])
