"""GGUF writer: round trips against our reader AND the `gguf` package's GGUFReader (the independent oracle), typed
metadata, tensors of every kind, streaming, atomic output and argument checking."""
from __future__ import annotations

import math
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_gguf.ggml_types import GGMLType
from moe_gguf.gguf import GGUFFile, ValueType as V
from moe_gguf.gguf_writer import GGUFWriter

RANGES = {V.UINT8: (0, 255), V.INT8: (-128, 127), V.UINT16: (0, 65535), V.INT16: (-32768, 32767),
          V.UINT32: (0, 2**32 - 1), V.INT32: (-(2**31), 2**31 - 1), V.UINT64: (0, 2**64 - 1),
          V.INT64: (-(2**63), 2**63 - 1)}
NP = {V.UINT8: np.uint8, V.INT8: np.int8, V.UINT16: np.uint16, V.INT16: np.int16, V.UINT32: np.uint32,
      V.INT32: np.int32, V.UINT64: np.uint64, V.INT64: np.int64, V.FLOAT32: np.float32, V.FLOAT64: np.float64}


def _ref_fields(path: Path) -> dict[str, object]:
    return {k: f for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def _same(got: object, want: object) -> bool:
    if isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        g, w = np.asarray(got), np.asarray(want)
        return g.shape == w.shape and bool(np.all((g == w) | (np.isnan(g) & np.isnan(w)) if g.dtype.kind == "f" else g == w))
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want))
    if isinstance(got, float) and isinstance(want, float) and math.isnan(got) and math.isnan(want):
        return True
    return got == want


