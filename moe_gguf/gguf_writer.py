"""GGUF v3 writer: typed metadata, aligned tensors streamed to disk one at a time, atomic output.

    with GGUFWriter("out.gguf") as w:
        w.add("general.architecture", "deepseek2")
        w.add("deepseek2.block_count", 27, ValueType.UINT32)
        w.add("deepseek2.expert_used_count", [6] * 27, (ValueType.ARRAY, ValueType.UINT32))
        w.add_tensor("output_norm.weight", np.ones(2048, np.float32))              # F32 from the array
        w.add_tensor("blk.0.ffn_down.weight", lambda: quantize_down(0),             # produced only when written
                     ggml_type=GGMLType.Q4_K, shape=(2048, 10944))                  # logical numpy shape
    # leaving the block writes the file; an exception inside it leaves no file behind

The file is written under a temporary name in the same directory and renamed into place only when complete,
so a reader never sees a half-written file. Tensor data can be a numpy array or a zero-argument callable that
returns one (or an iterator of chunks): a callable is called only when its tensor is written, and its result is
dropped right after, so a converter never holds more than one tensor in memory; an iterator of chunks (e.g. row
groups as they are quantized) holds less still. `add_tensor_info` + `write_tensor_data` stream explicitly.

Value types (ValueType from moe_gguf.gguf): scalars take an id, arrays a tuple (ARRAY, elem) and nested arrays
(ARRAY, ARRAY, ..., elem), the same form `GGUFFile.type_spec(key)` returns. Without a type: bool -> BOOL,
int -> UINT32 when 0 <= v < 2**32 (llama.cpp reads most integer keys as u32), else INT32/INT64/UINT64; float ->
FLOAT32; str -> STRING; numpy scalars/arrays -> their dtype; lists -> ARRAY of the inferred element type.
"""
from __future__ import annotations

import math
import os
import struct
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import numpy as np

from .ggml_types import TYPE_INFO, GGMLType, type_name
from .gguf import _SCALAR_DTYPE as _DTYPE
from .gguf import DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS, MAX_NESTING, VALUE_TYPE_NAMES, ValueType

TypeSpec = Union[int, Sequence[int]]
TensorData = Union[np.ndarray, bytes, bytearray, memoryview, Iterator[Any], Callable[[], Any]]

MAX_TENSOR_NAME_BYTES = 63  # llama.cpp's GGML_MAX_NAME is 64 including the NUL
MAX_KEY_BYTES = 65535

_INT_RANGES: dict[int, tuple[int, int]] = {
    ValueType.UINT8: (0, (1 << 8) - 1),
    ValueType.INT8: (-(1 << 7), (1 << 7) - 1),
    ValueType.UINT16: (0, (1 << 16) - 1),
    ValueType.INT16: (-(1 << 15), (1 << 15) - 1),
    ValueType.UINT32: (0, (1 << 32) - 1),
    ValueType.INT32: (-(1 << 31), (1 << 31) - 1),
    ValueType.UINT64: (0, (1 << 64) - 1),
    ValueType.INT64: (-(1 << 63), (1 << 63) - 1),
}
_FROM_NUMPY: dict[str, int] = {
    "u1": ValueType.UINT8,
    "i1": ValueType.INT8,
    "u2": ValueType.UINT16,
    "i2": ValueType.INT16,
    "u4": ValueType.UINT32,
    "i4": ValueType.INT32,
    "f4": ValueType.FLOAT32,
    "b1": ValueType.BOOL,
    "u8": ValueType.UINT64,
    "i8": ValueType.INT64,
    "f8": ValueType.FLOAT64,
}
# tensor types a numpy dtype maps to by default, and the dtype each non-block type is written from
_TENSOR_FROM_DTYPE: dict[str, int] = {
    "f4": GGMLType.F32,
    "f2": GGMLType.F16,
    "f8": GGMLType.F64,
    "i1": GGMLType.I8,
    "i2": GGMLType.I16,
    "i4": GGMLType.I32,
    "i8": GGMLType.I64,
}
_TENSOR_DTYPE: dict[int, str] = {
    GGMLType.F32: "<f4",
    GGMLType.F16: "<f2",
    GGMLType.F64: "<f8",
    GGMLType.I8: "<i1",
    GGMLType.I16: "<i2",
    GGMLType.I32: "<i4",
    GGMLType.I64: "<i8",
    GGMLType.BF16: "<u2",
}


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even; NaNs stay (quiet) NaNs."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    out = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded)
    return out.astype(np.uint16)


