#!/usr/bin/env python3
"""Write a random-weight GGUF with a real model's exact shapes, metadata and quant mix.

The same as `moe-gguf synth` (see moe_gguf/synth.py for how the weights are drawn), e.g.

    python tools/synth.py /tmp/v2-lite-q4_k_m.gguf --preset v2-lite --type q4_k_m
    python tools/synth.py /tmp/tiny.gguf --preset tiny --type q8_0 --layers 2 --seed 1
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moe_gguf.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["synth", *sys.argv[1:]], prog_name="tools/synth.py")