def test_metadata_round_trip_every_type(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    items: list[tuple[str, object, object]] = []  # key, value, type spec
    for t, (lo, hi) in RANGES.items():
        items += [(f"lo{t}", lo, t), (f"hi{t}", hi, t)]
        items.append((f"arr{t}", [lo, 0, hi], (V.ARRAY, t)))
    items += [
        ("f32", 0.1, V.FLOAT32), ("f64", 0.1, V.FLOAT64), ("nan", float("nan"), V.FLOAT32),
        ("inf", float("-inf"), V.FLOAT64), ("t", True, V.BOOL), ("f", False, V.BOOL),
        ("s", "héllo\n\u2603\0end", V.STRING), ("empty", "", V.STRING),
        ("strs", ["a", "", "Ġb", "\u00e9" * 300] * 40, (V.ARRAY, V.STRING)),
        ("bools", [True, False, True], (V.ARRAY, V.BOOL)),
        ("f32s", np.array([1.5, -2.0], np.float32), (V.ARRAY, V.FLOAT32)),
        ("f64s", [0.1, 1e300], (V.ARRAY, V.FLOAT64)),
        ("empty_arr", [], (V.ARRAY, V.INT32)),
        ("nested", [[1, 2], [], [3]], (V.ARRAY, V.ARRAY, V.UINT32)),
        ("nested_str", [["a"], ["b", "c"]], (V.ARRAY, V.ARRAY, V.STRING)),
        ("nested3", [[[1.5]], [[2.5, 3.5]]], (V.ARRAY, V.ARRAY, V.ARRAY, V.FLOAT64)),
        ("nested_empty", [], (V.ARRAY, V.ARRAY)),
    ]
    with GGUFWriter(p) as w:
        for k, v, t in items:
            w.add(k, v, t)
    with GGUFFile(p) as f:
        assert f.version == 3 and list(f.metadata) == [k for k, _, _ in items]
        for k, v, t in items:
            spec = (t,) if isinstance(t, int) else t
            assert f.type_spec(k) == spec, k
            want = v
            if spec == (V.FLOAT32,):
                want = float(np.float32(v))
            elif spec[-1] == V.FLOAT32 and spec[0] == V.ARRAY:
                want = np.asarray(v, np.float32)
            assert _same(f.metadata[k] if spec[:2] != (V.ARRAY, V.ARRAY) else
                         [x.tolist() if isinstance(x, np.ndarray) else x for x in f.array(k, as_list=True)],
                         want if not isinstance(want, np.ndarray) else want), k
    ref = _ref_fields(p)
    assert list(ref) == [k for k, _, _ in items]
    for k, v, t in items:
        spec = (t,) if isinstance(t, int) else t
        fld = ref[k]
        if spec[:2] == (V.ARRAY, V.ARRAY) or (spec[0] == V.ARRAY and len(v) == 0):
            # GGUFReader reports no element type for an empty array, and reads nested ones only partially
            assert int(fld.types[0]) == V.ARRAY and (len(v) > 0 or fld.contents() == [])
            continue
        assert [int(x) for x in fld.types] == list(spec), k
        want = float(np.float32(v)) if spec == (V.FLOAT32,) else v
        got = fld.contents()
        if spec[0] == V.ARRAY and spec[1] == V.FLOAT32:
            want = np.asarray(v, np.float32).tolist()
        assert _same(got, list(want) if isinstance(want, np.ndarray) else want), (k, got, want)


def test_type_inference_defaults(tmp_path: Path) -> None:
    p = tmp_path / "i.gguf"
    with GGUFWriter(p) as w:
        w.add("u", 5)
        w.add("neg", -5)
        w.add("big", 2**40)
        w.add("huge", 2**63 + 1)
        w.add("negbig", -(2**40))
        w.add("x", 0.5)
        w.add("b", True)
        w.add("s", "str")
        w.add("ints", [1, -2])
        w.add("strs", ["a"])
        w.add("np", np.arange(3, dtype=np.int16))
        w.add("npscalar", np.float64(2.5))
    with GGUFFile(p) as f:
        want = {"u": V.UINT32, "neg": V.INT32, "big": V.UINT64, "huge": V.UINT64, "negbig": V.INT64, "x": V.FLOAT32,
                "b": V.BOOL, "s": V.STRING, "npscalar": V.FLOAT64}
        for k, t in want.items():
            assert f.type_spec(k) == (t,), k
        assert f.type_spec("ints") == (V.ARRAY, V.INT32) and f.type_spec("strs") == (V.ARRAY, V.STRING)
        assert f.type_spec("np") == (V.ARRAY, V.INT16) and f.metadata["huge"] == 2**63 + 1


scalar_types = st.sampled_from(sorted(RANGES) + [V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING])


@st.composite
def typed_value(draw: st.DrawFn) -> tuple[object, tuple[int, ...]]:
    t = draw(scalar_types)
    array = draw(st.booleans())

    def one() -> object:
        if t in RANGES:
            return draw(st.integers(*RANGES[t]))
        if t == V.BOOL:
            return draw(st.booleans())
        if t == V.STRING:
            return draw(st.text(max_size=20))
        return draw(st.floats(allow_nan=False, width=32 if t == V.FLOAT32 else 64))

    if array:
        return [one() for _ in range(draw(st.integers(0, 80)))], (V.ARRAY, t)
    return one(), (t,)


@given(kvs=st.dictionaries(st.text(min_size=1, max_size=12), typed_value(), max_size=8),
       alignment=st.sampled_from([1, 8, 32, 64]))
@settings(max_examples=40)
def test_round_trip_hypothesis(tmp_path_factory: pytest.TempPathFactory, kvs: dict, alignment: int) -> None:
    p = tmp_path_factory.mktemp("w") / "h.gguf"
    kvs.pop("general.alignment", None)
    with GGUFWriter(p, alignment=alignment, fsync=False) as w:
        for k, (v, spec) in kvs.items():
            w.add(k, v, spec)
        w.add_tensor("t", np.arange(8, dtype=np.float32))
    ref = _ref_fields(p)
    with GGUFFile(p) as f:
        assert f.alignment == alignment and f.data_offset % alignment == 0
        assert np.array_equal(f.tensor("t"), np.arange(8, dtype=np.float32))
        for k, (v, spec) in kvs.items():
            assert f.type_spec(k) == spec
            got = f.metadata[k]
            want_ref = ref[k].contents()
            if spec[-1] == V.FLOAT32:  # stored as f32
                v = np.asarray(v, np.float32).tolist() if spec[0] == V.ARRAY else float(np.float32(v))
            got_l = got.tolist() if isinstance(got, np.ndarray) else got
            assert got_l == v and want_ref == v, (k, got_l, want_ref, v)


def test_tensors_round_trip_against_gguf_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((3, 64)).astype(np.float32)
    x32[0, :4] = [np.nan, np.inf, -0.0, 1e-40]
    finite = np.nan_to_num(x32, posinf=0.0)
    q4 = gguf.quants.quantize(finite, gguf.GGMLQuantizationType.Q4_0)  # uint8 blocks (3, 36), the reference format
    q8 = gguf.quants.quantize(finite, gguf.GGMLQuantizationType.Q8_0)
    bf = gguf.quants.quantize(x32, gguf.GGMLQuantizationType.BF16)  # gguf-py's f32 -> bf16 rounding
    tensors = {
        "f32": (x32, {}),
        "f16": (x32.astype(np.float16), {}),
        "f16_from_f32": (x32, {"ggml_type": GGMLType.F16}),
        "bf16_from_f32": (x32, {"ggml_type": GGMLType.BF16}),
        "bf16_bits": (np.asarray(bf).view(np.uint16).reshape(3, 64), {"ggml_type": GGMLType.BF16}),
        "q4_0": (q4, {"ggml_type": GGMLType.Q4_0, "shape": (3, 64)}),
        "q8_0_bytes": (q8.tobytes(), {"ggml_type": GGMLType.Q8_0, "shape": (3, 64)}),
        "i32": (np.arange(24, dtype=np.int32).reshape(2, 3, 4), {}),
        "f64": (np.arange(5, dtype=np.float64), {}),
        "4d": (np.ones((2, 1, 3, 4), np.float32), {}),
        "lazy": (lambda: x32 * 2, {"ggml_type": GGMLType.F32, "shape": (3, 64)}),
        "empty": (np.zeros((0, 4), np.float32), {}),
        "big_endian": (np.arange(4, dtype=">f4"), {}),
    }
    p = tmp_path / "t.gguf"
    with GGUFWriter(p, alignment=64) as w:
        w.add("general.architecture", "test")
        for name, (data, kw) in tensors.items():
            w.add_tensor(name, data, **kw)
    ref = {t.name: t for t in gguf.GGUFReader(p).tensors}
    with GGUFFile(p) as f:
        assert f.alignment == 64 and list(f.tensors) == list(tensors)
        for name, t in f.tensors.items():
            r = ref[name]
            assert int(r.tensor_type) == t.ggml_type and r.n_bytes == t.nbytes, name
            assert [int(d) for d in r.shape] == list(t.ne), name
            assert r.data_offset == f.data_offset + t.offset and t.offset % 64 == 0
        np.testing.assert_array_equal(f.tensor("f32"), x32)
        np.testing.assert_array_equal(f.tensor("f16"), x32.astype(np.float16))
        np.testing.assert_array_equal(f.tensor("f16_from_f32"), x32.astype(np.float16))
        np.testing.assert_array_equal(f.tensor("bf16_from_f32").view(np.uint8).ravel(), np.asarray(bf).view(np.uint8).ravel())
        np.testing.assert_array_equal(f.tensor("bf16_bits"), f.tensor("bf16_from_f32"))
        np.testing.assert_array_equal(f.tensor("q4_0"), q4)
        np.testing.assert_array_equal(gguf.quants.dequantize(f.tensor("q8_0_bytes"), gguf.GGMLQuantizationType.Q8_0),
                                      gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0))
        np.testing.assert_array_equal(f.tensor("i32"), np.arange(24).reshape(2, 3, 4))
        np.testing.assert_array_equal(f.tensor("4d"), np.ones((2, 1, 3, 4)))
        np.testing.assert_array_equal(f.tensor("lazy"), x32 * 2)
        assert f.tensor("empty").shape == (0, 4) and f.tensors["empty"].nbytes == 0
        np.testing.assert_array_equal(f.tensor("big_endian"), np.arange(4, dtype=np.float32))
        assert f.tensors["q4_0"].shape == (3, 64)


