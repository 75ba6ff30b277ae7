"""GGUF reader: memory-maps a file and exposes its metadata and tensors as zero-copy numpy views.

Layout (little-endian): magic "GGUF", u32 version (2 or 3), u64 tensor_count, u64 kv_count, then kv_count
metadata entries, tensor_count tensor infos, padding to `general.alignment`, and the data section.

Every problem with a file raises GGUFError whose message names the problem and the byte offset where it was
found. Nothing is allocated in proportion to a count read from the file before that count has been checked
against the bytes that remain, and opening a file reads only its header (metadata and tensor infos): tensor
data pages are touched only when a caller reads a tensor view.

Decisions where the spec leaves room:
- keys and tensor names must be valid UTF-8 (else GGUFError: they are identities, a replacement character could
  merge two of them); string *values* with invalid UTF-8 decode with U+FFFD replacement, as before.
- bool values must be 0 or 1; arrays may nest up to MAX_NESTING levels; `general.alignment` must be a power of two;
  a tensor has 1..4 dimensions, each < 2**63, with a product < 2**63, a row length that is a multiple of its
  type's block size, an aligned offset, and data that lies inside the file and overlaps no other tensor.
- numpy is imported only when needed (numeric and long string arrays, tensor views): `GGUFFile(path,
  lazy_arrays=True)` parses a file without it, leaving every array as an `ArrayRef` (decode it with
  `.array(key)`); `moe-gguf info` uses it.
"""
from __future__ import annotations

import errno
import itertools
import mmap
import os
import stat
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .ggml_types import TYPE_INFO, type_name

if TYPE_CHECKING:
    import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_NESTING = 8  # arrays of arrays deeper than this are refused
MAX_DIMS = 4
_INT64_MAX = (1 << 63) - 1
_MAX_SPAN = 1 << 60  # elements: every 8-byte-per-element view of it still fits int64
_HEADER_BYTES = 24


class GGUFError(Exception):
    """Raised for any malformed, truncated, unsupported or unreadable GGUF file.

    `offset` is the byte offset of the problem when there is one (also written in the message)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


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


VALUE_TYPE_NAMES: dict[int, str] = {
    ValueType.UINT8: "u8",
    ValueType.INT8: "i8",
    ValueType.UINT16: "u16",
    ValueType.INT16: "i16",
    ValueType.UINT32: "u32",
    ValueType.INT32: "i32",
    ValueType.FLOAT32: "f32",
    ValueType.BOOL: "bool",
    ValueType.STRING: "str",
    ValueType.ARRAY: "array",
    ValueType.UINT64: "u64",
    ValueType.INT64: "i64",
    ValueType.FLOAT64: "f64",
}

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
_SCALAR_SIZE: dict[int, int] = {t: struct.calcsize(f) for t, f in _SCALAR_FMT.items()}
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
# numpy dtype of a tensor view for the non-block types (BF16 as its raw uint16 bits)
_TENSOR_DTYPE: dict[int, str] = {0: "<f4", 1: "<f2", 30: "<u2", 28: "<f8", 24: "<i1", 25: "<i2", 26: "<i4", 27: "<i8"}

_MIN_STRING = 8  # u64 length
_MIN_ARRAY = 12  # u32 type + u64 count
_MIN_KV = 8 + 4  # key length + value type (a zero-length key and a 1-byte value would be 13)
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_VEC_MIN_STRINGS = 64  # string arrays at least this long use the vectorised scan
_VEC_WINDOW_MAX = 16 << 20
_VEC_LEN_LIMIT = 1 << 8  # the vectorised scan finds length prefixes below this; longer strings are stepped over


def _np() -> Any:
    import numpy

    return numpy


def _kernels() -> Any:
    """The compiled C helpers (moe_gguf._kernels: csrc/gguf_strings.c), or None when they are not built."""
    try:
        from . import _kernels as k  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - the package is normally built
        return None
    return k if hasattr(k.lib, "mg_gguf_join_strings") else None


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


@dataclass(frozen=True)
class ArrayRef:
    """An array left undecoded by `GGUFFile(path, lazy_arrays=True)`: its element type, length and where its
    elements start in the file. Decode it with `GGUFFile.array(key)`."""

    elem_type: int
    count: int
    offset: int  # file offset of the first element
    nbytes: int  # bytes of all elements (including string length prefixes)

    def __len__(self) -> int:
        return self.count

    @property
    def elem_type_name(self) -> str:
        return VALUE_TYPE_NAMES.get(self.elem_type, f"type{self.elem_type}")


def _open_map(path: str) -> tuple[mmap.mmap | None, int]:
    """Open and map a regular file read-only. Errors of any kind become GGUFError."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it has no effect on regular files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise GGUFError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise GGUFError(f"cannot read {path}: it is {kind}")
        size = st.st_size
        if size < _HEADER_BYTES:
            raise GGUFError(
                f"truncated file: {size} bytes is shorter than the {_HEADER_BYTES}-byte GGUF header (offset 0)", 0
            )
        try:
            m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise GGUFError(f"cannot map {path}: {e}") from None
        return m, size
    finally:
        os.close(fd)


