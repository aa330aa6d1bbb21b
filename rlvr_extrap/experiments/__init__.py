"""Tasks, models and experiments: the built-in tasks and rewards, model loading, the embedded toy, the demo."""