def test_streaming_holds_one_tensor_at_a_time(tmp_path: Path) -> None:
    """Callables are called in file order, one at a time, each only after the previous tensor was written."""
    import weakref

    alive: list[weakref.ref] = []
    calls: list[str] = []

    def make(i: int):
        def produce() -> np.ndarray:
            assert all(r() is None for r in alive), "an earlier tensor is still referenced"
            calls.append(f"t{i}")
            a = np.full((4, 32), i, np.float32)
            alive.append(weakref.ref(a))
            return a
        return produce

    p = tmp_path / "s.gguf"
    w = GGUFWriter(p)
    for i in range(5):
        w.add_tensor(f"t{i}", make(i), ggml_type=GGMLType.F32, shape=(4, 32))
    assert calls == []  # nothing produced while declaring
    w.finish()
    assert calls == [f"t{i}" for i in range(5)]
    with GGUFFile(p) as f:
        for i in range(5):
            assert (f.tensor(f"t{i}") == i).all()


def test_explicit_streaming_api(tmp_path: Path) -> None:
    p = tmp_path / "e.gguf"
    w = GGUFWriter(p)
    w.add("general.architecture", "x")
    w.add_tensor("a", np.ones(32, np.float32))
    w.add_tensor_info("b", (2, 32), GGMLType.F16)
    w.add_tensor_info("c", (1, 32), GGMLType.Q8_0)
    with pytest.raises(ValueError, match="'b' was declared but its data was never written"):
        _finish_missing(tmp_path)
    w.write_tensor_data("b", np.full((2, 32), 3, np.float16))  # writes "a" first
    with pytest.raises(ValueError, match="already written"):
        w.write_tensor_data("b", np.full((2, 32), 3, np.float16))
    w.write_tensor_data("c", np.zeros(34, np.uint8))
    w.finish()
    with GGUFFile(p) as f:
        assert (f.tensor("a") == 1).all() and (f.tensor("b") == 3).all() and f.tensor("c").shape == (1, 34)
    assert [t.name for t in gguf.GGUFReader(p).tensors] == ["a", "b", "c"]