class GGUFFile:
    """A memory-mapped GGUF file (v2 or v3, little-endian).

    - `metadata`: key -> value. Scalars as Python int/float/bool/str; arrays of numbers as numpy arrays (bool arrays
      as numpy bool); arrays of strings as lists of str; nested arrays as lists of those. With `lazy_arrays=True`
      every array is an `ArrayRef` instead (decode with `.array(key)`), and numpy is not imported at all.
    - `metadata_types`: key -> GGUF value type id (ValueType); `type_spec(key)` gives the full type path of arrays.
    - `tensors`: name -> TensorInfo, in file order; `tensor(name)` returns a zero-copy read-only view.
    - `version`, `size`, `alignment`, `data_offset` (absolute file offset of the data section), `architecture`.
    """

    def __init__(self, path: str | os.PathLike[str], *, lazy_arrays: bool = False) -> None:
        self.path = os.fspath(path)
        self._lazy = lazy_arrays
        self._mmap: mmap.mmap | None = None
        self._mmap, size = _open_map(str(self.path))
        self.size = size
        self.version = 0
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int] = {}
        self._specs: dict[str, tuple[int, ...]] = {}
        self._key_offsets: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        try:
            self._parse()
        except GGUFError:
            self.close()
            raise
        except (struct.error, ValueError, IndexError, OverflowError, MemoryError) as e:  # defensive: never leak these
            self.close()
            raise GGUFError(f"malformed GGUF file {self.path}: {type(e).__name__}: {e}") from None

    # ------------------------------------------------------------------ low-level readers
    def _need(self, pos: int, n: int, what: str) -> None:
        if pos + n > self.size:
            raise GGUFError(
                f"truncated file: {what} needs {n} bytes at offset {pos}, file is {self.size} bytes", pos
            )

    def _u32(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return struct.unpack_from("<I", self._mmap, pos)[0]  # type: ignore[arg-type]

    def _u64(self, pos: int, what: str) -> int:
        self._need(pos, 8, what)
        return struct.unpack_from("<Q", self._mmap, pos)[0]  # type: ignore[arg-type]

    def _raw_string(self, pos: int, what: str) -> tuple[bytes, int]:
        n = self._u64(pos, f"{what} length")
        if n > self.size - pos - 8:
            raise GGUFError(
                f"{what} length {n} at offset {pos} runs past the end of the file ({self.size} bytes)", pos
            )
        start = pos + 8
        return self._mmap[start : start + n], start + n  # type: ignore[index]

    def _name(self, pos: int, what: str) -> tuple[str, int]:
        raw, end = self._raw_string(pos, what)
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError as e:
            raise GGUFError(f"{what} at offset {pos} is not valid UTF-8 ({e.reason} at byte {e.start})", pos) from None

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        buf = self._mmap
        assert buf is not None
        magic = buf[0:4]
        if magic != GGUF_MAGIC:
            if magic[::-1] == GGUF_MAGIC:
                raise GGUFError("bad magic b'FUGG' at offset 0: a byte-swapped GGUF file is not supported", 0)
            raise GGUFError(f"bad magic {magic!r} at offset 0: not a GGUF file", 0)
        version = self._u32(4, "version")
        if version != 0 and version & 0xFFFF == 0:
            raise GGUFError(
                f"big-endian GGUF files are not supported (version field at offset 4 reads {version:#x}, "
                f"a byte-swapped {int.from_bytes(version.to_bytes(4, 'little'), 'big')})",
                4,
            )
        if version == 1:
            raise GGUFError("GGUF version 1 at offset 4 is no longer supported (supported: 2, 3)", 4)
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version} at offset 4 (supported: 2, 3)", 4)
        self.version = version
        n_tensors = self._u64(8, "tensor count")
        n_kv = self._u64(16, "metadata count")
        pos = _HEADER_BYTES
        rest = self.size - pos
        if n_kv > rest // _MIN_KV:
            raise GGUFError(
                f"metadata count {n_kv} at offset 16 is impossible for a file of {self.size} bytes", 16
            )
        if n_tensors > rest // _MIN_TENSOR_INFO:
            raise GGUFError(
                f"tensor count {n_tensors} at offset 8 is impossible for a file of {self.size} bytes", 8
            )

        for _ in range(n_kv):
            kpos = pos
            key, pos = self._name(pos, "metadata key")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key!r} at offset {kpos}", kpos)
            vtype = self._u32(pos, f"value type of {key!r}")
            value, pos, spec = self._value(pos + 4, vtype, key, pos, self._lazy)
            self.metadata[key] = value
            self.metadata_types[key] = vtype
            self._specs[key] = spec
            self._key_offsets[key] = kpos

        self._check_alignment()
        pos = self._parse_tensor_infos(pos, n_tensors)
        self.data_offset = (pos + self.alignment - 1) // self.alignment * self.alignment
        self._check_tensor_data()

    def _check_alignment(self) -> None:
        if "general.alignment" not in self.metadata:
            return
        a = self.metadata["general.alignment"]
        vt = self.metadata_types["general.alignment"]
        at = self._key_offsets["general.alignment"]
        if vt not in (ValueType.UINT8, ValueType.UINT16, ValueType.UINT32, ValueType.UINT64, ValueType.INT32,
                      ValueType.INT64, ValueType.INT16, ValueType.INT8):
            raise GGUFError(
                f"general.alignment (key at offset {at}) must be an integer, got a {VALUE_TYPE_NAMES.get(vt, vt)}", at
            )
        if a <= 0 or a & (a - 1) or a > 1 << 30:
            raise GGUFError(f"general.alignment (key at offset {at}) must be a power of two, got {a}", at)
        self.alignment = int(a)

    def _parse_tensor_infos(self, pos: int, n_tensors: int) -> int:
        buf = self._mmap
        tensors = self.tensors
        unpack = struct.unpack_from
        for _ in range(n_tensors):
            tpos = pos
            name, pos = self._name(pos, "tensor name")
            if name in tensors:
                raise GGUFError(f"duplicate tensor name {name!r} at offset {tpos}", tpos)
            n_dims = self._u32(pos, f"n_dims of tensor {name!r}")
            if n_dims < 1 or n_dims > MAX_DIMS:
                raise GGUFError(
                    f"tensor {name!r} at offset {tpos} has {n_dims} dimensions (1..{MAX_DIMS} allowed; offset {pos})",
                    pos,
                )
            pos += 4
            self._need(pos, 8 * n_dims + 12, f"dimensions, type and offset of tensor {name!r}")
            ne = unpack(f"<{n_dims}Q", buf, pos)  # type: ignore[arg-type]
            dpos = pos
            pos += 8 * n_dims
            gtype, offset = unpack("<IQ", buf, pos)  # type: ignore[arg-type]
            if gtype not in TYPE_INFO:
                raise GGUFError(f"tensor {name!r} has unknown ggml type id {gtype} (offset {pos})", pos)
            pos += 12
            n_el = n_span = 1
            for d in ne:
                if d > _INT64_MAX:
                    raise GGUFError(f"tensor {name!r}: dimension {d} at offset {dpos} overflows int64", dpos)
                n_el *= d
                n_span *= max(d, 1)
            if n_span > _MAX_SPAN:  # zero dims count as 1: numpy (and ggml) multiply all the others too
                raise GGUFError(
                    f"tensor {name!r}: dimensions {tuple(ne)} at offset {dpos} overflow (product {n_span} > 2^60)", dpos
                )
            info = TYPE_INFO[gtype]
            if ne[0] % info.block_size:
                raise GGUFError(
                    f"tensor {name!r}: row length {ne[0]} at offset {dpos} is not a multiple of "
                    f"{type_name(gtype)}'s block size {info.block_size}",
                    dpos,
                )
            nbytes = n_el // info.block_size * info.block_bytes
            if nbytes > self.size:
                raise GGUFError(
                    f"tensor {name!r}: {tuple(ne)} {type_name(gtype)} needs {nbytes} bytes, more than the whole file "
                    f"({self.size} bytes; dimensions at offset {dpos})",
                    dpos,
                )
            if offset > self.size:
                raise GGUFError(
                    f"tensor {name!r}: data offset {offset} at offset {pos - 8} is past the end of the file", pos - 8
                )
            tensors[name] = TensorInfo(name, tuple(ne), gtype, offset, nbytes)
        return pos

    def _check_tensor_data(self) -> None:
        if not self.tensors:
            return
        base = self.data_offset
        if base > self.size:
            raise GGUFError(
                f"truncated file: the data section should start at offset {base}, file is {self.size} bytes", self.size
            )
        prev: TensorInfo | None = None
        for t in sorted(self.tensors.values(), key=lambda t: (t.offset, t.nbytes)):
            if t.offset % self.alignment:
                raise GGUFError(
                    f"tensor {t.name!r}: data offset {t.offset} (file offset {base + t.offset}) is not a multiple of "
                    f"the alignment {self.alignment}",
                    base + t.offset,
                )
            end = base + t.offset + t.nbytes
            if end > self.size:
                raise GGUFError(
                    f"truncated file: data of tensor {t.name!r} [{base + t.offset}, {end}) runs past the end of the "
                    f"file ({self.size} bytes) at offset {self.size}",
                    self.size,
                )
            if prev is not None and prev.nbytes and t.nbytes and prev.offset + prev.nbytes > t.offset:
                raise GGUFError(
                    f"tensor {t.name!r}: data at offset {base + t.offset} overlaps tensor {prev.name!r} "
                    f"[{base + prev.offset}, {base + prev.offset + prev.nbytes})",
                    base + t.offset,
                )
            if t.nbytes:
                prev = t

    def _value(self, pos: int, vtype: int, key: str, tpos: int, lazy: bool) -> tuple[Any, int, tuple[int, ...]]:
        """Read one value of type `vtype` at `pos` (its type field was at `tpos`). Returns (value, end, type spec)."""
        if vtype in _SCALAR_FMT:
            n = _SCALAR_SIZE[vtype]
            self._need(pos, n, f"value of {key!r}")
            v = struct.unpack_from(_SCALAR_FMT[vtype], self._mmap, pos)[0]  # type: ignore[arg-type]
            if vtype == ValueType.BOOL:
                if v > 1:
                    raise GGUFError(f"bool value of {key!r} at offset {pos} is {v}, not 0 or 1", pos)
                v = bool(v)
            return v, pos + n, (vtype,)
        if vtype == ValueType.STRING:
            raw, end = self._raw_string(pos, f"string value of {key!r}")
            return raw.decode("utf-8", errors="replace"), end, (vtype,)
        if vtype == ValueType.ARRAY:
            return self._array(pos, key, 0, lazy)
        raise GGUFError(f"metadata {key!r} has unknown value type {vtype} at offset {tpos}", tpos)

    def _array(self, apos: int, key: str, depth: int, lazy: bool) -> tuple[Any, int, tuple[int, ...]]:
        if depth >= MAX_NESTING:
            raise GGUFError(f"arrays nested more than {MAX_NESTING} deep in {key!r} at offset {apos}", apos)
        etype = self._u32(apos, f"array element type of {key!r}")
        count = self._u64(apos + 4, f"array length of {key!r}")
        pos = apos + 12
        rest = self.size - pos
        if etype in _SCALAR_SIZE:
            isz = _SCALAR_SIZE[etype]
            if count > rest // isz:
                raise GGUFError(
                    f"array {key!r} at offset {apos}: {count} {VALUE_TYPE_NAMES[etype]} elements run past the end "
                    f"of the file ({self.size} bytes)",
                    apos,
                )
            end = pos + count * isz
            if lazy:
                if etype == ValueType.BOOL:
                    self._check_bools(pos, count, key, apos)
                return ArrayRef(etype, count, pos, count * isz), end, (ValueType.ARRAY, etype)
            return self._numeric_array(pos, etype, count, key, apos), end, (ValueType.ARRAY, etype)
        if etype == ValueType.STRING:
            if count > rest // _MIN_STRING:
                raise GGUFError(
                    f"array {key!r} at offset {apos}: {count} strings run past the end of the file ({self.size} bytes)",
                    apos,
                )
            if lazy:
                end = self._skip_strings(pos, count, key)
                return ArrayRef(etype, count, pos, end - pos), end, (ValueType.ARRAY, etype)
            strings, end = self._string_array(pos, count, key)
            return strings, end, (ValueType.ARRAY, etype)
        if etype == ValueType.ARRAY:
            if count > rest // _MIN_ARRAY:
                raise GGUFError(
                    f"array {key!r} at offset {apos}: {count} nested arrays run past the end of the file "
                    f"({self.size} bytes)",
                    apos,
                )
            items: list[Any] = []
            inner: tuple[int, ...] = ()
            p = pos
            for i in range(count):
                v, p, spec = self._array(p, key, depth + 1, lazy)
                if i == 0:
                    inner = spec
                if not lazy:
                    items.append(v)
            if lazy:
                return ArrayRef(etype, count, pos, p - pos), p, (ValueType.ARRAY, *(inner or (ValueType.ARRAY,)))
            return items, p, (ValueType.ARRAY, *(inner or (ValueType.ARRAY,)))
        raise GGUFError(f"array {key!r} at offset {apos} has unknown element type {etype}", apos)

    def _check_bools(self, pos: int, count: int, key: str, apos: int) -> None:
        raw = self._mmap[pos : pos + count]  # type: ignore[index]
        if raw.translate(None, b"\x00\x01"):
            bad = next(i for i, b in enumerate(raw) if b > 1)
            raise GGUFError(
                f"bool array {key!r} at offset {apos}: element {bad} at offset {pos + bad} is {raw[bad]}, not 0 or 1",
                pos + bad,
            )

    def _numeric_array(self, pos: int, etype: int, count: int, key: str, apos: int) -> "np.ndarray":
        np = _np()
        if etype == ValueType.BOOL:
            self._check_bools(pos, count, key, apos)
            return np.frombuffer(self._mmap, dtype=np.uint8, count=count, offset=pos).astype(bool)
        return np.frombuffer(self._mmap, dtype=_SCALAR_DTYPE[etype], count=count, offset=pos).copy()

    # ------------------------------------------------------------------ string arrays
    def _walk_strings_py(
        self, pos: int, count: int, key: str, first: int, collect: bool = True
    ) -> tuple[list[int], list[int], int]:
        """Sequential scan of `count` length-prefixed strings at `pos` (string `first` of the array):
        (prefix offsets, lengths, end); the lists stay empty unless `collect`."""
        buf, size = self._mmap, self.size
        unpack = struct.unpack_from
        starts: list[int] = []
        lens: list[int] = []
        for i in range(count):
            if pos + 8 > size:
                raise GGUFError(f"truncated file: string {first + i} of array {key!r} at offset {pos}", pos)
            n = unpack("<Q", buf, pos)[0]  # type: ignore[arg-type]
            if n > size - pos - 8:
                raise GGUFError(
                    f"string {first + i} of array {key!r} at offset {pos}: length {n} runs past the end of the file",
                    pos,
                )
            if collect:
                starts.append(pos)
                lens.append(n)
            pos += 8 + n
        return starts, lens, pos

    def _skip_strings(self, pos: int, count: int, key: str) -> int:
        """End of `count` strings at `pos`, stepped over with as little Python per string as possible: the length
        at offset p is read as element p >> 3 of the file cast to u64 from byte p & 7. Any problem (a length past
        the end) is then located and reported by the checked scan."""
        start, size = pos, self.size
        k = _kernels()
        if k is not None and self._mmap is not None:
            buf = k.ffi.from_buffer(self._mmap)
            try:
                end = k.ffi.new("uint64_t *")
                ok = k.lib.mg_gguf_scan_strings(buf, size, pos, count, k.ffi.NULL, k.ffi.NULL, end) == count
            finally:
                k.ffi.release(buf)
            if ok:
                return int(end[0])
            self._walk_strings_py(start, count, key, 0, collect=False)  # raises with the exact place
        if sys.byteorder != "little":
            return self._walk_strings_py(pos, count, key, 0, collect=False)[2]
        mv = memoryview(self._mmap)  # type: ignore[arg-type]
        views = [mv[k : k + (size - k) // 8 * 8].cast("Q") for k in range(8)]
        try:
            for _ in itertools.repeat(None, count):
                pos += 8 + views[pos & 7][pos >> 3]
        except IndexError:
            pos = size + 1
        finally:
            for v in views:
                v.release()
            mv.release()
        if pos > size:
            self._walk_strings_py(start, count, key, 0, collect=False)  # raises with the exact place
        return pos

    def _walk_strings_np(self, pos: int, count: int) -> tuple[list[Any], list[Any], int, int]:
        """Vectorised scan of length-prefixed strings. In a window of the file, every byte offset whose 8-byte
        little-endian value is below _VEC_LEN_LIMIT is a candidate length prefix. Starting from a known real prefix,
        the run of candidates in which each one's end is exactly the next candidate is accepted (by induction each
        is a real prefix). Where a run breaks (a string of >= _VEC_LEN_LIMIT bytes, or a stray candidate inside a
        string), the next real prefix is the end of the last accepted string: it is looked up among the candidates
        (or, when it is not one, stepped over sequentially) and a new run starts there, all inside the same window.
        The window never extends past `pos + 8 * remaining` (a string takes >= 8 bytes), so no byte after the array
        is read. Returns (prefix-offset arrays, length arrays, end position, strings done); the caller finishes any
        rest sequentially, with full checks."""
        np = _np()
        mm, size = self._mmap, self.size
        unpack = struct.unpack_from
        starts: list[Any] = []
        lens: list[Any] = []
        done = 0
        while count - done >= _VEC_MIN_STRINGS:
            e = min(size, pos + 8 * (count - done), pos + _VEC_WINDOW_MAX)
            n = e - pos - 7  # candidate positions 0..n-1 (relative to pos)
            if n <= 0:
                break
            v = np.ndarray((n,), dtype="<u8", buffer=mm, offset=pos, strides=(1,))
            cand = np.flatnonzero(v < _VEC_LEN_LIMIT)
            ln = v[cand].astype(np.int64)
            nxt = cand + 8 + ln
            bad = np.flatnonzero(nxt[:-1] != cand[1:])
            k_cand = cand.size
            q = 0  # relative position of the next real prefix
            while q < n and done < count:
                j = int(np.searchsorted(cand, q))
                if j < k_cand and cand[j] == q:
                    b = int(np.searchsorted(bad, j))
                    last = int(bad[b]) if b < bad.size else k_cand - 1
                    take = min(last - j + 1, count - done)
                    starts.append(cand[j : j + take] + pos)
                    lens.append(ln[j : j + take])
                    done += take
                    q = int(nxt[j + take - 1])
                else:  # a long string: step over it
                    if pos + q + 8 > size:
                        return starts, lens, pos + q, done
                    m = unpack("<Q", mm, pos + q)[0]  # type: ignore[arg-type]
                    if m > size - pos - q - 8:
                        return starts, lens, pos + q, done  # the sequential scan reports it
                    starts.append([pos + q])
                    lens.append([m])
                    done += 1
                    q += 8 + m
            pos += q
        return starts, lens, pos, done

    def _scan_strings(self, pos: int, count: int, key: str) -> tuple["np.ndarray", "np.ndarray", int]:
        """Prefix offsets, lengths and end of `count` (>= _VEC_MIN_STRINGS) strings at `pos`, all checked."""
        np = _np()
        starts, lens, pos, done = self._walk_strings_np(pos, count)
        if pos > self.size:  # the last string of a vectorised run ran past the end
            last, n = int(starts[-1][-1]), int(lens[-1][-1])
            raise GGUFError(
                f"string {done - 1} of array {key!r} at offset {last}: length {n} runs past the end of the file", last
            )
        if done < count:
            s2, l2, pos = self._walk_strings_py(pos, count - done, key, done)
            starts.append(np.asarray(s2, dtype=np.int64))
            lens.append(np.asarray(l2, dtype=np.int64))
        return np.concatenate(starts), np.concatenate(lens), pos

    def _string_array_c(self, pos: int, count: int) -> tuple[list[str], int] | None:
        """Decode `count` strings at `pos` in C + one decode/split: the strings are copied out joined by NUL
        bytes. None when the strings are malformed, hold a NUL byte or invalid UTF-8 (the callers' checked paths
        then report or decode them exactly as before)."""
        k = _kernels()
        if k is None or self._mmap is None:
            return None
        ffi, lib = k.ffi, k.lib
        buf = ffi.from_buffer(self._mmap)
        try:
            end = ffi.new("uint64_t *")
            if lib.mg_gguf_scan_strings(buf, self.size, pos, count, ffi.NULL, ffi.NULL, end) != count:
                return None
            stop = int(end[0])
            cap = stop - pos - 8 * count + count
            out = bytearray(cap)
            found = ffi.new("int *")
            n = lib.mg_gguf_join_strings(buf, self.size, pos, count, 0, ffi.from_buffer(out), cap, found)
        finally:
            ffi.release(buf)
        if n < 0 or found[0]:
            return None
        try:
            parts = out[:n].decode("utf-8").split("\x00") if count else []
        except UnicodeDecodeError:
            return None
        return (parts, stop) if len(parts) == count else None

    def _string_array(self, pos: int, count: int, key: str) -> tuple[list[str], int]:
        if count >= _VEC_MIN_STRINGS:
            fast = self._string_array_c(pos, count)
            if fast is not None:
                return fast
        if count < _VEC_MIN_STRINGS:
            starts_l, lens_l, end = self._walk_strings_py(pos, count, key, 0)
            mm = self._mmap
            return [mm[s + 8 : s + 8 + n].decode("utf-8", errors="replace") for s, n in zip(starts_l, lens_l)], end  # type: ignore[index]
        st, ln, end = self._scan_strings(pos, count, key)
        return self._decode_strings(st, ln, pos, end), end

    def _decode_strings(self, st: "np.ndarray", ln: "np.ndarray", first: int, end: int) -> list[str]:
        """Decode strings whose 8-byte length prefixes are at `st` (lengths `ln`), tiling [first, end), with one
        decode + split: in a copy of the region every prefix is zeroed, so (when no string holds a NUL byte) the
        strings are exactly the pieces between 8-NUL separators. Falls back to one decode per string if a string
        holds a NUL byte or invalid UTF-8."""
        np = _np()
        mm = self._mmap
        count = st.size
        region = bytearray(mm[first:end])  # type: ignore[index]
        arr = np.frombuffer(region, dtype=np.uint8)
        rel = st - first
        arr[rel] = 0  # bytes 1..7 of a length < 256 are zero already
        long_rel = rel[ln >= 256]
        if long_rel.size:
            for k in range(1, 8):
                arr[long_rel + k] = 0
        if int(np.count_nonzero(arr)) == (end - first) - 8 * count:
            del arr
            try:
                parts = region.decode("utf-8").split("\x00" * 8)
            except UnicodeDecodeError:
                parts = []
            if len(parts) == count + 1:
                return parts[1:]
        return [
            mm[s + 8 : s + 8 + n].decode("utf-8", errors="replace")  # type: ignore[index]
            for s, n in zip(st.tolist(), ln.tolist())
        ]

    # ------------------------------------------------------------------ access
    @property
    def architecture(self) -> str | None:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None

    def type_spec(self, key: str) -> tuple[int, ...]:
        """The full value type of a metadata key: (t,) for scalars, (ARRAY, elem) for arrays,
        (ARRAY, ARRAY, ..., elem) for nested ones (inner types as in the first element)."""
        return self._specs[key]

    def array(self, key: str, *, as_list: bool = False) -> Any:
        """The decoded value of an array key (decoding an ArrayRef left by lazy_arrays=True). `as_list=True`
        returns plain Python lists (numbers as int/float/bool) and does not need numpy."""
        if self.metadata_types[key] != ValueType.ARRAY:
            raise TypeError(f"metadata {key!r} is a {VALUE_TYPE_NAMES[self.metadata_types[key]]}, not an array")
        v = self.metadata[key]
        if not isinstance(v, ArrayRef):
            if as_list:
                return _to_list(v)
            return v
        if self._mmap is None or self._mmap.closed:
            raise ValueError(f"{self.path} is closed")
        if as_list and v.elem_type in _SCALAR_FMT:
            n = v.count
            vals = list(struct.unpack_from(f"<{n}{_SCALAR_FMT[v.elem_type][1]}", self._mmap, v.offset))
            return [bool(x) for x in vals] if v.elem_type == ValueType.BOOL else vals
        value = self._array(v.offset - 12, key, 0, False)[0]
        return _to_list(value) if as_list else value

    def string_array_raw(self, key: str) -> tuple[bytes, "np.ndarray", "np.ndarray"]:
        """The strings of array `key` undecoded: (data, starts, lengths), string i being
        data[starts[i] : starts[i] + lengths[i]] (bytes as stored in the file, not validated as UTF-8; `data` is a
        copy of the array's bytes, so it outlives the file)."""
        if key not in self._specs:
            raise KeyError(f"no metadata key {key!r} in {self.path}")
        if self._specs[key] != (ValueType.ARRAY, ValueType.STRING):
            raise TypeError(f"metadata {key!r} is not an array of strings")
        if self._mmap is None or self._mmap.closed:
            raise ValueError(f"{self.path} is closed")
        np = _np()
        apos = self._key_offsets[key] + 8 + len(key.encode("utf-8")) + 4
        count = self._u64(apos + 4, f"array length of {key!r}")
        pos = apos + 12
        k = _kernels()
        if k is not None:
            starts = np.empty(count, dtype=np.int64)
            lens = np.empty(count, dtype=np.int64)
            ffi = k.ffi
            buf = ffi.from_buffer(self._mmap)
            try:
                end_p = ffi.new("uint64_t *")
                done = k.lib.mg_gguf_scan_strings(buf, self.size, pos, count, ffi.from_buffer("int64_t[]", starts),
                                                  ffi.from_buffer("int64_t[]", lens), end_p)
            finally:
                ffi.release(buf)
            if done != count:  # pragma: no cover - the file was checked when it was opened
                self._walk_strings_py(pos, count, key, 0, collect=False)
            end = int(end_p[0])
        else:
            s_l, l_l, end = self._walk_strings_py(pos, count, key, 0)
            starts = np.asarray(s_l, dtype=np.int64)
            lens = np.asarray(l_l, dtype=np.int64)
        data = bytes(self._mmap[pos:end])  # type: ignore[index]
        return data, starts - (pos - 8), lens

    def tensor(self, name: str) -> "np.ndarray":
        """Zero-copy read-only view of a tensor's data. F32/F16/F64/I* as typed arrays of numpy shape;
        BF16 as uint16; quantized types as uint8 of shape (*shape[:-1], row_bytes)."""
        try:
            t = self.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None
        if self._mmap is None or self._mmap.closed:
            raise ValueError(f"{self.path} is closed")
        np = _np()
        start = self.data_offset + t.offset
        shape = t.shape
        dt = _TENSOR_DTYPE.get(t.ggml_type)
        if dt is not None:
            return np.ndarray(shape, dtype=dt, buffer=self._mmap, offset=start)
        info = TYPE_INFO[t.ggml_type]
        rb = t.ne[0] // info.block_size * info.block_bytes
        return np.ndarray((*shape[:-1], rb), dtype=np.uint8, buffer=self._mmap, offset=start)

    def populate(self) -> None:
        """Maps every page of the file into this process now, reading from disk what the page cache lacks, as
        llama.cpp's default mmap prefetch (MAP_POPULATE) does.  Without it each 4 KiB page costs a page fault the
        first time a dot-product kernel reads it, and a MoE model touches new experts' pages for many tokens: measured on
        DeepSeek-V2-Lite shapes (file in the page cache), expert GEMVs ran at 11 GB/s while they faulted and at
        16-18 GB/s once mapped; populating the 9.7 GiB file took 0.75 s.  Memory stays the page cache's (no copy).
        Uses madvise(MADV_POPULATE_READ) (Linux 5.14+); elsewhere reads one byte of every page instead."""
        m = self._mmap
        if m is None or m.closed:
            raise GGUFError(f"{self.path}: the file is closed")
        advice = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)
        try:
            if advice is None:
                raise AttributeError("no MADV_POPULATE_READ on this platform")
            m.madvise(advice)
            return
        except (ValueError, AttributeError):
            pass  # no madvise here: touch the pages instead
        except OSError as e:
            if e.errno != errno.EINVAL:  # EFAULT: pages past the end (the file shrank since it was opened), EIO...
                raise GGUFError(f"cannot read {self.path}: {e.strerror or e} (was the file truncated?)") from None
            # EINVAL: a kernel without MADV_POPULATE_READ: touch the pages instead
        try:
            now = os.stat(self.path).st_size
        except OSError as e:
            raise GGUFError(f"cannot read {self.path}: {e.strerror or e}") from None
        if now < self.size:  # touching a page past the end would kill the process (SIGBUS)
            raise GGUFError(f"cannot read {self.path}: it shrank from {self.size} to {now} bytes since it was opened")
        import numpy as np

        page = mmap.PAGESIZE
        view = np.frombuffer(m, dtype=np.uint8)
        try:
            int(view[::page].sum(dtype=np.uint64))
        finally:
            del view

    def close(self) -> None:
        m = self._mmap
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views still alive: the map is released when they are

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors, "
            f"arch={self.architecture!r})"
        )


def _to_list(v: Any) -> Any:
    if isinstance(v, list):
        return [_to_list(x) for x in v]
    tolist = getattr(v, "tolist", None)
    return tolist() if tolist is not None else v
