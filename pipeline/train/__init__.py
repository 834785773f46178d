"""The one training loop (Accelerate), its checkpoints and the logger facade, shared by every training stage."""
from pipeline.train.loop import NonFiniteLossError, Task, Trainer

__all__ = ["NonFiniteLossError", "Task", "Trainer"]
