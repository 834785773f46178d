"""One `Task` per training stage, handed to the shared `pipeline.train.Trainer`."""
