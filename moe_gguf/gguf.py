"""GGUF reader: memory-maps a file and exposes its metadata and tensors as zero-copy numpy views.

Layout (little-endian): magic "GGUF", u32 version (2 or 3), u64 tensor_count, u64 kv_count, then kv_count
metadata entries, tensor_count tensor infos, padding to `general.alignment`, and the data section.
Every problem with a file raises GGUFError with the byte offset where it was found.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ggml_types import TYPE_INFO, GGMLType, type_name

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32


class GGUFError(Exception):
    """Raised for any malformed, truncated or unsupported GGUF file."""


class ValueType:
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FMT: dict[int, str] = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<B",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}
_SCALAR_DTYPE: dict[int, str] = {
    ValueType.UINT8: "<u1",
    ValueType.INT8: "<i1",
    ValueType.UINT16: "<u2",
    ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4",
    ValueType.INT32: "<i4",
    ValueType.FLOAT32: "<f4",
    ValueType.BOOL: "<u1",
    ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8",
    ValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's description. `ne` is ggml order (ne[0] = contiguous row); `shape` is numpy order."""

    name: str
    ne: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


class _Cursor:
    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf: Any, pos: int, size: int) -> None:
        self.buf = buf
        self.pos = pos
        self.size = size

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"truncated file: {what} needs {n} bytes at offset {self.pos}, file is {self.size} bytes")

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", 8, what))

    def string(self, what: str) -> str:
        start = self.pos
        n = self.u64(f"{what} length")
        if n > self.size - self.pos:
            raise GGUFError(f"{what} length {n} at offset {start} runs past the end of the file ({self.size} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")


