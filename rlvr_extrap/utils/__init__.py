"""Small helpers every layer may use: atomic file writes, cache builds, figures, greedy generation."""
