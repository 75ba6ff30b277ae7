"""Hugging Face -> GGUF conversion and the quantization recipes (see mixes.py, hf.py)."""
