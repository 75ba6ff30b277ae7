"""The moe-gguf command line (typer). Each command is a thin wrapper over the module that does the work."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="moe-gguf: run Mixture-of-Experts (and dense) GGUF models on the CPU.",
)


@app.command()
def version() -> None:
    """Print the moe-gguf version."""
    from . import __version__

    typer.echo(__version__)


@app.command()
def info(
    path: Annotated[str, typer.Argument(help="Path to a .gguf file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every metadata key, every tensor).")] = False,
    no_tensors: Annotated[bool, typer.Option("--no-tensors", help="Leave out the per-tensor table.")] = False,
) -> None:
    """Summarize a GGUF file: architecture, hyperparameters, tokenizer, tensors and totals per type."""
    from .gguf import GGUFError
    from .inspect import info as render

    try:
        text = render(path, as_json=as_json, tensors=not no_tensors)
    except GGUFError as e:
        msg = str(e)
        raise _fail(msg if path in msg else f"{path}: {msg}") from None
    try:
        typer.echo(text)
    except BrokenPipeError:  # `moe-gguf info x.gguf | head`
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ---------------------------------------------------------------------------------------------- run / chat
_SAMPLING_HELP = "Sampling (llama.cpp's flags and defaults)"


def _fail(msg: object) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(1)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's mistake raises (missing/bad file, prompt too long, bad flag value): one line, exit 1."""
    from .gguf import GGUFError

    return (OSError, ValueError, TypeError, GGUFError)


_NO_POPULATE_HELP = "Page the weights in lazily instead of mapping the whole file at load (automatic for a file larger than the available memory)."


def _open(model: str, ctx_size: int, threads: int, populate: bool = True):  # -> (model, tokenizer)
    import os

    if not os.path.isfile(model):
        raise FileNotFoundError(f"model file not found: {model}")
    from .models import load_model
    from .tokenizer import Tokenizer

    m = load_model(model, n_ctx=ctx_size or None, n_threads=threads if threads > 0 else None, populate=populate)
    return m, Tokenizer.from_gguf(m.file)


def _chat_ids(m, tok, messages: list[dict[str, str]]) -> list[int]:
    from .chat import ChatTemplate
    from .generate import encode_chat

    return encode_chat(tok, ChatTemplate.from_gguf(m.file), messages)


def _stream(gen) -> str:
    import sys

    parts = []
    for chunk in gen:
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            parts.append(chunk.text)
    return "".join(parts)


