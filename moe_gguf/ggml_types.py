"""ggml tensor type ids, names and block geometry (the facts the GGUF format relies on).

Pure data: the file layer (gguf.py) uses it to size tensors, the ops layer to check arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


@dataclass(frozen=True)
class TypeInfo:
    block_size: int  # elements per block
    block_bytes: int  # bytes per block


TYPE_INFO: dict[int, TypeInfo] = {
    GGMLType.F32: TypeInfo(1, 4),
    GGMLType.F16: TypeInfo(1, 2),
    GGMLType.Q4_0: TypeInfo(32, 18),
    GGMLType.Q4_1: TypeInfo(32, 20),
    GGMLType.Q5_0: TypeInfo(32, 22),
    GGMLType.Q5_1: TypeInfo(32, 24),
    GGMLType.Q8_0: TypeInfo(32, 34),
    GGMLType.Q8_1: TypeInfo(32, 40),
    GGMLType.Q2_K: TypeInfo(256, 84),
    GGMLType.Q3_K: TypeInfo(256, 110),
    GGMLType.Q4_K: TypeInfo(256, 144),
    GGMLType.Q5_K: TypeInfo(256, 176),
    GGMLType.Q6_K: TypeInfo(256, 210),
    GGMLType.Q8_K: TypeInfo(256, 292),
    GGMLType.IQ2_XXS: TypeInfo(256, 66),
    GGMLType.IQ2_XS: TypeInfo(256, 74),
    GGMLType.IQ3_XXS: TypeInfo(256, 98),
    GGMLType.IQ1_S: TypeInfo(256, 50),
    GGMLType.IQ4_NL: TypeInfo(32, 18),
    GGMLType.IQ3_S: TypeInfo(256, 110),
    GGMLType.IQ2_S: TypeInfo(256, 82),
    GGMLType.IQ4_XS: TypeInfo(256, 136),
    GGMLType.I8: TypeInfo(1, 1),
    GGMLType.I16: TypeInfo(1, 2),
    GGMLType.I32: TypeInfo(1, 4),
    GGMLType.I64: TypeInfo(1, 8),
    GGMLType.F64: TypeInfo(1, 8),
    GGMLType.IQ1_M: TypeInfo(256, 56),
    GGMLType.BF16: TypeInfo(1, 2),
    GGMLType.TQ1_0: TypeInfo(256, 54),
    GGMLType.TQ2_0: TypeInfo(256, 66),
    GGMLType.MXFP4: TypeInfo(32, 17),
    GGMLType.NVFP4: TypeInfo(64, 36),
    GGMLType.Q1_0: TypeInfo(128, 18),
}


def type_name(t: int) -> str:
    try:
        return GGMLType(t).name
    except ValueError:
        return f"type{t}"


def row_bytes(t: int, n: int) -> int:
    """Bytes of one row of `n` elements of type `t` (n must be a multiple of the block size)."""
    info = TYPE_INFO[t]
    if n % info.block_size:
        raise ValueError(f"row of {n} elements is not a multiple of {type_name(t)}'s block size {info.block_size}")
    return n // info.block_size * info.block_bytes
