"""Fuzzing the GGUF reader: mutated valid files (truncated, bytes flipped, length/count/type/dimension/offset fields
rewritten at their real offsets) must either load, with every tensor view readable and every array decodable, or
raise GGUFError: never another exception, a crash or a hang.

Default run: exhaustive sweeps (every truncation length, every field x every interesting value) plus a few hundred
hypothesis examples, well under 30 s. `pytest -m slow tests/test_gguf_fuzz.py` runs thousands more.
"""
from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_gguf.ggml_types import GGMLType
from moe_gguf.gguf import ArrayRef, GGUFError, GGUFFile, ValueType as V
from moe_gguf.gguf_writer import GGUFWriter

SIZES = {V.UINT8: 1, V.INT8: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4, V.FLOAT32: 4, V.BOOL: 1,
         V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}
HANG_SECONDS = 5.0


def _seed_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    strings = ["", "a", "Ġthe", "\u2603" * 3, "x" * 300] + [f"t{i}" for i in range(95)]  # >= 64: vectorised scan
    with GGUFWriter(path, fsync=False) as w:
        w.add("general.architecture", "deepseek2")
        w.add("deepseek2.block_count", 2, V.UINT32)
        w.add("deepseek2.rope.freq_base", 10000.0, V.FLOAT32)
        w.add("deepseek2.expert_weights_norm", True, V.BOOL)
        w.add("i8", -3, V.INT8)
        w.add("u64", 2**40, V.UINT64)
        w.add("f64", 0.5, V.FLOAT64)
        w.add("tokenizer.ggml.tokens", strings, (V.ARRAY, V.STRING))
        w.add("tokenizer.ggml.token_type", list(range(100)), (V.ARRAY, V.INT32))
        w.add("flags", [True, False], (V.ARRAY, V.BOOL))
        w.add("nested", [[1, 2], [3]], (V.ARRAY, V.ARRAY, V.UINT16))
        w.add("tokenizer.chat_template", "{{ messages }}")
        w.add_tensor("token_embd.weight", rng.standard_normal((4, 32)).astype(np.float32))
        w.add_tensor("norm", np.ones(32, np.float16))
        w.add_tensor("q4", rng.integers(0, 255, (2, 18), dtype=np.uint8), ggml_type=GGMLType.Q4_0, shape=(2, 32))
        w.add_tensor("q6k", rng.integers(0, 255, (1, 210), dtype=np.uint8), ggml_type=GGMLType.Q6_K, shape=(1, 256))
        w.add_tensor("bf", np.zeros((2, 2, 4), np.uint16), ggml_type=GGMLType.BF16)
        w.add_tensor("empty", np.zeros((0, 4), np.float32))


def _seed_small(path: Path) -> None:
    with GGUFWriter(path, alignment=8, fsync=False) as w:
        w.add("general.architecture", "llama")
        w.add("s", ["x", "yy"], (V.ARRAY, V.STRING))
        w.add("deep", [[[1.0]]], (V.ARRAY, V.ARRAY, V.ARRAY, V.FLOAT64))
        w.add_tensor("w", np.arange(8, dtype=np.int32).reshape(2, 4))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("seeds")
    out = {}
    for name, make in (("model", _seed_model), ("small", _seed_small)):
        make(d / name)
        out[name] = (d / name).read_bytes()
    return out


def walk_fields(b: bytes) -> list[tuple[int, int, str]]:
    """(offset, size, kind) of every header, count, length, type, dimension and offset field of a valid file,
    found by an independent walk of the layout."""
    fields = [(0, 4, "magic"), (4, 4, "version"), (8, 8, "n_tensors"), (16, 8, "n_kv")]
    n_tensors, n_kv = struct.unpack_from("<QQ", b, 8)
    pos = 24

    def u32() -> int:
        return struct.unpack_from("<I", b, pos)[0]

    def u64() -> int:
        return struct.unpack_from("<Q", b, pos)[0]

    def string(kind: str) -> None:
        nonlocal pos
        fields.append((pos, 8, kind))
        pos += 8 + u64()

    def value(t: int) -> None:
        nonlocal pos
        if t in SIZES:
            if t == V.BOOL:
                fields.append((pos, 1, "bool"))
            pos += SIZES[t]
        elif t == V.STRING:
            string("string length")
        else:
            fields.append((pos, 4, "element type"))
            et = u32()
            fields.append((pos + 4, 8, "array count"))
            pos += 4
            n = u64()
            pos += 8
            for _ in range(n):
                value(et)

    for _ in range(n_kv):
        string("key length")
        fields.append((pos, 4, "value type"))
        t = u32()
        pos += 4
        value(t)
    for _ in range(n_tensors):
        string("name length")
        fields.append((pos, 4, "n_dims"))
        nd = u32()
        pos += 4
        for _ in range(nd):
            fields.append((pos, 8, "dimension"))
            pos += 8
        fields.append((pos, 4, "ggml type"))
        fields.append((pos + 4, 8, "tensor offset"))
        pos += 12
    return fields


def _interesting(size: int, old: int, file_size: int, offset: int, full: bool = True) -> list[int]:
    top = (1 << (8 * size)) - 1
    vals = {0, 1, 0x7F, 0xFF, 0x100, 2**31, 2**32 - 1, 2**63, 2**64 - 1, file_size, file_size - offset, old + 1,
            old - 1, old * 2}
    if full:
        vals |= {2, 3, 7, 8, 9, 12, 13, 31, 32, 33, 64, 0x80, 0xFFFF, 0x10000, 2**31 - 1, 2**32, 2**62, 2**63 - 1,
                 file_size - offset - 8, old + 32, old ^ (1 << 62)}
    return sorted(v & top for v in vals if v >= 0)


