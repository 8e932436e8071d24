"""The broker process: the Kafka-protocol listener (server, connection), the request handlers,
the partition state machine and replica manager, delayed operations, metrics and the HTTP
control plane. ``pylog.broker.app.Broker`` puts them together."""
