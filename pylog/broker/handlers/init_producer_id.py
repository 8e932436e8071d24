"""InitProducerId (key 22, v0-v1): producer ids for idempotent producers.

kafka-python 3 is idempotent by default and every client's idempotent mode starts here
(KAFKA-PROTOCOL.md §4). Ids come from the persisted allocator (pylog.broker.producer_ids),
which never hands out an id twice for the life of the data directory, restarts included;
the epoch of a new id is 0. v0-v1 carry no producer id or epoch in the request (KIP-360's
epoch bump is v3+), so every call is a new producer id at epoch 0; a client that must start
over (e.g. after UNKNOWN_PRODUCER_ID or OUT_OF_ORDER_SEQUENCE_NUMBER) gets a fresh id. Each
partition checks the epochs and sequence numbers of the batches written under that id
(pylog.storage.producer_state), so a retried batch is written once.

Transactions are out of scope (DESIGN §10). A request with a transactional id is answered
INVALID_REQUEST (42): the request is well-formed but this broker cannot serve it. Kafka has no
"transactions not supported" code; the alternatives each say something false —
COORDINATOR_NOT_AVAILABLE (15) is retriable, so the client would retry for ever;
TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53) blames ACLs there are none of; UNSUPPORTED_VERSION
(35) blames the version. 42 is fatal in every client, so a transactional producer fails at once
with a clear error instead of hanging.
"""
from __future__ import annotations

import datetime
import logging
from typing import Any

from pylog.protocol.codec import Request, encode_response
from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ApiKey

from pylog.broker.handlers.base import Handler, Response, build, response_type

log = logging.getLogger("pylog.broker.handlers.init_producer_id")

#: The answer to a transactional InitProducerId (see the module docstring).
TRANSACTIONS_UNSUPPORTED = ErrorCode.INVALID_REQUEST


class InitProducerIdHandler(Handler):
    api_key = ApiKey.INIT_PRODUCER_ID

    def handle(self, request: Request) -> Response:
        if request.body.transactional_id is not None:
            log.info("refusing InitProducerId for transactional id %r: transactions are not "
                     "supported", request.body.transactional_id)
            return self.error_response(request, TRANSACTIONS_UNSUPPORTED)
        producer_id = self.broker.producer_ids.allocate()
        return self._encode(request, ErrorCode.NONE, producer_id, 0)

    def _encode(self, request: Request, error_code: ErrorCode, producer_id: int,
                producer_epoch: int) -> bytes:
        return encode_response(request.header, build(
            response_type(request), throttle_time=datetime.timedelta(0), error_code=error_code,
            producer_id=producer_id, producer_epoch=producer_epoch))

    def error_response(self, request: Any, error_code: ErrorCode) -> Response:
        return self._encode(request, error_code, -1, -1)
