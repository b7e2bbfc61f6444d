"""Blaze's base: job and result schemas, settings, errors, the model registry, the stores, Kafka
helpers and the producer SDK (``pipelines.client``).

It imports nothing from the layers above it (``consumers``, ``engines``, ``dags``, ``infra``,
``blaze``) and nothing from its own optional layers (``pipelines.openai``,
``pipelines.templates``). Users import the public names from ``blaze``.
"""