@dataclass
class _Tensor:
    name: str
    ne: tuple[int, ...]
    ggml_type: int
    nbytes: int
    data: Any  # ndarray / callable / None (to be given to write_tensor_data)
    offset: int = 0


class GGUFWriter:
    """Writes one GGUF v3 file. See the module docstring for the model of use."""

    def __init__(self, path: str | os.PathLike[str], *, alignment: int = DEFAULT_ALIGNMENT, fsync: bool = True) -> None:
        self.path = os.fspath(path)
        self._check_alignment(alignment)
        self.alignment = alignment
        self.fsync = fsync
        self._kv: dict[str, tuple[tuple[int, ...], bytes]] = {}
        self._tensors: dict[str, _Tensor] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._next = 0  # index in _order of the next tensor whose data is due
        self._file: BinaryIO | None = None
        self._tmp: str | None = None
        self._pos = 0
        self._data_pos = 0
        self._state = "open"  # open -> writing -> done | aborted

    # ------------------------------------------------------------------ metadata
    def add(self, key: str, value: Any, vtype: TypeSpec | None = None) -> None:
        """Add a metadata key. `vtype` is a ValueType id, or a tuple (ARRAY, ..., elem) for arrays; inferred if None."""
        self._require("open", "add metadata")
        kb = self._check_key(key)
        if key in self._kv:
            raise ValueError(f"duplicate metadata key {key!r}")
        spec = _normalize_spec(vtype) if vtype is not None else _infer_spec(value, key)
        out: list[bytes] = []
        _encode_value(value, spec, key, out, 0)
        if key == "general.alignment":
            if spec[0] not in _INT_RANGES:
                raise ValueError("general.alignment must be an integer (ValueType.UINT32)")
            self._check_alignment(int(value))
            if self._tensors and int(value) != self.alignment:
                raise ValueError("set general.alignment before adding tensors")
            self.alignment = int(value)
        self._kv[key] = (spec, struct.pack("<Q", len(kb)) + kb + struct.pack("<I", spec[0]) + b"".join(out))

    def add_array(self, key: str, values: Any, elem_type: int | None = None) -> None:
        """Add an array; `elem_type` a ValueType id (inferred if None)."""
        self.add(key, values, None if elem_type is None else (ValueType.ARRAY, elem_type))

    # ------------------------------------------------------------------ tensors
    def add_tensor(
        self,
        name: str,
        data: TensorData,
        *,
        ggml_type: int | None = None,
        shape: Sequence[int] | None = None,
    ) -> None:
        """Add a tensor. `data`: a numpy array, a bytes-like object of raw blocks, an iterator of chunks (arrays or
        bytes, consumed while the tensor is written: e.g. quantized row groups), or a zero-argument callable
        returning any of these (called only when the tensor is written).

        - float32/float16/float64/int8..int64 arrays default to F32/F16/F64/I8..I64 with the array's shape;
          a float32 array can also be written as F16 or BF16 (rounded to nearest even); BF16 also takes uint16 bits.
        - block (quantized) types take raw bytes (uint8 array or bytes) plus `shape`, the logical numpy shape
          (e.g. (n_rows, n_cols)); the byte count must match the type and shape.
        - `shape` and `ggml_type` are required when `data` is a callable, an iterator or raw bytes; the bytes
          actually produced are checked against them (a mismatch raises and leaves no file).
        """
        self._require("open", "add tensors")
        if (callable(data) and not isinstance(data, np.ndarray)) or isinstance(data, Iterator):
            if ggml_type is None or shape is None:
                raise ValueError(f"tensor {name!r}: a callable or an iterator needs ggml_type= and shape=")
            self._declare(name, tuple(shape), ggml_type, data)
            return
        arr = _as_array(data, name)
        if ggml_type is None:
            ggml_type = _TENSOR_FROM_DTYPE.get(arr.dtype.str[1:])
            if ggml_type is None:
                raise TypeError(f"tensor {name!r}: cannot infer a ggml type from dtype {arr.dtype}; pass ggml_type=")
        if shape is None:
            if ggml_type in TYPE_INFO and TYPE_INFO[ggml_type].block_size != 1:
                raise ValueError(f"tensor {name!r}: {type_name(ggml_type)} data needs shape= (the logical shape)")
            shape = arr.shape
        t = self._declare(name, tuple(shape), ggml_type, None)
        t.data = _Ready(_tensor_bytes(arr, t))  # checked now: errors surface at add time, not in mid-write

    def add_tensor_info(self, name: str, shape: Sequence[int], ggml_type: int) -> None:
        """Declare a tensor whose data will be given later, in declaration order, by `write_tensor_data`."""
        self._require("open", "add tensors")
        self._declare(name, tuple(shape), ggml_type, None)

    def write_tensor_data(self, name: str, data: TensorData) -> None:
        """Write the data (an array, bytes, or an iterable of chunks) of a tensor declared with `add_tensor_info`.
        Tensors are written in declaration order; any earlier tensors that carry their own data are written first."""
        if self._state == "open":
            self.write_header()
        self._require("writing", "write tensor data")
        t = self._tensors.get(name)
        if t is None:
            raise KeyError(f"no tensor {name!r} was declared")
        if self._index[name] < self._next:
            raise ValueError(f"tensor {name!r} was already written")
        try:
            self._flush_until(name)
            self._write_tensor(t, data)
        except BaseException:
            self.abort()  # the file is inconsistent now: nothing of it is kept
            raise

    # ------------------------------------------------------------------ file
    def write_header(self) -> None:
        """Open the temporary file and write the header, metadata and tensor infos (done automatically)."""
        self._require("open", "write the header")
        kv = dict(self._kv)
        if self.alignment != DEFAULT_ALIGNMENT and "general.alignment" not in kv:
            kb = b"general.alignment"
            kv["general.alignment"] = (
                (ValueType.UINT32,),
                struct.pack("<Q", len(kb)) + kb + struct.pack("<II", ValueType.UINT32, self.alignment),
            )
        parts = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(self._order), len(kv))]
        parts += [blob for _, blob in kv.values()]
        offset = 0
        for name in self._order:
            t = self._tensors[name]
            t.offset = offset
            offset = _pad(offset + t.nbytes, self.alignment)
            nb = name.encode("utf-8")
            parts.append(struct.pack("<Q", len(nb)) + nb + struct.pack(f"<I{len(t.ne)}QIQ", len(t.ne), *t.ne, t.ggml_type, t.offset))
        header = b"".join(parts)
        directory, base = os.path.split(os.path.abspath(self.path))
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        self._tmp = tmp
        self._file = os.fdopen(fd, "wb")
        self._state = "writing"
        try:
            self._file.write(header)
            self._pos = len(header)
            if self._order:  # a file without tensors ends right after its header, as llama.cpp writes it
                self._write_padding()
            self._data_pos = self._pos
        except BaseException:
            self.abort()
            raise

    def finish(self) -> None:
        """Write all remaining tensors, then move the file into place. Any error removes the temporary file."""
        if self._state == "done":
            return
        if self._state == "open":
            self.write_header()
        self._require("writing", "finish")
        try:
            self._flush_until(None)
            assert self._file is not None and self._tmp is not None
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.path)
            self._tmp = None
            self._state = "done"
        except BaseException:
            self.abort()
            raise

    close = finish

    def abort(self) -> None:
        """Discard everything written so far (no output file is created)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None
        if self._state != "done":
            self._state = "aborted"

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "writing":
            self.abort()

    def __enter__(self) -> "GGUFWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    # ------------------------------------------------------------------ internals
    def _require(self, state: str, what: str) -> None:
        if self._state != state:
            raise RuntimeError(f"cannot {what}: the writer is {self._state!r}")

    @staticmethod
    def _check_alignment(a: int) -> None:
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1) or a > 1 << 30:
            raise ValueError(f"alignment must be a power of two, got {a!r}")

    @staticmethod
    def _check_key(key: str) -> bytes:
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key must be a non-empty str, got {key!r}")
        kb = key.encode("utf-8")
        if len(kb) > MAX_KEY_BYTES:
            raise ValueError(f"metadata key of {len(kb)} bytes is longer than {MAX_KEY_BYTES}")
        return kb

    def _declare(self, name: str, shape: tuple[int, ...], ggml_type: int, data: Any) -> _Tensor:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor name must be a non-empty str, got {name!r}")
        nb = len(name.encode("utf-8"))
        if nb > MAX_TENSOR_NAME_BYTES:
            raise ValueError(f"tensor name {name!r} is {nb} bytes; llama.cpp allows at most {MAX_TENSOR_NAME_BYTES}")
        if name in self._tensors:
            raise ValueError(f"duplicate tensor name {name!r}")
        ggml_type = int(ggml_type)
        if ggml_type not in TYPE_INFO:
            raise ValueError(f"tensor {name!r}: unknown ggml type {ggml_type}")
        if not 1 <= len(shape) <= MAX_DIMS:
            raise ValueError(f"tensor {name!r}: shape {shape} must have 1..{MAX_DIMS} dimensions")
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
            raise ValueError(f"tensor {name!r}: shape {shape} must be non-negative integers")
        ne = tuple(int(d) for d in reversed(shape))
        info = TYPE_INFO[ggml_type]
        if ne[0] % info.block_size:
            raise ValueError(
                f"tensor {name!r}: row length {ne[0]} is not a multiple of {type_name(ggml_type)}'s block size "
                f"{info.block_size}"
            )
        n_el = math.prod(ne)
        if n_el >= 1 << 63:
            raise ValueError(f"tensor {name!r}: shape {shape} has too many elements")
        t = _Tensor(name, ne, ggml_type, n_el // info.block_size * info.block_bytes, data)
        self._tensors[name] = t
        self._index[name] = len(self._order)
        self._order.append(name)
        return t

    def _flush_until(self, stop: str | None) -> None:
        """Write, in order, the tensors before `stop` (all if None); each must carry its data."""
        while self._next < len(self._order):
            name = self._order[self._next]
            if name == stop:
                return
            t = self._tensors[name]
            if t.data is None:
                raise ValueError(f"tensor {name!r} was declared but its data was never written")
            self._write_tensor(t, t.data)

    def _write_tensor(self, t: _Tensor, data: Any) -> None:
        assert self._file is not None
        if self._pos - self._data_pos != t.offset:  # pragma: no cover - internal invariant
            raise RuntimeError("internal error: tensor data out of place")
        t.data = None  # drop our reference: the caller's array can be freed once written
        if callable(data) and not isinstance(data, np.ndarray):
            data = data()
        if isinstance(data, _Ready):
            chunks: Any = [data.view]
        elif isinstance(data, (np.ndarray, bytes, bytearray, memoryview)):
            chunks = [_tensor_bytes(_as_array(data, t.name), t)]
        elif hasattr(data, "__iter__"):  # an iterable of chunks (arrays or bytes), written as they come
            chunks = (_chunk_bytes(_as_array(c, t.name), t) for c in data)
        else:
            raise TypeError(f"tensor {t.name!r}: data must be an array, bytes, chunks or a callable, "
                            f"got {type(data).__name__}")
        n = 0
        for mv in chunks:
            n += mv.nbytes
            if n > t.nbytes:
                raise ValueError(f"tensor {t.name!r}: chunks give more than the {t.nbytes} bytes it needs")
            self._file.write(mv)
        if n != t.nbytes:
            raise ValueError(f"tensor {t.name!r}: chunks give {n} bytes, it needs {t.nbytes}")
        self._pos += t.nbytes
        self._next += 1
        self._write_padding()

    def _write_padding(self) -> None:
        """Pad to the alignment: the data section starts aligned in the file and each tensor's data is padded."""
        assert self._file is not None
        pad = _pad(self._pos, self.alignment) - self._pos
        if pad:
            self._file.write(b"\0" * pad)
            self._pos += pad


