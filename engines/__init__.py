"""Workers and engines: device pinning, model loading, batched inference, the Celery tasks."""
