"""OpenAI-compatible HTTP server (FastAPI + uvicorn) and the web chat page. `moe-gguf serve` starts it."""
