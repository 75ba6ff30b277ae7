#!/usr/bin/env python3
"""Hugging Face -> GGUF: `python tools/convert.py MODEL_DIR --outfile out.gguf --outtype q4_k_m`.

A thin wrapper over `moe-gguf convert` (moe_gguf/convert/): same options, same errors."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moe_gguf.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["convert", *sys.argv[1:]], prog_name="convert.py")
