"""Chat templates: the GGUF file's `tokenizer.chat_template` (Jinja) or a named built-in, rendered in a sandbox.

The Jinja environment mirrors the one HF transformers gives chat templates: an immutable sandbox with
``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension (``break``/``continue``), the ``{% generation %}``
block tag, a ``tojson`` filter that does not HTML-escape, and the globals ``raise_exception(msg)`` and
``strftime_now(fmt)``. Templates see ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` (and the
other special-token strings the file names) plus any extra keyword given to `render` (``tools``,
``enable_thinking``, ``date_string`` ...).
"""
from __future__ import annotations

import json
import os
import warnings
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .gguf import GGUFFile

__all__ = ["ChatTemplate", "ChatTemplateError", "BUILTIN_TEMPLATES"]


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render (including the template's own raise_exception)."""


# ---------------------------------------------------------------------------------------------- built-in templates
BUILTIN_TEMPLATES: dict[str, str] = {
    # DeepSeek-V2 / V2-Lite Chat: "User: {u}\n\nAssistant: {a}<｜end▁of▁sentence｜>", system text on its own
    "deepseek2": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
        "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
    # DeepSeek-V3 / R1 style
    "deepseek3": (
        "{{ bos_token }}"
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}"
        "{% endfor %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Gemma has no system role: a system message is put in front of the first user turn
    "gemma": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] | trim + '\n\n' %}"
        "{% else %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + message['content'] | trim"
        " + '<end_of_turn>\n' }}"
        "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # Llama-2 chat: [INST] <<SYS>> ... <</SYS>> ... [/INST]
    "llama2": (
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = '<<SYS>>\n' + message['content'] | trim"
        " + '\n<</SYS>>\n\n' %}"
        "{% elif message['role'] == 'user' %}{{ bos_token + '[INST] ' + ns.system + message['content'] | trim"
        " + ' [/INST]' }}{% set ns.system = '' %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
}

# tokens that identify a template family when a file carries no template (checked in order)
_FAMILY_BY_TOKEN = (
    ("<｜User｜>", "deepseek3"),
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
    ("<start_of_turn>", "gemma"),
    ("[INST]", "llama2"),
)
_FAMILY_BY_ARCH = {"deepseek2": "deepseek2", "deepseek": "deepseek2", "gemma": "gemma", "gemma2": "gemma",
                   "gemma3": "gemma", "qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml",
                   "qwen3moe": "chatml"}


# ---------------------------------------------------------------------------------------------- the environment
def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag],
        keep_trailing_newline=False,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(md: Mapping[str, Any], key: str) -> str | None:
    tokens = md.get("tokenizer.ggml.tokens")
    i = md.get(key)
    if isinstance(tokens, list) and isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens):
        return tokens[i]
    return None


