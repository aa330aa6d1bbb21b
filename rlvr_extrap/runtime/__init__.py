"""The in-trainer runtime: the callback, its background worker, the jump plan, the guard, LoRA and sharded-weight access, state files."""