def _finish_missing(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "y.gguf")
    w.add_tensor_info("b", (32,), 0)
    w.finish()


def _no_temp_files(d: Path) -> bool:
    return not [x for x in os.listdir(d) if x.endswith(".tmp")]


def test_atomic_no_file_on_error(tmp_path: Path) -> None:
    p = tmp_path / "out.gguf"

    def boom() -> np.ndarray:
        raise RuntimeError("converter failed")

    with pytest.raises(RuntimeError, match="converter failed"):
        with GGUFWriter(p) as w:
            w.add("k", 1)
            w.add_tensor("a", np.ones(32, np.float32))
            w.add_tensor("b", boom, ggml_type=GGMLType.F32, shape=(32,))
    assert not p.exists() and _no_temp_files(tmp_path)

    with pytest.raises(KeyError):
        with GGUFWriter(p) as w:
            w.add("k", 1)
            raise KeyError("user code failed")
    assert not p.exists() and _no_temp_files(tmp_path)

    # a wrong-sized tensor produced by a callable: ValueError, nothing left behind, an old file untouched
    p.write_bytes(b"old")
    with pytest.raises(ValueError, match="bytes given"):
        with GGUFWriter(p) as w:
            w.add_tensor("a", lambda: np.ones(31, np.uint8), ggml_type=GGMLType.F32, shape=(32,))
    assert p.read_bytes() == b"old" and _no_temp_files(tmp_path)

    with GGUFWriter(p) as w:  # success replaces it
        w.add("k", 1)
    assert GGUFFile(p).metadata == {"k": 1} and _no_temp_files(tmp_path)


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda w: w.add("k", 256, V.UINT8), ValueError, "out of range"),
        (lambda w: w.add("k", -1, V.UINT64), ValueError, "out of range"),
        (lambda w: w.add("k", [1, 2**40], (V.ARRAY, V.INT32)), ValueError, "out of range"),
        (lambda w: w.add("k", 1.5, V.INT32), TypeError, "integers"),
        (lambda w: w.add("k", "x", V.UINT32), TypeError, "integers"),
        (lambda w: w.add("k", 2, V.BOOL), TypeError, "bools"),
        (lambda w: w.add("k", 5, V.STRING), TypeError, "must be str"),
        (lambda w: w.add("k", [1], V.ARRAY), ValueError, "element type"),
        (lambda w: w.add("k", [[1]], (V.ARRAY, V.ARRAY)), ValueError, "element type of the inner"),
        (lambda w: w.add("k", 1, 99), ValueError, "unknown GGUF value type"),
        (lambda w: w.add("k", [], None), ValueError, "empty array"),
        (lambda w: w.add("k", object(), None), TypeError, "cannot infer"),
        (lambda w: w.add("", 1), ValueError, "non-empty"),
        (lambda w: (w.add("k", 1), w.add("k", 2)), ValueError, "duplicate metadata key"),
        (lambda w: w.add("general.alignment", 48), ValueError, "power of two"),
        (lambda w: w.add_tensor("x" * 64, np.ones(1, np.float32)), ValueError, "at most 63"),
        (lambda w: (w.add_tensor("a", np.ones(1, np.float32)), w.add_tensor("a", np.ones(1, np.float32))),
         ValueError, "duplicate tensor"),
        (lambda w: w.add_tensor("a", np.ones((2, 2, 2, 2, 2), np.float32)), ValueError, "1..4 dimensions"),
        (lambda w: w.add_tensor("a", np.zeros(18, np.uint8), ggml_type=GGMLType.Q4_0, shape=(16,)), ValueError,
         "block size 32"),
        (lambda w: w.add_tensor("a", np.zeros(17, np.uint8), ggml_type=GGMLType.Q4_0, shape=(32,)), ValueError,
         "17 bytes given"),
        (lambda w: w.add_tensor("a", np.zeros(18, np.uint8), ggml_type=GGMLType.Q4_0), ValueError, "needs shape="),
        (lambda w: w.add_tensor("a", np.zeros(4, np.float32), ggml_type=GGMLType.Q4_0, shape=(32,)), TypeError,
         "raw uint8"),
        (lambda w: w.add_tensor("a", np.zeros(4, np.uint16)), TypeError, "cannot infer a ggml type"),
        (lambda w: w.add_tensor("a", np.zeros(4, np.float64), ggml_type=GGMLType.F32), TypeError, "must be float32"),
        (lambda w: w.add_tensor("a", np.zeros(4, np.float32), shape=(5,)), ValueError, "do not fit"),
        (lambda w: w.add_tensor("a", lambda: 0), ValueError, "needs ggml_type= and shape="),
        (lambda w: w.add_tensor("a", iter([b"x"])), ValueError, "needs ggml_type= and shape="),
        (lambda w: w.add_tensor("a", [1.0, 2.0]), TypeError, "numpy array, bytes or a callable"),
        (lambda w: w.add_tensor("a", np.ones(1, np.float32), ggml_type=31), ValueError, "unknown ggml type"),
    ],
)
def test_bad_arguments(tmp_path: Path, call, exc: type, pattern: str) -> None:
    w = GGUFWriter(tmp_path / "bad.gguf")
    with pytest.raises(exc, match=pattern):
        call(w)
    w.abort()
    assert not (tmp_path / "bad.gguf").exists() and _no_temp_files(tmp_path)


