"""OpenAI Batch API compatibility, a layer on the base that the base never imports.

``requests`` validates input lines into jobs, ``outputs`` writes OpenAI's output lines from
result documents, ``service`` runs a batch's life (submit, progress, cancel, finalize).
"""
