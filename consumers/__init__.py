"""Kafka intake: parse, dead-letter, micro-batch, dispatch to Celery, commit settled offsets."""