@app.command()
def run(
    model: Annotated[Optional[str], typer.Argument(help="Path to a .gguf model file (omit with --demo).")] = None,
    prompt: Annotated[Optional[str], typer.Option("-p", "--prompt", help="The prompt.")] = None,
    file: Annotated[Optional[str], typer.Option("-f", "--file", help="Read the prompt from this file.")] = None,
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", help="Tokens to generate (-1 = until end or context full).")] = -1,
    threads: Annotated[int, typer.Option("-t", "--threads", help="CPU threads (0 = all cores).")] = 0,
    ctx_size: Annotated[int, typer.Option("-c", "--ctx-size", help="Context size in tokens (0 = the model's).")] = 4096,
    chat: Annotated[bool, typer.Option("--chat", help="Apply the model's chat template (prompt = one user message).")] = False,
    system: Annotated[Optional[str], typer.Option("-sys", "--system-prompt", help="System message (with --chat).")] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")] = None,
    temp: Annotated[float, typer.Option("--temp", help="Temperature (0 = greedy).", rich_help_panel=_SAMPLING_HELP)] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", help="Top-k (0 = off).", rich_help_panel=_SAMPLING_HELP)] = 40,
    top_p: Annotated[float, typer.Option("--top-p", help="Top-p (1.0 = off).", rich_help_panel=_SAMPLING_HELP)] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p", help="Min-p (0 = off).", rich_help_panel=_SAMPLING_HELP)] = 0.05,
    repeat_penalty: Annotated[float, typer.Option("--repeat-penalty", help="Repetition penalty (1.0 = off).", rich_help_panel=_SAMPLING_HELP)] = 1.0,
    repeat_last_n: Annotated[int, typer.Option("--repeat-last-n", help="Tokens the penalty looks back over (0 = off, -1 = context).", rich_help_panel=_SAMPLING_HELP)] = 64,
    seed: Annotated[int, typer.Option("--seed", help="RNG seed (-1 = random).", rich_help_panel=_SAMPLING_HELP)] = -1,
    demo: Annotated[bool, typer.Option("--demo", help="Run the Gemma 3 270M Q4_K_M demo model (pip install 'moe-gguf[demo]').")] = False,
    no_populate: Annotated[bool, typer.Option("--no-populate", help=_NO_POPULATE_HELP)] = False,
) -> None:
    """Generate text from a prompt, streaming it to stdout; speed statistics go to stderr."""
    import sys

    from .generate import encode_text, generate
    from .sampling import SamplingParams

    try:
        if demo:  # Gemma 3 270M Q4_K_M from PyPI (moe-gguf[demo]); a default prompt unless one is given
            from .models.gemma3 import DEMO_PROMPT, demo_model_path

            if model is not None:
                raise ValueError("give a model path or --demo, not both")
            model = demo_model_path()
            if prompt is None and file is None:
                prompt = DEMO_PROMPT
                typer.echo(prompt, nl=False)
        elif model is None:
            raise ValueError("give a model path (or --demo)")
        if (prompt is None) == (file is None):
            raise ValueError("give exactly one of -p PROMPT or -f PROMPT_FILE")
        if file is not None:
            with open(file, encoding="utf-8") as fh:
                prompt = fh.read()
        params = SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, None if seed < 0 else seed)
        m, tok = _open(model, ctx_size, threads, populate=not no_populate)
        if chat:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            ids = _chat_ids(m, tok, msgs)
        else:
            ids = encode_text(tok, prompt)
        gen = generate(m, tok, ids, params, n_predict if n_predict >= 0 else m.n_ctx, stop=stop)
        try:
            _stream(gen)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except KeyboardInterrupt:
            gen.close()
            sys.stdout.write("\n")
        except BrokenPipeError:  # `moe-gguf run ... | head`: the reader left; stop quietly
            gen.close()
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        typer.echo(gen.stats.summary(), err=True)
    except _user_errors() as e:
        raise _fail(e) from None


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Path to a .gguf model file.")],
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", help="Max tokens per reply (-1 = until end or context full).")] = -1,
    threads: Annotated[int, typer.Option("-t", "--threads", help="CPU threads (0 = all cores).")] = 0,
    ctx_size: Annotated[int, typer.Option("-c", "--ctx-size", help="Context size in tokens (0 = the model's).")] = 4096,
    system: Annotated[Optional[str], typer.Option("-sys", "--system-prompt", help="System message.")] = None,
    temp: Annotated[float, typer.Option("--temp", rich_help_panel=_SAMPLING_HELP)] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", rich_help_panel=_SAMPLING_HELP)] = 40,
    top_p: Annotated[float, typer.Option("--top-p", rich_help_panel=_SAMPLING_HELP)] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p", rich_help_panel=_SAMPLING_HELP)] = 0.05,
    repeat_penalty: Annotated[float, typer.Option("--repeat-penalty", rich_help_panel=_SAMPLING_HELP)] = 1.0,
    repeat_last_n: Annotated[int, typer.Option("--repeat-last-n", rich_help_panel=_SAMPLING_HELP)] = 64,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=_SAMPLING_HELP)] = -1,
    no_populate: Annotated[bool, typer.Option("--no-populate", help=_NO_POPULATE_HELP)] = False,
) -> None:
    """Interactive chat: one user message per stdin line, replies stream to stdout; EOF ends, /reset restarts.
    The KV cache is kept between turns, so each turn evaluates only the new tokens."""
    import sys

    from .generate import Context, ContextFullError, generate
    from .sampling import SamplingParams

    try:
        params = SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, None if seed < 0 else seed)
        m, tok = _open(model, ctx_size, threads, populate=not no_populate)
        ctx = Context(m)
        base = [{"role": "system", "content": system}] if system else []
        history: list[dict[str, str]] = []
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                typer.echo("> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.strip() == "/reset":
                history.clear()
                continue
            history.append({"role": "user", "content": line})
            while True:  # drop the oldest turns until the conversation fits
                ids = _chat_ids(m, tok, base + history)
                if len(ids) < m.n_ctx or len(history) == 1:
                    break
                del history[: 2 if len(history) > 2 else 1]
            try:
                gen = generate(m, tok, ids, params, n_predict if n_predict >= 0 else m.n_ctx, context=ctx)
            except ContextFullError as e:
                typer.echo(f"error: {e}", err=True)
                history.pop()
                continue
            try:
                reply = _stream(gen)
            except KeyboardInterrupt:
                gen.close()
                reply = ""
            sys.stdout.write("\n")
            sys.stdout.flush()
            history.append({"role": "assistant", "content": reply})
    except _user_errors() as e:
        raise _fail(e) from None


# ---------------------------------------------------------------------------------------------- synth / bench
@app.command()
def synth(
    out: Annotated[str, typer.Argument(help="Output .gguf path.")],
    arch: Annotated[str, typer.Option("--arch", help="Architecture (deepseek2).")] = "deepseek2",
    preset: Annotated[str, typer.Option("--preset", help="Shape preset: v2-lite (DeepSeek-V2-Lite) or tiny.")] = "v2-lite",
    qtype: Annotated[str, typer.Option("--type", help="q4_k_m (llama.cpp's mix), q8_0, f16 or f32.")] = "q4_k_m",
    layers: Annotated[Optional[int], typer.Option("--layers", help="Fewer layers than the preset.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="RNG seed.")] = 0,
    vocab: Annotated[Optional[str], typer.Option("--vocab", help="GGUF to copy the tokenizer from.")] = None,
) -> None:
    """Write a random-weight GGUF with a real model's exact shapes, metadata and quant mix (for benchmarks)."""
    import sys

    from .synth import write_synth

    def progress(done: int, total: int) -> None:
        sys.stderr.write(f"\r{done / 2**30:6.2f} / {total / 2**30:.2f} GiB")
        sys.stderr.flush()

    try:
        r = write_synth(out, arch=arch, preset=preset, qtype=qtype, n_layers=layers, seed=seed, vocab=vocab,
                        progress=progress if sys.stderr.isatty() else None)
    except (*_user_errors(), RuntimeError) as e:
        raise _fail(e) from None
    mix = ", ".join(f"{k} x{v}" for k, v in sorted(r.type_counts.items()))
    typer.echo(f"wrote {r.path}: {r.n_tensors} tensors ({mix}), {r.n_params / 1e9:.3f} B params, "
               f"{r.n_bytes / 2**30:.2f} GiB in {r.seconds:.1f} s")


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="Path to a .gguf model file.")],
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens for the pp test (0 = skip).")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Tokens for the tg test (0 = skip).")] = 128,
    threads: Annotated[int, typer.Option("-t", "--threads", help="CPU threads.")] = 2,
    repetitions: Annotated[int, typer.Option("-r", "--repetitions", help="Repetitions of each test.")] = 3,
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="Skip the warm-up run.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Progress on stderr.")] = False,
    no_populate: Annotated[bool, typer.Option("--no-populate", help=_NO_POPULATE_HELP)] = False,
) -> None:
    """llama-bench-style prompt-processing / generation speed, with the decode memory-bandwidth roofline."""
    import json

    from .bench import format_table, run_bench

    try:
        rep = run_bench(model, n_prompt=n_prompt, n_gen=n_gen, n_threads=threads, repetitions=repetitions,
                        warmup=not no_warmup, log=(lambda s: typer.echo(s, err=True)) if verbose else None,
                        populate=not no_populate)
    except _user_errors() as e:
        raise _fail(e) from None
    typer.echo(json.dumps(rep.to_json(), indent=2) if as_json else format_table(rep))


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="Path to a .gguf model file.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8080,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' on /v1/*.")] = None,
    ctx_size: Annotated[int, typer.Option("-c", "--ctx-size", help="Context size per slot (0 = the model's).")] = 4096,
    threads: Annotated[int, typer.Option("-t", "--threads", help="CPU threads (0 = all cores).")] = 0,
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="Sequences generated at once (each has its own KV cache).")] = 1,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait for a slot; beyond that: 503.")] = 64,
    no_populate: Annotated[bool, typer.Option("--no-populate", help=_NO_POPULATE_HELP)] = False,
) -> None:
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health) with a web chat at /."""
    try:
        from .server.app import serve as run_server

        if parallel < 1 or queue < 0:
            raise ValueError("--parallel must be >= 1 and --queue >= 0")
        run_server(model, host=host, port=port, api_key=api_key, ctx_size=ctx_size, threads=threads,
                   parallel=parallel, max_queue=queue, populate=not no_populate)
    except _user_errors() as e:
        raise _fail(e) from None


# ---------------------------------------------------------------------------------------------- quantize / convert
@app.command()
def quantize(
    src: Annotated[str, typer.Argument(help="Input .gguf (F32/F16/BF16/Q8_0 tensors; others with --allow-requantize).")],
    dst: Annotated[str, typer.Argument(help="Output .gguf path.")],
    qtype: Annotated[str, typer.Argument(help="q4_k_m, q5_k_m, q6_k, q8_0, q4_0, q4_k_s, q5_k_s, q4_k, q5_k, iq4_nl, iq4_xs, f16, bf16, f32.")],
    threads: Annotated[int, typer.Option("-t", "--threads", help="Worker threads (0 = all cores).")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="Accept already quantized tensors (re-encoded from their dequantized values; the two formats' rounding compounds).")] = False,
) -> None:
    """Quantize a GGUF file with llama-quantize's per-tensor mixes (streamed, multi-threaded, atomic output)."""
    import sys

    try:
        from .quantize import quantize_file

        r = quantize_file(src, dst, qtype, n_threads=threads, progress=not no_progress and sys.stderr.isatty(),
                          allow_requantize=allow_requantize)
    except (*_user_errors(), RuntimeError) as e:
        raise _fail(e) from None
    counts: dict[str, int] = {}
    for t in r.types.values():
        counts[t] = counts.get(t, 0) + 1
    mix = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    typer.echo(f"wrote {r.path}: {mix}; {r.bytes_in / 2**20:.1f} MiB -> {r.bytes_out / 2**20:.1f} MiB "
               f"in {r.seconds:.1f} s ({r.gb_per_s:.2f} GB/s)")