def test_writer_state_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="power of two"):
        GGUFWriter(tmp_path / "a.gguf", alignment=3)
    w = GGUFWriter(tmp_path / "a.gguf")
    w.finish()
    w.finish()  # idempotent
    with pytest.raises(RuntimeError, match="'done'"):
        w.add("k", 1)
    with GGUFFile(tmp_path / "a.gguf") as f:
        assert f.metadata == {} and f.tensors == {}


def test_copy_a_real_file(tmp_path: Path, shared_dir: Path) -> None:
    """Copying every key of a real vocab (llama.cpp-written) with its type spec reproduces the file exactly."""
    src = shared_dir / "vocab" / "ggml-vocab-llama-spm.gguf"
    dst = tmp_path / "copy.gguf"
    with GGUFFile(src) as f, GGUFWriter(dst) as w:
        for k, v in f.metadata.items():
            w.add(k, v, f.type_spec(k))
    assert dst.read_bytes() == src.read_bytes()  # the same file, byte for byte
    with GGUFFile(dst) as g, GGUFFile(src) as f:
        assert list(g.metadata) == list(f.metadata)


def test_copy_file_with_tensors_is_byte_identical(tmp_path: Path) -> None:
    """Re-writing a file from GGUFFile's views (metadata with its type specs, tensors streamed lazily from the
    source map) reproduces it byte for byte: what a converter or re-quantizer does."""
    rng = np.random.default_rng(3)
    src = tmp_path / "src.gguf"
    with GGUFWriter(src, alignment=64) as w:
        w.add("general.architecture", "x")
        w.add("general.alignment", 64, V.UINT32)
        w.add("l", [[1, 2]], (V.ARRAY, V.ARRAY, V.INT8))
        w.add_tensor("a", rng.standard_normal((3, 32)).astype(np.float32))
        w.add_tensor("b", rng.integers(0, 255, (2, 210), dtype=np.uint8), ggml_type=GGMLType.Q6_K, shape=(2, 256))
        w.add_tensor("c", rng.integers(0, 65535, (5,), dtype=np.uint16), ggml_type=GGMLType.BF16)
        w.add_tensor("d", np.ones((2, 2, 2), np.float16))
    dst = tmp_path / "dst.gguf"
    with GGUFFile(src) as f, GGUFWriter(dst, alignment=f.alignment) as w:
        for k, v in f.metadata.items():
            w.add(k, v, f.type_spec(k))
        for name, t in f.tensors.items():
            w.add_tensor(name, lambda name=name: f.tensor(name), ggml_type=t.ggml_type, shape=t.shape)
    assert dst.read_bytes() == src.read_bytes()