def _as_array(data: Any, name: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    raise TypeError(f"tensor {name!r}: data must be a numpy array, bytes or a callable, got {type(data).__name__}")


@dataclass(frozen=True)
class _Ready:
    """Tensor bytes already checked against their tensor (by add_tensor)."""

    view: memoryview


def _chunk_bytes(arr: np.ndarray, t: _Tensor) -> memoryview:
    """Convert (F32 -> F16/BF16) and type-check `arr` for tensor `t`; its little-endian bytes."""
    gt = t.ggml_type
    if gt == GGMLType.BF16 and arr.dtype == np.float32:
        arr = f32_to_bf16_bits(arr)
    elif gt == GGMLType.F16 and arr.dtype == np.float32:
        arr = arr.astype(np.float16)
    want = _TENSOR_DTYPE.get(gt)
    raw = arr.dtype == np.uint8 and gt != GGMLType.I8  # raw bytes are accepted for every type
    if want is not None and not raw and arr.dtype.newbyteorder("<") != np.dtype(want):
        raise TypeError(f"tensor {t.name!r}: {type_name(gt)} data must be {np.dtype(want)}, got {arr.dtype}")
    if want is None and not raw:
        raise TypeError(f"tensor {t.name!r}: {type_name(gt)} data must be raw uint8 blocks, got {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(arr.reshape(-1).view(np.uint8))


def _tensor_bytes(arr: np.ndarray, t: _Tensor) -> memoryview:
    """Check `arr` against the declared tensor (type, element count, byte count); the exact bytes to write."""
    mv = _chunk_bytes(arr, t)
    shape = tuple(reversed(t.ne))
    if arr.dtype != np.uint8 and TYPE_INFO[t.ggml_type].block_size == 1 and arr.size != math.prod(t.ne):
        raise ValueError(f"tensor {t.name!r}: {arr.size} elements do not fit shape {shape}")
    if mv.nbytes != t.nbytes:
        raise ValueError(
            f"tensor {t.name!r}: {mv.nbytes} bytes given, {type_name(t.ggml_type)} of shape {shape} needs {t.nbytes}"
        )
    return mv


# ---------------------------------------------------------------------- metadata encoding
def _normalize_spec(vtype: TypeSpec) -> tuple[int, ...]:
    spec = (int(vtype),) if isinstance(vtype, (int, np.integer)) else tuple(int(v) for v in vtype)
    if not spec:
        raise ValueError("empty value type")
    for v in spec:
        if v not in VALUE_TYPE_NAMES:
            raise ValueError(f"unknown GGUF value type {v}")
    if any(v != ValueType.ARRAY for v in spec[:-1]):
        raise ValueError(f"value type {spec}: only ARRAY may be followed by an element type")
    if spec == (ValueType.ARRAY,):
        raise ValueError("value type (ARRAY,): an array needs an element type, e.g. (ValueType.ARRAY, ValueType.UINT32)")
    # a spec ending in ARRAY (inner type unknown) can only describe an empty array: checked when encoding
    if len(spec) - 1 > MAX_NESTING:
        raise ValueError(f"value type {spec}: arrays nest at most {MAX_NESTING} deep")
    return spec


def _infer_scalar(v: Any, key: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        return ValueType.BOOL
    if isinstance(v, np.generic):
        t = _FROM_NUMPY.get(v.dtype.str[1:])
        if t is None:
            raise TypeError(f"{key!r}: no GGUF type for numpy {v.dtype}")
        return t
    if isinstance(v, int):
        if 0 <= v < 1 << 32:
            return ValueType.UINT32
        if -(1 << 31) <= v < 0:
            return ValueType.INT32
        if -(1 << 63) <= v < 0:
            return ValueType.INT64
        if v < 1 << 64:
            return ValueType.UINT64
        raise ValueError(f"{key!r}: integer {v} does not fit 64 bits")
    if isinstance(v, float):
        return ValueType.FLOAT32
    if isinstance(v, str):
        return ValueType.STRING
    raise TypeError(f"{key!r}: cannot infer a GGUF type for {type(v).__name__}; pass vtype=")


def _infer_spec(value: Any, key: str, depth: int = 0) -> tuple[int, ...]:
    if depth > MAX_NESTING:
        raise ValueError(f"{key!r}: arrays nest more than {MAX_NESTING} deep")
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"{key!r}: numpy array values must be 1-D, got shape {value.shape}")
        if value.dtype.kind in "US":
            return (ValueType.ARRAY, ValueType.STRING)
        t = _FROM_NUMPY.get(value.dtype.str[1:])
        if t is None:
            raise TypeError(f"{key!r}: no GGUF type for numpy {value.dtype}")
        return (ValueType.ARRAY, t)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{key!r}: pass vtype= for an empty array")
        if isinstance(value[0], (list, tuple, np.ndarray)):
            return (ValueType.ARRAY, *_infer_spec(value[0], key, depth + 1))
        kinds = {_infer_scalar(v, key) for v in value}
        if kinds <= {ValueType.UINT32, ValueType.INT32}:
            t = ValueType.INT32 if all(-(1 << 31) <= v < 1 << 31 for v in value) else ValueType.INT64
        elif kinds <= {ValueType.UINT32, ValueType.INT32, ValueType.INT64}:
            t = ValueType.INT64
        elif len(kinds) == 1:
            (t,) = kinds
        elif kinds <= {ValueType.UINT32, ValueType.INT32, ValueType.INT64, ValueType.FLOAT32}:
            t = ValueType.FLOAT32
        else:
            raise TypeError(f"{key!r}: array mixes value kinds; pass vtype=")
        return (ValueType.ARRAY, t)
    return (_infer_scalar(value, key),)


def _encode_value(value: Any, spec: tuple[int, ...], key: str, out: list[bytes], depth: int) -> None:
    t = spec[0]
    if t == ValueType.STRING:
        if not isinstance(value, str):
            raise TypeError(f"{key!r}: a STRING value must be str, got {type(value).__name__}")
        b = value.encode("utf-8")
        out.append(struct.pack("<Q", len(b)))
        out.append(b)
        return
    if t == ValueType.ARRAY:
        if depth >= MAX_NESTING:
            raise ValueError(f"{key!r}: arrays nest more than {MAX_NESTING} deep")
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(f"{key!r}: an ARRAY value must be a list, tuple or 1-D numpy array")
        et = spec[1]
        out.append(struct.pack("<IQ", et, len(value)))
        if et == ValueType.STRING:
            for i, s in enumerate(value):
                if not isinstance(s, str):
                    raise TypeError(f"{key!r}: element {i} of a string array is {type(s).__name__}")
            enc = [s.encode("utf-8") for s in value]
            out.append(b"".join(struct.pack("<Q", len(b)) + b for b in enc))
            return
        if et == ValueType.ARRAY:
            if len(spec) == 2 and len(value):
                raise ValueError(f"{key!r}: value type {spec} lacks the element type of the inner arrays")
            for v in value:
                _encode_value(v, spec[1:], key, out, depth + 1)
            return
        out.append(_encode_numbers(value, et, key))
        return
    out.append(_encode_numbers([value], t, key, scalar=True))


def _encode_numbers(values: Any, t: int, key: str, scalar: bool = False) -> bytes:
    """Little-endian bytes of numbers of value type `t`, after checking their kind and range."""
    what = "value" if scalar else "array elements"
    name = VALUE_TYPE_NAMES[t]
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{key!r}: {what} must be a flat sequence, got shape {values.shape}")
        kind = values.dtype.kind
        if t == ValueType.BOOL:
            if kind != "b" and not (kind in "iu" and np.isin(values, (0, 1)).all()):
                raise TypeError(f"{key!r}: BOOL {what} must be bools (or 0/1)")
        elif t in (ValueType.FLOAT32, ValueType.FLOAT64):
            if kind not in "iuf":
                raise TypeError(f"{key!r}: {name} {what} must be numbers, got {values.dtype}")
        else:
            if kind not in "iu":
                raise TypeError(f"{key!r}: {name} {what} must be integers, got {values.dtype}")
            lo, hi = _INT_RANGES[t]
            if values.size and (int(values.min()) < lo or int(values.max()) > hi):
                raise ValueError(f"{key!r}: {what} out of range for {name} [{lo}, {hi}]")
        return values.astype(_DTYPE[t]).tobytes()
    vals = list(values)
    if t == ValueType.BOOL:
        if not all(isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)) for v in vals):
            raise TypeError(f"{key!r}: BOOL {what} must be bools (or 0/1)")
    elif t in (ValueType.FLOAT32, ValueType.FLOAT64):
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                   for v in vals):
            raise TypeError(f"{key!r}: {name} {what} must be numbers")
    else:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in vals):
            raise TypeError(f"{key!r}: {name} {what} must be integers")
        lo, hi = _INT_RANGES[t]
        if any(v < lo or v > hi for v in vals):
            raise ValueError(f"{key!r}: {what} out of range for {name} [{lo}, {hi}]")
        vals = [int(v) for v in vals]
    return np.array(vals, dtype=_DTYPE[t]).tobytes()
