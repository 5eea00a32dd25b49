"""PUMA secure LLM inference."""
