"""The request handlers, one module per api family, and the table the connection dispatches on.

``build_handlers(broker)`` gives ``{api key: Handler}`` for every api this issue serves; the
ApiVersions answer advertises exactly those keys (``pylog.protocol.versions.advertised``), so
an api is advertised if and only if it has a handler. The consumer-group apis (``groups``)
serve the broker's group coordinator.
"""
from __future__ import annotations

from pylog.protocol.versions import VersionRange, advertised

from pylog.broker.handlers.api_versions import ApiVersionsHandler
from pylog.broker.handlers.base import BrokerContext, CloseConnection, Handler, Response
from pylog.broker.handlers.fetch import FetchHandler
from pylog.broker.handlers.find_coordinator import FindCoordinatorHandler
from pylog.broker.handlers.groups import GROUP_HANDLERS
from pylog.broker.handlers.init_producer_id import InitProducerIdHandler
from pylog.broker.handlers.list_offsets import ListOffsetsHandler
from pylog.broker.handlers.metadata import MetadataHandler
from pylog.broker.handlers.produce import ProduceHandler
from pylog.broker.handlers.topics import CreateTopicsHandler, DeleteTopicsHandler

__all__ = ["HANDLER_CLASSES", "BrokerContext", "CloseConnection", "Handler", "Response",
           "build_handlers"]

HANDLER_CLASSES: tuple[type[Handler], ...] = (
    ApiVersionsHandler, MetadataHandler, ProduceHandler, FetchHandler, ListOffsetsHandler,
    CreateTopicsHandler, DeleteTopicsHandler, InitProducerIdHandler, FindCoordinatorHandler,
    *GROUP_HANDLERS,
)


def build_handlers(broker: BrokerContext) -> dict[int, Handler]:
    """One handler per served api key, all sharing the advertised version table."""
    supported: dict[int, VersionRange] = dict(advertised(cls.api_key for cls in HANDLER_CLASSES))
    return {cls.api_key: cls(broker, supported) for cls in HANDLER_CLASSES}