def check(blob: bytes, path: Path) -> str:
    """Load `blob` both ways; return "ok" or "error". Anything but GGUFError, or a hang, fails the test."""
    path.write_bytes(blob)
    outcome = []
    for lazy in (False, True):
        t = time.perf_counter()
        try:
            f = GGUFFile(path, lazy_arrays=lazy)
        except GGUFError as e:
            assert str(e)
            outcome.append("error")
            continue
        with f:
            for name, info in f.tensors.items():
                v = f.tensor(name)
                assert v.nbytes == info.nbytes
                if v.size:
                    flat = v.reshape(-1)
                    _ = (flat[0], flat[-1])  # the first and last bytes are readable
            for k, v in f.metadata.items():
                if isinstance(v, ArrayRef):
                    assert len(f.array(k)) == v.count
                    f.array(k, as_list=True)
            repr(f)
        outcome.append("ok")
        assert time.perf_counter() - t < HANG_SECONDS, "too slow: a hang?"
    assert outcome[0] == outcome[1], "lazy and eager parsing disagree"
    return outcome[0]


def test_seeds_load(seeds: dict[str, bytes], tmp_path: Path) -> None:
    for name, b in seeds.items():
        assert check(b, tmp_path / name) == "ok"
        kinds = {k for _, _, k in walk_fields(b)}
        assert {"array count", "key length", "dimension", "tensor offset", "string length"} <= kinds


@pytest.mark.parametrize("seed", ["model", "small"])
def test_every_truncation(seeds: dict[str, bytes], tmp_path: Path, seed: str) -> None:
    b = seeds[seed]
    with GGUFFile(_write(tmp_path / "full", b)) as f:
        last_end = max(f.data_offset + t.offset + t.nbytes for t in f.tensors.values())
    cuts = set(range(0, len(b), 1 if len(b) < 1024 else 11)) | set(range(min(len(b), 200)))
    for off, size, _ in _sample_fields(b):  # around every field
        cuts |= {off - 1, off, off + 1, off + size - 1, off + size}
    cuts |= {last_end - 1, last_end}
    for n in sorted(c for c in cuts if 0 <= c < len(b)):
        r = check(b[:n], tmp_path / "t.gguf")
        assert r == ("ok" if n >= last_end else "error"), n  # only trailing padding may be cut


def _sample_fields(b: bytes) -> list[tuple[int, int, str]]:
    """Every field except the length prefixes of strings after the 12th (the rest of a long string array adds
    nothing its head does not cover)."""
    out, n_strings = [], 0
    for f in walk_fields(b):
        if f[2] == "string length":
            n_strings += 1
            if n_strings > 12:
                continue
        out.append(f)
    return out


def _write(p: Path, b: bytes) -> Path:
    p.write_bytes(b)
    return p


@pytest.mark.parametrize("seed", ["model", "small"])
def test_every_field_rewrite(seeds: dict[str, bytes], tmp_path: Path, seed: str) -> None:
    b = seeds[seed]
    seen_ok = seen_err = 0
    for off, size, kind in _sample_fields(b):
        old = int.from_bytes(b[off : off + size], "little")
        for v in _interesting(size, old, len(b), off, full=False):
            m = bytearray(b)
            m[off : off + size] = v.to_bytes(size, "little")
            if check(bytes(m), tmp_path / "f.gguf") == "ok":
                seen_ok += 1
            else:
                seen_err += 1
    assert seen_err > 0 and seen_ok > 0  # both outcomes happen: the sweep is meaningful


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    b = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    fields = walk_fields(bytes(b))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "field", "field", "truncate", "splice"]))
        if op == "flip" and b:
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        elif op == "field":
            off, size, _ = draw(st.sampled_from(fields))
            if off + size <= len(b):
                old = int.from_bytes(b[off : off + size], "little")
                v = draw(st.one_of(st.sampled_from(_interesting(size, old, len(b), off)),
                                   st.integers(0, (1 << (8 * size)) - 1)))
                b[off : off + size] = v.to_bytes(size, "little")
        elif op == "truncate":
            del b[draw(st.integers(0, len(b))):]
        elif op == "splice" and b:
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(b)


_FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@_FUZZ
@given(data=st.data())
def test_random_mutations(seeds: dict[str, bytes], tmp_path: Path, data: st.DataObject) -> None:
    check(data.draw(mutated(seeds)), tmp_path / "m.gguf")


@pytest.mark.slow
@settings(_FUZZ, max_examples=6000)
@given(data=st.data())
def test_random_mutations_long(seeds: dict[str, bytes], tmp_path: Path, data: st.DataObject) -> None:
    check(data.draw(mutated(seeds)), tmp_path / "m.gguf")


@pytest.mark.slow
def test_real_vocab_truncations_and_fields(shared_dir: Path, tmp_path: Path) -> None:
    """A real llama.cpp-written vocab: truncations across the whole file and rewrites of its first 2000 fields."""
    b = (shared_dir / "vocab" / "ggml-vocab-llama-spm.gguf").read_bytes()
    for n in list(range(0, 4096, 7)) + list(range(4096, len(b), 1999)):
        assert check(b[:n], tmp_path / "v.gguf") == "error"
    for off, size, _ in walk_fields(b)[:2000:3]:
        old = int.from_bytes(b[off : off + size], "little")
        for v in (0, old + 1, 2**64 - 1 & ((1 << (8 * size)) - 1), len(b)):
            m = bytearray(b)
            m[off : off + size] = (v & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            check(bytes(m), tmp_path / "v.gguf")
