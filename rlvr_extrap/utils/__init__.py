"""Small helpers every layer may use: atomic file writes, safetensors I/O, cache builds, figures, greedy generation."""
