"""Training: one per-worker loop, launched in-process or as Ray Train DDP."""
