/*
 * pylog_core.h - the one C API the Python side sees (through cffi, as pylog._core).
 *
 * Conventions (after redis ae.c and argon2-cffi):
 *   - every function that can fail returns a status (enum pl_status, PL_OK = 0) and writes its
 *     results through out-parameters; detail about a failure goes into a caller-owned pl_error;
 *   - nothing here allocates memory: callers pass every buffer and array, with its capacity;
 *     a too-small array gives PL_E_CAPACITY and says how much was needed (or how far it got);
 *   - no function keeps a pointer to a caller's buffer after it returns;
 *   - all on-disk and on-wire integers are big-endian, as Kafka has them.
 *
 * The part between the cffi-begin and cffi-end markers is read by csrc/build_core.py as the
 * cffi cdef, so it must stay plain declarations (no macros with expressions, no inline code).
 */
#ifndef PYLOG_CORE_H
#define PYLOG_CORE_H

#include <stddef.h>
#include <stdint.h>

/* cffi-begin */

/* ---- status codes ------------------------------------------------------------------------- */
enum pl_status {
    PL_OK = 0,
    PL_E_TRUNCATED = 1,  /* the buffer ends before the batch or record it started does */
    PL_E_LENGTH = 2,     /* a length field is negative, too small or runs past its container */
    PL_E_MAGIC = 3,      /* batch magic is not 2 */
    PL_E_CRC = 4,        /* CRC-32C over attributes..end does not match */
    PL_E_RECORD = 5,     /* a record, varint or header is malformed */
    PL_E_COUNT = 6,      /* record count disagrees with lastOffsetDelta or the records present */
    PL_E_CAPACITY = 7,   /* a caller's output array is too small (see the function) */
    PL_E_IO = 8,         /* a system call failed; errno is in pl_error.sys_errno */
    PL_E_ARG = 9,        /* an argument is out of its documented range */
    PL_E_OFFSET = 10,    /* offsets go backwards or leave the segment's 32-bit relative range */
    PL_E_FULL = 11       /* a segment file or index is full: the caller must roll */
};

/* Where and why something failed. Positions are byte offsets from the start of the buffer (or
 * file) the caller passed. Fields that do not apply are -1. */
typedef struct {
    int32_t status;           /* the enum pl_status returned */
    int32_t batch_index;      /* 0-based index of the offending batch in the buffer */
    int64_t batch_position;   /* where that batch starts */
    int64_t error_position;   /* the first byte found wrong */
    int32_t record_index;     /* 0-based record inside the batch, -1 if not inside a record */
    int32_t sys_errno;        /* errno for PL_E_IO, else 0 */
    char message[160];        /* NUL-terminated human-readable detail */
} pl_error;

/* ---- CRC-32C (Castagnoli), csrc/crc32c.c -------------------------------------------------- */
/* Implementations chosen at run time: 0 portable slicing-by-8, 1 x86 SSE4.2, 2 ARMv8 CRC. */
int pl_crc32c_impl(void);
/* Force the portable path (on != 0) or return to run-time detection (on == 0). For tests. */
void pl_crc32c_force_portable(int on);
/* Extend `crc` (0 to start) over buf[0..len). Standard pre/post inversion is applied inside,
 * so pl_crc32c(0, "123456789", 9) == 0xE3069283 and calls chain: crc(crc(0,a),b) == crc(0,a||b). */
