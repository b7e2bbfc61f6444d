"""The stores: one contract module per store and one module per backend behind it.

| store | contract | backends |
|---|---|---|
| job status | ``status`` | ``status_memory``, ``status_redis`` (+ ``status_*.lua``) |
| results (objects by key) | ``results`` | ``results_memory``, ``results_s3`` |
| status events | ``events`` | ``events_memory``, ``events_kafka`` |
| dead letters | ``deadletters`` | ``deadletters_memory``, ``deadletters_kafka`` |

``connect`` builds the real backends from settings.
"""