@app.command()
def convert(
    model_dir: Annotated[str, typer.Argument(help="Hugging Face model directory (config.json, *.safetensors, tokenizer).")],
    outfile: Annotated[str, typer.Option("--outfile", "-o", help="Output .gguf path.")],
    outtype: Annotated[str, typer.Option("--outtype", help="f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k, q4_k_s, q5_k_s, iq4_nl, iq4_xs.")] = "f16",
    threads: Annotated[int, typer.Option("-t", "--threads", help="Worker threads (0 = all cores).")] = 0,
    no_tokenizer: Annotated[bool, typer.Option("--no-tokenizer", help="Write no tokenizer metadata.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Convert a Hugging Face checkpoint to GGUF with llama.cpp's tensor names and metadata (streamed, atomic)."""
    import sys

    try:
        from .convert import convert as run_convert

        r = run_convert(model_dir, outfile, outtype, n_threads=threads, tokenizer=not no_tokenizer,
                        progress=not no_progress and sys.stderr.isatty())
    except (*_user_errors(), RuntimeError) as e:
        raise _fail(e) from None
    typer.echo(f"wrote {r.path}: {r.arch}, {r.n_tensors} tensors, {r.n_params / 1e6:.1f} M params, "
               f"{r.bytes_out / 2**20:.1f} MiB in {r.seconds:.1f} s")


if __name__ == "__main__":
    app()
