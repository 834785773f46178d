"""Training: the one loop (Accelerate) every training stage shares, and one module per training stage
(`train_NAME.py`: its task and its `run`)."""
