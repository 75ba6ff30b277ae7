"""Hugging Face -> GGUF conversion (`convert`) and llama-quantize's type recipes (`mixes`)."""
from __future__ import annotations

from .driver import OUTTYPES, ConvertError, ConvertResult, convert

__all__ = ["OUTTYPES", "ConvertError", "ConvertResult", "convert"]
