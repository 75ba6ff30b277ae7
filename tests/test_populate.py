"""GGUFFile.populate and load_model(populate=...): every page of the file mapped up front, so reading the weights
afterwards takes no page faults (counted by the kernel: getrusage's minor faults), through madvise and through the
page-touching fallback."""
from __future__ import annotations

import mmap
import resource
from pathlib import Path

import numpy as np
import pytest

from moe_gguf import synth
from moe_gguf.gguf import GGUFError, GGUFFile
from moe_gguf.gguf_writer import GGUFWriter

N_BYTES = 64 << 20  # 64 MiB of tensor data: 16384 pages


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.fixture()
def big_file(tmp_path: Path) -> Path:
    p = tmp_path / "big.gguf"
    w = GGUFWriter(p)
    w.add("general.architecture", "llama")
    w.add_tensor("w", np.random.default_rng(0).standard_normal(N_BYTES // 4).astype(np.float32))
    w.finish()
    return p


def _faults_reading(f: GGUFFile) -> tuple[int, float]:
    """Minor page faults while reading every page of tensor w once (a strided sum through the map)."""
    view = f.tensor("w").view(np.uint8)
    before = _minflt()
    s = float(view[:: mmap.PAGESIZE].sum(dtype=np.uint64))
    return _minflt() - before, s


def test_unpopulated_reads_fault(big_file: Path) -> None:
    """The control: a fresh map faults while it is read (else the other tests would prove nothing)."""
    with GGUFFile(big_file) as f:
        faults, _ = _faults_reading(f)
    assert faults >= 16  # (the kernel maps 16 pages or a whole large folio per fault)


@pytest.mark.parametrize("fallback", [False, True])
def test_populate_maps_every_page(big_file: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    if fallback:  # an advice the kernel refuses (EINVAL), as an old kernel refuses MADV_POPULATE_READ
        monkeypatch.setattr(mmap, "MADV_POPULATE_READ", 0x7FFF, raising=False)
    with GGUFFile(big_file) as f:
        f.populate()
        faults, s = _faults_reading(f)
        start = f.data_offset + f.tensors["w"].offset
        ref = float(np.fromfile(big_file, dtype=np.uint8)[start : start + N_BYTES][:: mmap.PAGESIZE].sum(dtype=np.uint64))
    assert faults <= 2
    assert s == ref  # populating changes nothing that is read


@pytest.mark.parametrize("fallback", [False, True])
def test_populate_truncated_after_open(big_file: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    """A file cut short after it was opened: a clear GGUFError, not a crash (a read past the end is SIGBUS)."""
    if fallback:
        monkeypatch.setattr(mmap, "MADV_POPULATE_READ", 0x7FFF, raising=False)
    with GGUFFile(big_file) as f:
        with open(big_file, "r+b") as fh:
            fh.truncate(f.size // 2)
        with pytest.raises(GGUFError, match="truncated|shrank"):
            f.populate()


def test_populate_closed_file(big_file: Path) -> None:
    f = GGUFFile(big_file)
    f.close()
    with pytest.raises(GGUFError, match="closed"):
        f.populate()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("populate") / "tiny.gguf"
    synth.write_synth(path, preset="tiny", qtype="q8_0", seed=1, vocab=shared_dir / "vocab" / "ggml-vocab-deepseek-llm.gguf")
    return path


def _count_populate(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = GGUFFile.populate
    monkeypatch.setattr(GGUFFile, "populate", lambda self: (calls.append(self.path), real(self))[1])
    return calls


def test_load_model_populates_by_default(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moe_gguf.models import load_model

    calls = _count_populate(monkeypatch)
    load_model(tiny_model, n_ctx=16, n_threads=1)
    assert calls == [str(tiny_model)]
    load_model(tiny_model, n_ctx=16, n_threads=1, populate=False)
    assert calls == [str(tiny_model)]


def test_load_model_skips_populate_beyond_memory(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file larger than the available memory is paged in lazily (populating it would only evict itself)."""
    import moe_gguf.models as models

    assert 0 < models._available_memory() < float("inf")  # read from /proc/meminfo on Linux
    calls = _count_populate(monkeypatch)
    monkeypatch.setattr(models, "_available_memory", lambda: float(tiny_model.stat().st_size - 1))
    models.load_model(tiny_model, n_ctx=16, n_threads=1)
    assert calls == []
    monkeypatch.setattr(models, "_available_memory", lambda: float(tiny_model.stat().st_size))
    models.load_model(tiny_model, n_ctx=16, n_threads=1)
    assert calls == [str(tiny_model)]


@pytest.mark.parametrize("cmd", [["bench", "-p", "4", "-n", "2", "-r", "1", "--no-warmup"], ["run", "-p", "Hi", "-n", "2", "--temp", "0"]])
def test_cli_no_populate(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, cmd: list[str]) -> None:
    from typer.testing import CliRunner

    from moe_gguf.cli import app

    calls = _count_populate(monkeypatch)
    args = [cmd[0], str(tiny_model), "-t", "1", *cmd[1:]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls == [str(tiny_model)]
    res = CliRunner().invoke(app, [*args, "--no-populate"])
    assert res.exit_code == 0, res.output
    assert calls == [str(tiny_model)]