class GGUFFile:
    """A memory-mapped GGUF file. `metadata` maps keys to Python values (arrays of numbers as numpy arrays,
    arrays of strings as lists); `tensors` maps names to TensorInfo; `tensor(name)` returns a zero-copy view."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise GGUFError(f"cannot open {self.path}: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < 24:
                raise GGUFError(f"truncated file: {size} bytes is shorter than the 24-byte GGUF header (offset 0)")
            self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.size = size
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except GGUFError:
            self.close()
            raise

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        buf = self._mmap
        cur = _Cursor(buf, 0, self.size)
        magic = bytes(buf[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"bad magic {magic!r} at offset 0: not a GGUF file")
        cur.pos = 4
        version = cur.u32("version")
        if version & 0xFFFF == 0 and version != 0:
            raise GGUFError("big-endian GGUF files are not supported (version field at offset 4 is byte-swapped)")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version} at offset 4 (supported: 2, 3)")
        self.version = version
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # every kv needs >= 8+1+4 bytes, every tensor info >= 8+1+4+8+4+8 bytes
        if n_kv > (self.size - cur.pos) // 13:
            raise GGUFError(f"metadata count {n_kv} at offset 16 is impossible for a file of {self.size} bytes")
        if n_tensors > (self.size - cur.pos) // 33:
            raise GGUFError(f"tensor count {n_tensors} at offset 8 is impossible for a file of {self.size} bytes")

        for _ in range(n_kv):
            kpos = cur.pos
            key = cur.string("metadata key")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key!r} at offset {kpos}")
            vtype = cur.u32(f"value type of {key!r}")
            self.metadata[key] = self._read_value(cur, vtype, key, depth=0)
            self.metadata_types[key] = vtype

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or alignment <= 0
            or alignment & (alignment - 1)
        ):
            raise GGUFError(f"general.alignment must be a power of two, got {alignment!r}")
        self.alignment = int(alignment)

        infos: list[tuple[str, tuple[int, ...], int, int, int]] = []
        for _ in range(n_tensors):
            tpos = cur.pos
            name = cur.string("tensor name")
            if name in self.tensors or any(name == i[0] for i in infos[-1:]):
                raise GGUFError(f"duplicate tensor name {name!r} at offset {tpos}")
            n_dims = cur.u32(f"n_dims of tensor {name!r}")
            if n_dims < 1 or n_dims > 4:
                raise GGUFError(f"tensor {name!r} at offset {tpos} has {n_dims} dimensions (1..4 allowed)")
            cur.need(8 * n_dims, f"dimensions of tensor {name!r}")
            ne = struct.unpack_from(f"<{n_dims}Q", buf, cur.pos)
            cur.pos += 8 * n_dims
            gtype = cur.u32(f"type of tensor {name!r}")
            offset = cur.u64(f"offset of tensor {name!r}")
            if gtype not in TYPE_INFO:
                raise GGUFError(f"tensor {name!r} at offset {tpos} has unknown ggml type id {gtype}")
            info = TYPE_INFO[gtype]
            n_el = 1
            for d in ne:
                if d <= 0:
                    raise GGUFError(f"tensor {name!r} at offset {tpos} has a non-positive dimension {ne}")
                n_el *= d
                if n_el > self.size * 8:
                    raise GGUFError(f"tensor {name!r} at offset {tpos}: dimensions {ne} are too large for the file")
            if ne[0] % info.block_size:
                raise GGUFError(
                    f"tensor {name!r} at offset {tpos}: row length {ne[0]} is not a multiple of "
                    f"{type_name(gtype)}'s block size {info.block_size}"
                )
            nbytes = n_el // info.block_size * info.block_bytes
            infos.append((name, tuple(int(d) for d in ne), gtype, offset, nbytes))
            self.tensors[name] = TensorInfo(name, tuple(int(d) for d in ne), gtype, offset, nbytes)

        self.data_offset = (cur.pos + self.alignment - 1) // self.alignment * self.alignment
        data_size = self.size - self.data_offset
        for t in self.tensors.values():
            if t.offset % self.alignment:
                raise GGUFError(f"tensor {t.name!r}: data offset {t.offset} is not a multiple of the alignment {self.alignment}")
            if t.offset + t.nbytes > data_size:
                raise GGUFError(
                    f"tensor {t.name!r}: data [{self.data_offset + t.offset}, {self.data_offset + t.offset + t.nbytes}) "
                    f"runs past the end of the file ({self.size} bytes)"
                )

    def _read_value(self, cur: _Cursor, vtype: int, key: str, depth: int) -> Any:
        if vtype in _SCALAR_FMT:
            fmt = _SCALAR_FMT[vtype]
            n = struct.calcsize(fmt)
            pos = cur.pos
            v = cur.unpack(fmt, n, f"value of {key!r}")
            if vtype == ValueType.BOOL:
                if v not in (0, 1):
                    raise GGUFError(f"bool value of {key!r} at offset {pos} is {v}, not 0 or 1")
                return bool(v)
            return v
        if vtype == ValueType.STRING:
            return cur.string(f"string value of {key!r}")
        if vtype == ValueType.ARRAY:
            if depth > 8:
                raise GGUFError(f"arrays nested too deeply in {key!r} at offset {cur.pos}")
            apos = cur.pos
            etype = cur.u32(f"array element type of {key!r}")
            count = cur.u64(f"array length of {key!r}")
            if etype in _SCALAR_DTYPE:
                dt = np.dtype(_SCALAR_DTYPE[etype])
                if count > (cur.size - cur.pos) // dt.itemsize:
                    raise GGUFError(f"array {key!r} at offset {apos}: {count} elements run past the end of the file")
                arr = np.frombuffer(self._mmap, dtype=dt, count=count, offset=cur.pos).copy()
                cur.pos += count * dt.itemsize
                if etype == ValueType.BOOL:
                    if arr.size and arr.max() > 1:
                        raise GGUFError(f"bool array {key!r} at offset {apos} holds values other than 0/1")
                    return arr.astype(bool)
                return arr
            if etype == ValueType.STRING:
                if count > (cur.size - cur.pos) // 8:
                    raise GGUFError(f"array {key!r} at offset {apos}: {count} strings run past the end of the file")
                return self._read_string_array(cur, count, key)
            if etype == ValueType.ARRAY:
                if count > (cur.size - cur.pos) // 12:
                    raise GGUFError(f"array {key!r} at offset {apos}: {count} arrays run past the end of the file")
                return [self._read_value(cur, ValueType.ARRAY, key, depth + 1) for _ in range(count)]
            raise GGUFError(f"array {key!r} at offset {apos} has unknown element type {etype}")
        raise GGUFError(f"metadata {key!r} has unknown value type {vtype} (offset {cur.pos - 4})")

    def _read_string_array(self, cur: _Cursor, count: int, key: str) -> list[str]:
        buf = self._mmap
        size = cur.size
        pos = cur.pos
        out: list[str] = []
        append = out.append
        unpack = struct.unpack_from
        for i in range(count):
            if pos + 8 > size:
                raise GGUFError(f"truncated file: string {i} of array {key!r} at offset {pos}")
            n = unpack("<Q", buf, pos)[0]
            pos += 8
            if n > size - pos:
                raise GGUFError(f"string {i} of array {key!r} at offset {pos - 8}: length {n} runs past the end of the file")
            raw = buf[pos : pos + n]
            pos += n
            try:
                append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                append(raw.decode("utf-8", errors="replace"))
        cur.pos = pos
        return out

    # ------------------------------------------------------------------ access
    @property
    def architecture(self) -> str | None:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy read-only view of a tensor's data. F32/F16/F64/I* as typed arrays of numpy shape;
        BF16 as uint16; quantized types as uint8 of shape (*shape[:-1], row_bytes)."""
        try:
            t = self.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None
        start = self.data_offset + t.offset
        shape = t.shape
        typed = {
            GGMLType.F32: np.float32,
            GGMLType.F16: np.float16,
            GGMLType.BF16: np.uint16,
            GGMLType.F64: np.float64,
            GGMLType.I8: np.int8,
            GGMLType.I16: np.int16,
            GGMLType.I32: np.int32,
            GGMLType.I64: np.int64,
        }.get(t.ggml_type)
        if typed is not None:
            return np.ndarray(shape, dtype=typed, buffer=self._mmap, offset=start)
        info = TYPE_INFO[t.ggml_type]
        rb = t.ne[0] // info.block_size * info.block_bytes
        return np.ndarray((*shape[:-1], rb), dtype=np.uint8, buffer=self._mmap, offset=start)

    def close(self) -> None:
        m = getattr(self, "_mmap", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views still alive: the map is released when they are

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
