"""moe-gguf: a GGUF-native quantized runtime for Mixture-of-Experts language models on CPUs."""

__version__ = "0.1.0"
