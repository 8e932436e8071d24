"""A partition's log on disk: segments (segment.py), the log over them (log.py), checkpoints."""
