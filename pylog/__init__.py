"""pylog: a Kafka-style partitioned, replicated commit log with a C core."""

__version__ = "0.1.0"