uint32_t pl_crc32c(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t pl_crc32c_portable(uint32_t crc, const uint8_t *buf, size_t len);

/* ---- RecordBatch v2, csrc/batch.c (records: csrc/records.c) ------------------------------- */
/* Batch header layout (61 bytes): baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch
 * i32 @12, magic i8 @16, crc u32 @17, attributes i16 @21, lastOffsetDelta i32 @23,
 * firstTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43, producerEpoch i16 @51,
 * baseSequence i32 @53, recordCount i32 @57; records follow. The CRC covers bytes 21..end. */

/* Validation flags. */
#define PL_VALIDATE_STRICT 1    /* Produce: recordCount == lastOffsetDelta + 1, record offset
                                   deltas exactly 0..n-1 (a compacted log relaxes both) */
#define PL_VALIDATE_NO_CRC 2    /* skip the CRC check (only for data this process just checked) */
#define PL_VALIDATE_NO_RECORDS 4 /* check headers and CRC only, do not walk records */

/* Attribute bits. */
#define PL_ATTR_COMPRESSION_MASK 7  /* 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd */
#define PL_ATTR_TIMESTAMP_TYPE 8    /* 0 CreateTime, 1 LogAppendTime */
#define PL_ATTR_TRANSACTIONAL 16
#define PL_ATTR_CONTROL 32

#define PL_BATCH_HEADER_SIZE 61
#define PL_BATCH_OVERHEAD 12        /* baseOffset + batchLength, not counted in batchLength */

typedef struct {
    int64_t position;               /* where the batch starts in the buffer */
    int64_t base_offset;
    int32_t size;                   /* whole batch in bytes: batchLength + 12 */
    int32_t partition_leader_epoch;
    uint32_t crc;                   /* as stored */
    int16_t attributes;
    int16_t producer_epoch;
    int32_t last_offset_delta;
    int32_t base_sequence;
    int32_t record_count;
    int64_t first_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
} pl_batch_info;

/* Validate a buffer of concatenated batches. For each whole, valid batch, fills infos[i]
 * (in order) and counts it in *n_batches. Records of uncompressed batches are walked (every
 * varint and length in bounds, exactly recordCount records filling the batch) unless
 * PL_VALIDATE_NO_RECORDS; compressed records are the caller's (decompress, then
 * pl_records_validate). Returns:
 *   PL_OK          every byte of buf is whole, valid batches;
 *   PL_E_CAPACITY  infos_cap batches were filled and more follow: continue from
 *                  infos[infos_cap-1].position + size;
 *   other          the batch at err->batch_position is bad (a torn tail is PL_E_TRUNCATED);
 *                  *n_batches counts the good batches before it.
 * Checked in this order: batchLength in [49, 2^31-13] (PL_E_LENGTH), magic when its byte is
 * there (PL_E_MAGIC), whole batch present (PL_E_TRUNCATED, error_position = len), CRC
 * (PL_E_CRC, error_position = the crc field), codec <= 4 (PL_E_RECORD), lastOffsetDelta >= 0
 * and recordCount against it (PL_E_COUNT), then records: a bad varint, null header key,
 * stray byte or offset delta breaking the mode's rule is PL_E_RECORD, a length below -1 or
 * past its record PL_E_LENGTH, too few or too many records PL_E_COUNT. Messages read
 * "batch I at byte P: [record R at byte Q: ]detail". */
int pl_batches_validate(const uint8_t *buf, size_t len, uint32_t flags,
                        pl_batch_info *infos, size_t infos_cap, size_t *n_batches,
                        pl_error *err);

/* The same, starting at buf[start] (a batch boundary) with every position (infos[].position,
 * err->batch_position, err->error_position) still counted from buf[0]; err->batch_index counts
 * from the batch at start. On PL_E_CAPACITY err->error_position is where to start next. */
int pl_batches_validate_at(const uint8_t *buf, size_t len, size_t start, uint32_t flags,
                           pl_batch_info *infos, size_t infos_cap, size_t *n_batches,
                           pl_error *err);

/* Continue a validation that stopped with PL_E_CAPACITY, into a larger array: on entry
 * infos[0..*n_batches) hold the batches already validated (as filled by an earlier call on
 * the same buf), and validation resumes after the last of them, filling infos[*n_batches..
 * infos_cap) and counting them in *n_batches. Positions and batch indexes stay those of the
 * whole buffer. With *n_batches == 0 on entry it is pl_batches_validate. */
int pl_batches_resume(const uint8_t *buf, size_t len, uint32_t flags, pl_batch_info *infos,
                      size_t infos_cap, size_t *n_batches, pl_error *err);

/* Read one batch header (info->position = 0) without CRC or record checks: batchLength in
 * [49, 2^31-13] (PL_E_LENGTH), 61 bytes present (PL_E_TRUNCATED), magic 2 (PL_E_MAGIC).
 * The batch's body need not be in buf: for scans that pread headers only. */
int pl_batch_peek(const uint8_t *buf, size_t len, pl_batch_info *info, pl_error *err);

/* For Fetch, over log bytes that were validated when appended: walk batch lengths only (no
 * CRC, no records) and give in *end the end of the last whole batch inside buf[0..len) and in
 * *count how many batches that is. *next_size is the whole size of the batch starting at
 * *end when its length field is in buf (so a caller can read it whole), 0 when *end == len,
 * -1 when fewer than 12 of its bytes are there. PL_OK even when the buffer ends inside a
 * batch; PL_E_LENGTH / PL_E_MAGIC for a bad length or magic (*end, *count: the prefix). */
int pl_batches_fit(const uint8_t *buf, size_t len, size_t *end, size_t *count,
                   int64_t *next_size, pl_error *err);

/* Validate a records section (an uncompressed batch's bytes after the 61-byte header, or a
 * compressed batch's payload after decompression) against its batch's header fields. */
int pl_records_validate(const uint8_t *recs, size_t len, int32_t record_count,
                        int32_t last_offset_delta, uint32_t flags, pl_error *err);

/* Assign offsets to validated batches in place: batch i gets baseOffset = next and
 * partitionLeaderEpoch = leader_epoch, then next += lastOffsetDelta + 1. Neither field is
 * under the CRC, so the batches stay valid. *next_offset receives the offset after the last. */
int pl_batches_stamp(uint8_t *buf, size_t len, int64_t base_offset, int32_t leader_epoch,
                     int64_t *next_offset, pl_error *err);

/* One record header (Kafka "header", not the batch header). A header key is never null. */
typedef struct {
    const uint8_t *key;
    int32_t key_len;
    const uint8_t *value;
    int32_t value_len;   /* -1: null value */
} pl_header_in;

/* Append one record to a records section being built at out[*pos..cap). key_len/value_len -1
 * mean null. On PL_E_CAPACITY nothing is written and *pos is unchanged; *needed (if not NULL)
 * receives the bytes the record takes. */
int pl_record_write(uint8_t *out, size_t cap, size_t *pos, int32_t offset_delta,
                    int64_t timestamp_delta, const uint8_t *key, int32_t key_len,
                    const uint8_t *value, int32_t value_len,
                    const pl_header_in *headers, int32_t header_count, size_t *needed);

typedef struct {
    int64_t base_offset;
    int32_t partition_leader_epoch;
    int16_t attributes;
    int16_t producer_epoch;
    int32_t last_offset_delta;
    int32_t base_sequence;
    int32_t record_count;
    int64_t first_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
} pl_batch_header;

/* Finish a batch: batch[0..61) receives the header from hdr (magic 2, batchLength =
 * batch_len - 12) and the CRC over batch[21..batch_len); the records section (possibly
 * compressed) must already be at batch[61..batch_len). */
int pl_batch_finish(uint8_t *batch, size_t batch_len, const pl_batch_header *hdr);

/* One decoded record; positions are byte offsets into the records section passed in. */
typedef struct {
    int64_t timestamp_delta;
    int32_t offset_delta;
    int32_t key_len;          /* -1: null */
    int64_t key_pos;
    int32_t value_len;        /* -1: null */
    int32_t header_count;
    int64_t value_pos;
    int64_t header_start;     /* index of its first header in the header array */
} pl_record_out;

typedef struct {
    int64_t key_pos;
    int64_t value_pos;
    int32_t key_len;
    int32_t value_len;        /* -1: null */
} pl_header_out;

/* Decode a records section of record_count records. On PL_E_CAPACITY (more records than
 * recs_cap or more headers than hdrs_cap) *n_headers holds the header count needed and
 * nothing useful is in the arrays: call again with larger ones. */
int pl_records_decode(const uint8_t *recs, size_t len, int32_t record_count,
                      pl_record_out *out, size_t recs_cap,
                      pl_header_out *hdrs, size_t hdrs_cap, size_t *n_headers,
                      pl_error *err);

/* ---- segment, csrc/segment.c -------------------------------------------------------------- */
/* A segment is <base>.log + <base>.index + <base>.timeindex. Python owns the file descriptors
 * and the memory maps of the two index files (preallocated, mapped read-write) and passes them
 * in this struct; C writes batches and index entries and never opens, maps or frees anything.
 *
 * .index entry (8 bytes):  relative offset u32, file position u32 (of the batch holding it)
 * .timeindex entry (12):   timestamp i64, relative offset u32
 * A batch gets an .index entry when at least index_interval_bytes were appended since the
 * previous entry (position 0 is implied, so the first batch never does); the .timeindex gets
 * (max timestamp so far, its batch's last offset) at those moments when the maximum rose. The
 * whole rule, shared by append, load and recovery, is at the top of csrc/segment.c.
 */
typedef struct {
    int log_fd;
    int64_t base_offset;            /* offset of the segment's first record */
    int64_t next_offset;            /* invariant: offset the next appended batch starts at */
    int64_t log_size;               /* invariant: bytes in .log == where the next batch goes */
    uint8_t *index;                 /* mapped .index, index_max_entries * 8 bytes */
    uint8_t *timeindex;             /* mapped .timeindex, timeindex_max_entries * 12 bytes */
    uint32_t index_entries;         /* entries in use; entries are sorted by offset */
    uint32_t index_max_entries;
    uint32_t timeindex_entries;     /* entries in use; timestamps strictly increase */
    uint32_t timeindex_max_entries;
    uint32_t index_interval_bytes;  /* add an index entry after at least this many bytes */
    uint32_t bytes_since_index;     /* bytes appended since the last index entry */
    int64_t max_timestamp;          /* largest maxTimestamp of any batch here, -1 if none */
    int64_t offset_of_max_timestamp;/* last offset of the batch that had it, -1 if none */
} pl_segment;

/* Append whole, already validated and stamped batches buf[0..len) at seg->log_size with
 * pwrite(2) (retrying partial writes and EINTR), then add index/time-index entries and move
 * next_offset, log_size, max_timestamp. infos/n_infos are the batches as pl_batches_validate
 * reported them. PL_E_OFFSET if the first batch starts below next_offset or an offset leaves
 * the 32-bit relative range; PL_E_FULL if the log would pass 2^31-1 bytes or an index is full
 * (nothing written in either case). */
int pl_segment_append(pl_segment *seg, const uint8_t *buf, size_t len,
                      const pl_batch_info *infos, size_t n_infos, pl_error *err);

/* Position of the batch holding `offset`, or of the first batch after it: from the index,
 * then a forward scan of batch headers (pread). *position = seg->log_size if none. */
int pl_segment_lookup(const pl_segment *seg, int64_t offset, int64_t *position,
                      pl_error *err);

/* Position and base offset of the first batch whose maxTimestamp >= timestamp, via the time
 * index then a forward scan; *position = seg->log_size and *base_offset = -1 if none. */
int pl_segment_lookup_time(const pl_segment *seg, int64_t timestamp, int64_t *position,
                           int64_t *base_offset, pl_error *err);

/* Recovery: walk batches from `start_position` (a batch boundary) reading the file with pread
 * into scratch[0..scratch_cap), validate each (CRC and records, lenient), and rebuild the index
 * entries, next_offset and max timestamp for them. Stops at the end of the file or at the first
 * bad or torn batch: *valid_end is then the end of the last good batch and err says what is
 * wrong (status PL_OK if the file simply ended). PL_E_CAPACITY with err->error_position = the
 * size needed if one batch is larger than scratch. The caller truncates the file and logs.
 * Details: the state for [0, start_position) comes from pl_segment_load(seg, start_position)
 * (0 resets it; its failure is returned as is: recover from 0 then). The walk's outcome is in
 * err even though PL_OK is returned: err->status (PL_OK: the file ended), err->batch_position
 * (the bad batch), err->batch_index (batches walked in this call). Only a failure to run
 * returns non-OK: PL_E_IO, PL_E_ARG, PL_E_FULL (an index too small for the log: give it room
 * for log_size / max(index_interval_bytes, 61) + 1 entries), or PL_E_CAPACITY: the segment then
 * describes the batches before err->batch_position; grow scratch and call again from there. */
int pl_segment_recover(pl_segment *seg, int64_t start_position, uint8_t *scratch,
                       size_t scratch_cap, int64_t *valid_end, pl_error *err);

/* Make the in-memory state describe exactly the batches in [0, end_position) without reading
 * their bodies: keeps the leading index entries that are plausible (strictly increasing, below
 * end_position), checks the last kept entry of each index against the batch header it names,
 * drops the rest, then walks batch headers (pread) from the batch the last kept .timeindex
 * entry names to end_position, checking the kept .index entries it meets, re-adding missing
 * entries of both indexes by the append rule, and sets next_offset, log_size = end_position,
 * bytes_since_index and the max timestamp (segment.c explains why that walk suffices).
 * Dropped entries are zeroed in the maps. Set index_entries/timeindex_entries to the entries
 * the files may hold before calling (e.g. file size / entry size). A header chain that does
 * not end exactly at end_position (PL_E_TRUNCATED, PL_E_LENGTH, PL_E_MAGIC), a log file
 * shorter than end_position (PL_E_TRUNCATED) or an index that contradicts the log
 * (PL_E_OFFSET) is an error: the caller recovers from 0 instead. PL_E_FULL: the maps need room
 * for log_size / max(index_interval_bytes, 61) + 1 entries. end_position must be a batch
 * boundary. Lookups (and read_span) check the index entry they start from against the batch
 * it names and return PL_E_OFFSET if it does not match: a damaged index is never a wrong
 * answer. */
int pl_segment_load(pl_segment *seg, int64_t end_position, pl_error *err);

/* For a read bounded by a byte budget: *length = the bytes of the whole batches from
 * start_position that end at or before end_position and span at most max_bytes, but at least
 * the first batch whole (KIP-74: a fetch always makes progress) when start < end. Both
 * positions must be batch boundaries with start <= end <= log_size; walks headers from the last
 * index entry inside the budget, so it reads at most about interval bytes plus one batch. */
int pl_segment_read_span(const pl_segment *seg, int64_t start_position, int64_t end_position,
                         int64_t max_bytes, int64_t *length, pl_error *err);

/* Truncate the in-memory view to `offset` (the first offset to drop): drop index entries at or
 * past it and set *position to where the .log must be cut (the caller calls ftruncate). */
int pl_segment_truncate(pl_segment *seg, int64_t offset, int64_t *position, pl_error *err);

/* cffi-end */

#endif /* PYLOG_CORE_H */