def test_chunked_tensors(tmp_path: Path) -> None:
    """Tensor data as an iterator of chunks (row groups), through add_tensor and write_tensor_data; a wrong total
    raises and leaves no file."""
    rows = np.arange(8 * 64, dtype=np.float32).reshape(8, 64)
    q8 = gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q8_0)
    p = tmp_path / "c.gguf"
    with GGUFWriter(p) as w:
        w.add_tensor("f16", (rows[i : i + 3] for i in range(0, 8, 3)), ggml_type=GGMLType.F16, shape=(8, 64))
        w.add_tensor("q8", lambda: (q8[i : i + 2] for i in range(0, 8, 2)), ggml_type=GGMLType.Q8_0, shape=(8, 64))
        w.add_tensor_info("bytes", (2, 32), GGMLType.Q4_0)
        w.write_tensor_data("bytes", [b"\1" * 18, bytearray(b"\2" * 18)])
    with GGUFFile(p) as f:
        np.testing.assert_array_equal(f.tensor("f16"), rows.astype(np.float16))
        np.testing.assert_array_equal(f.tensor("q8"), q8)
        assert f.tensor("bytes").tolist() == [[1] * 18, [2] * 18]
    for bad, pattern in (([b"\0" * 30], "chunks give 30 bytes"), ([b"\0" * 30, b"\0" * 30], "more than the 36")):
        out = tmp_path / "bad.gguf"
        with pytest.raises(ValueError, match=pattern):
            with GGUFWriter(out) as w:
                w.add_tensor("x", iter(bad), ggml_type=GGMLType.Q4_0, shape=(2, 32))
        assert not out.exists() and _no_temp_files(tmp_path)
    with pytest.raises(TypeError, match="float16"):
        with GGUFWriter(tmp_path / "bad2.gguf") as w:
            w.add_tensor("x", iter([np.zeros(32, np.int32)]), ggml_type=GGMLType.F16, shape=(32,))
    with pytest.raises(ValueError, match="bytes given"):  # a user memoryview is checked like any other data
        with GGUFWriter(tmp_path / "bad3.gguf") as w:
            w.add_tensor_info("x", (32,), GGMLType.F32)
            w.write_tensor_data("x", memoryview(b"\0" * 100))
    w = GGUFWriter(tmp_path / "bad4.gguf")  # without a with-block: a failed write discards the file at once
    w.add_tensor_info("x", (32,), GGMLType.F32)
    with pytest.raises(ValueError):
        w.write_tensor_data("x", b"\0" * 3)
    assert _no_temp_files(tmp_path) and not (tmp_path / "bad4.gguf").exists()
    with pytest.raises(RuntimeError, match="aborted"):
        w.finish()
