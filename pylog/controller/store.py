"""MetadataStore: the cluster metadata in one file, replaced atomically, checksummed.

Format (UTF-8 text, two parts):

    {"format": 1, "metadata": {...ClusterMetadata.to_dict()...}}\\n
    xxh64 <16 lowercase hex digits>\\n

The xxh64 (seed 0) covers every byte before its line, as in the offset checkpoints
(pylog.storage.checkpoint, DESIGN §7). ``save`` rewrites the whole file through
``checkpoint.atomic_write`` (temp file, fsync, rename, fsync of the directory), so after a
crash the file holds the old or the new metadata, never a mix. ``load`` refuses a damaged
file (CorruptMetadataError) rather than guessing: starting from an empty or partial view of
the cluster would orphan every partition on disk. A missing file means a new cluster.

The file is small (a few hundred bytes per partition) and written only when the metadata
changes (topic admin, ISR changes), never on the data path.
"""
from __future__ import annotations

import json
import os


from pylog.controller.metadata import ClusterMetadata
from pylog.storage.checkpoint import atomic_write, seal, unseal

__all__ = ["MetadataStore", "CorruptMetadataError", "METADATA_FILE_NAME", "STORE_FORMAT"]

METADATA_FILE_NAME = "cluster-metadata"
STORE_FORMAT = 1


class CorruptMetadataError(Exception):
    """The metadata file exists but cannot be trusted (checksum, syntax or content)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"corrupt metadata file {path}: {reason}")
        self.path = path
        self.reason = reason


class MetadataStore:
    """One metadata file. ``path`` is the file (its directory must exist)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    @classmethod
    def in_data_dir(cls, data_dir: str) -> "MetadataStore":
        """The store at ``<data_dir>/cluster-metadata`` (the embedded controller's place;
        the log manager ignores plain files in the data directory)."""
        return cls(os.path.join(data_dir, METADATA_FILE_NAME))

    def save(self, md: ClusterMetadata) -> None:
        """Atomically replace the file with ``md`` (durable when this returns)."""
        atomic_write(self.path, encode_metadata(md))

    def load(self) -> ClusterMetadata | None:
        """The stored metadata; None if there is no file; CorruptMetadataError if damaged."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return decode_metadata(self.path, data)


def encode_metadata(md: ClusterMetadata) -> bytes:
    body = json.dumps({"format": STORE_FORMAT, "metadata": md.to_dict()},
                      separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"
    return seal(body)


def decode_metadata(path: str, data: bytes) -> ClusterMetadata:
    body = unseal(path, data, CorruptMetadataError)
    if not body:
        raise CorruptMetadataError(path, "empty")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptMetadataError(path, f"not JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format") != STORE_FORMAT:
        raise CorruptMetadataError(path, f"unknown format (expected {STORE_FORMAT})")
    try:
        return ClusterMetadata.from_dict(document["metadata"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptMetadataError(path, f"invalid content: {type(e).__name__}: {e}") from None
