"""Helper process for test_crash.py: append forever through LogManager + PartitionLog.

Usage: python crash_writer.py DATA_DIR FSYNC SEED

Prints the last offset of every acknowledged append on its own line (flushed), after the
append returned -- and, when the fsync policy asked for it, after its fsync completed. The
parent kills it with SIGKILL at a random moment and checks that every printed offset
survived. Record values are b"<offset>:" plus random padding, so the reader can check that
each record sits at the offset it was written for.
"""
import random
import sys

from pylog.records import build_batch
from pylog.storage.config import LogConfig
from pylog.storage.manager import LogManager

CLUSTER_ID = "crash-test"
CONFIG = LogConfig(segment_bytes=16 * 1024, index_interval_bytes=512)
TOPIC, PARTITION = "crash", 0


def main() -> None:
    data_dir, fsync, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    manager = LogManager(data_dir, cluster_id=CLUSTER_ID, node_id=1, default_config=CONFIG,
                         fsync=fsync)
    log = manager.get_or_create(TOPIC, PARTITION)
    appends = 0
    while True:
        first = log.log_end_offset
        records = [(None, f"{first + i}:".encode() + b"x" * rng.randint(0, 300), (), None)
                   for i in range(rng.randint(1, 20))]
        result = log.append(bytearray(build_batch(records)), 0)
        if result.durable is not None:
            result.durable.result()
        sys.stdout.write(f"{result.last_offset}\n")
        sys.stdout.flush()
        appends += 1
        if appends % 37 == 0:
            log.high_watermark = log.log_end_offset
            manager.checkpoint()


if __name__ == "__main__":
    main()
