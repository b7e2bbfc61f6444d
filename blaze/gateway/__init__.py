"""``blaze gateway``: REST and OpenAI-compatible HTTP in front of the pipeline.

Modules: ``app`` (the FastAPI application), ``core`` (connections, authentication, scopes,
ownership), ``auth`` (API keys, JWT), ``limits`` (rate buckets, open-job caps), ``frontdoor``
(body limits, audit), ``errors`` (the two JSON error shapes), ``jobs`` (jobs API and SSE),
``openai`` (files, batches, models, chat/completions/embeddings), ``files`` (uploads in S3),
``admin`` (keys and dead letters over HTTP).
"""
