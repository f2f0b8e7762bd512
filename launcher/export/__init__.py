"""Exporting a run's model for the places models are served: GGUF (llama.cpp, Ollama, LM Studio), safetensors."""
