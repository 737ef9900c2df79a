"""Reading and writing the rollout state on `T.control` (CLI, HTTP, workers)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from ..kafka_io import KafkaTarget, new_producer, read_to_end
from .state import ControlLog, RolloutError, RolloutState, control_key

__all__ = ["change", "read_control", "writer_id", "write_state"]


def writer_id(kind: str) -> str:
    """Who writes (kept in the record key and its `by`): kind, host, process, a nonce."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def read_control(kafka: KafkaTarget, topic: str) -> ControlLog:
    """The fold of the whole control topic, to its end now."""
    log = ControlLog()
    async for chunk in read_to_end(kafka, topic):
        log.apply_all((r.key, r.value) for r in chunk)
    return log


async def write_state(producer: AIOKafkaProducer, topic: str, state: RolloutState,
                      writer: str) -> None:
    await producer.send_and_wait(topic, state.encode(),
                                 key=control_key(state.slot, state.seq, writer), partition=0)


async def change(kafka: KafkaTarget, topic: str,
                 build: Callable[[ControlLog], RolloutState], kind: str) -> RolloutState:
    """Read the state, build the next one from it, write it, and read back that it won
    (another writer may have changed the slot in between: then say so, nothing applied)."""
    log = await read_control(kafka, topic)
    new = build(log)
    writer = writer_id(kind)
    producer = new_producer(kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await write_state(producer, topic, new, writer)
    finally:
        await producer.stop()
    after = await read_control(kafka, topic)
    got = after.slots.get(new.slot)
    if got is None or got.seq != new.seq or got.encode() != new.encode():
        raise RolloutError(f"{new.slot}: another change was written at the same time and won "
                           f"(now {got.stage if got else 'none'} seq {got.seq if got else 0}); "
                           "check `status` and retry")
    return got
