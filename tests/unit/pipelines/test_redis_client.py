"""The Redis clients Blaze opens speak RESP in C (hiredis), not redis-py's pure-Python codec."""

from __future__ import annotations

from redis.connection import HiredisRespSerializer, PythonRespSerializer

from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client, status_redis_client


def test_commands_are_packed_and_replies_parsed_by_hiredis() -> None:
    # without hiredis, packing the status scripts' arguments was 12 % of a worker's CPU
    settings = BlazeSettings()
    for client in (redis_client(settings), status_redis_client(settings)):
        conn = client.connection_pool.make_connection()  # not connected: nothing is sent
        assert isinstance(conn._command_packer, HiredisRespSerializer)
        assert not isinstance(conn._command_packer, PythonRespSerializer)
        assert type(conn._parser).__name__ == "_HiredisParser"
