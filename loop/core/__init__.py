"""The iteration core: orchestrator, steps, replay, generation and the training job."""