class ChatTemplate:
    """A compiled chat template with the special-token strings it is rendered with."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str | None = None,
                 special_tokens: Mapping[str, str] | None = None) -> None:
        if not isinstance(source, str) or not source:
            raise ChatTemplateError("chat template source must be a non-empty string")
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        try:
            self._template = _make_env().from_string(source)
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"chat template {name or ''} does not compile: {e}") from e

    # ------------------------------------------------------------------ constructors
    @classmethod
    def builtin(cls, name: str, bos_token: str = "", eos_token: str = "") -> "ChatTemplate":
        """One of BUILTIN_TEMPLATES by name (deepseek2, deepseek3, chatml, llama3, gemma, llama2)."""
        try:
            src = BUILTIN_TEMPLATES[name]
        except KeyError:
            raise ChatTemplateError(
                f"no built-in chat template {name!r} (have: {', '.join(sorted(BUILTIN_TEMPLATES))})"
            ) from None
        return cls(src, bos_token, eos_token, name=name)

    @classmethod
    def from_gguf(cls, gguf_file: GGUFFile | str | os.PathLike[str] | Mapping[str, Any],
                  name: str | None = None) -> "ChatTemplate":
        """The template of a GGUF file (an open GGUFFile, a path, or its metadata dict).

        name=None: the file's `tokenizer.chat_template` (if it does not compile: a warning and the built-in
        below), or, when it has none, a built-in chosen from the
        architecture and vocabulary (deepseek2 for DeepSeek-V2, llama3/chatml/gemma/deepseek3 by their marker
        tokens, chatml otherwise). A name picks the file's `tokenizer.chat_template.<name>` if present, else the
        built-in of that name."""
        if isinstance(gguf_file, GGUFFile):
            md: Mapping[str, Any] = gguf_file.metadata
        elif isinstance(gguf_file, Mapping):
            md = gguf_file
        elif isinstance(gguf_file, (str, os.PathLike)):
            f = GGUFFile(gguf_file)
            try:
                md = dict(f.metadata)
            finally:
                f.close()
        else:
            raise TypeError(f"from_gguf expects a GGUFFile, a path or a metadata dict, got {type(gguf_file).__name__}")
        bos = _token_text(md, "tokenizer.ggml.bos_token_id") or ""
        eos = _token_text(md, "tokenizer.ggml.eos_token_id") or ""
        specials = {
            k: v for k, v in (
                ("unk_token", _token_text(md, "tokenizer.ggml.unknown_token_id")),
                ("pad_token", _token_text(md, "tokenizer.ggml.padding_token_id")),
            ) if v is not None
        }
        if name is not None:
            src = md.get(f"tokenizer.chat_template.{name}")
            if isinstance(src, str) and src:
                return cls(src, bos, eos, name=name, special_tokens=specials)
            t = cls.builtin(name, bos, eos)
            t.special_tokens = specials
            return t
        src = md.get("tokenizer.chat_template")
        if isinstance(src, str) and src:
            try:
                return cls(src, bos, eos, name="gguf", special_tokens=specials)
            except ChatTemplateError as e:
                warnings.warn(f"{e}; using the built-in {cls.guess_builtin(md)!r} template instead", stacklevel=2)
        t = cls.builtin(cls.guess_builtin(md), bos, eos)
        t.special_tokens = specials
        return t

    @staticmethod
    def guess_builtin(md: Mapping[str, Any]) -> str:
        """The built-in template name for a file without a chat template."""
        arch = md.get("general.architecture")
        tokens = md.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list):
            present = set(tokens)
            for marker, family in _FAMILY_BY_TOKEN:
                if marker in present:
                    return family
        if isinstance(arch, str) and arch in _FAMILY_BY_ARCH:
            return _FAMILY_BY_ARCH[arch]
        return "chatml"

    # ------------------------------------------------------------------ rendering
    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               merge_system: bool = True, **kwargs: Any) -> str:
        """Render a conversation (dicts with at least 'role' and 'content'). Extra keywords are template
        variables (tools, enable_thinking, date_string ...). Errors, including the template's own
        raise_exception, come out as ChatTemplateError. merge_system: when the template rejects a leading system
        message, retry with its text put in front of the first user message ("{system}\n\n{user}")."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TypeError("messages must be a list of dicts")
        msgs = []
        for k, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise TypeError(f"message {k} is a {type(m).__name__}, not a dict")
            if not isinstance(m.get("role"), str):
                raise ValueError(f"message {k} has no string 'role'")
            msgs.append(dict(m))
        ctx: dict[str, Any] = dict(self.special_tokens)
        ctx.update(bos_token=self.bos_token, eos_token=self.eos_token)
        ctx.update(kwargs)
        ctx.update(messages=msgs, add_generation_prompt=bool(add_generation_prompt))
        try:
            return self._template.render(**ctx)
        except jinja2.exceptions.TemplateError as e:
            err = e
        # templates without a system role (Gemma's raise_exception('System role not supported')): put the system
        # text in front of the first user message, as llama.cpp does, and try once more
        if merge_system and len(msgs) > 1 and msgs[0]["role"] == "system" and msgs[1]["role"] == "user":
            merged = [dict(msgs[1], content=f"{msgs[0].get('content', '')}\n\n{msgs[1].get('content', '')}")]
            ctx["messages"] = merged + msgs[2:]
            try:
                return self._template.render(**ctx)
            except jinja2.exceptions.TemplateError:
                pass
        raise ChatTemplateError(f"chat template {self.name or ''} failed: {err}") from err

    def apply(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
              **kwargs: Any) -> list[int]:
        """Render and tokenize a conversation for `tokenizer` (a moe_gguf Tokenizer): control tokens in the
        rendered text are parsed, BOS is added once (the template's own or the tokenizer's, never both) and no
        EOS is appended after the generation prompt."""
        text = self.render(messages, add_generation_prompt, **kwargs)
        ids: list[int] = []
        if tokenizer.add_bos and tokenizer.bos_id is not None:
            ids.append(tokenizer.bos_id)
            if self.bos_token and text.startswith(self.bos_token):
                text = text[len(self.bos_token):]
        ids.extend(tokenizer.encode(text, add_special=False, parse_special=True))
        return ids

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, {len(self.source)} chars)"
