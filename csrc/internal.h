/*
 * internal.h - what the C files of the core share with one another and never with Python
 * (nothing here is in the cffi cdef; pylog_core.h is the API): byte-order loads and stores,
 * the pl_error helpers, the batch header layout, the CRC-32C folding steps
 * (crc32c_internal.h, included from here) and the functions records.c defines for batch.c.
 *
 * Every C file of csrc/ includes this header and no other header of csrc/ (this one brings in
 * pylog_core.h and crc32c_internal.h). Helpers are static inline, so a file that does not use
 * one carries no copy of it; functions defined in one file for another are PL_INTERNAL.
 */
#ifndef PYLOG_INTERNAL_H
#define PYLOG_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pylog_core.h"

/* Defined in one C file for the others: kept out of the shared object's exported symbols. */
#define PL_INTERNAL __attribute__((visibility("hidden")))

/* ---- byte order ------------------------------------------------------------------------------
 * Fields are read and written through memcpy, never through a cast pointer, so alignment does
 * not matter; the compiler turns each into one load or store (and a byte swap if needed). */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define PL_BE16(x) (x)
#define PL_BE32(x) (x)
#define PL_BE64(x) (x)
#define PL_LE64(x) __builtin_bswap64(x)
#else
#define PL_BE16(x) __builtin_bswap16(x)
#define PL_BE32(x) __builtin_bswap32(x)
#define PL_BE64(x) __builtin_bswap64(x)
#define PL_LE64(x) (x)
#endif

static inline uint16_t load_be16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return PL_BE16(v);
}

static inline uint32_t load_be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return PL_BE32(v);
}

static inline uint64_t load_be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return PL_BE64(v);
}

static inline void store_be16(uint8_t *p, uint16_t v)
{
    v = PL_BE16(v);
    memcpy(p, &v, sizeof(v));
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    v = PL_BE32(v);
    memcpy(p, &v, sizeof(v));
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    v = PL_BE64(v);
    memcpy(p, &v, sizeof(v));
}

/* Eight bytes as the reflected CRC-32C consumes them: byte 0 is the low byte. */
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return PL_LE64(v);
}

/* ---- errors ----------------------------------------------------------------------------------
 * Every public function that takes a pl_error starts with error_reset and records a failure
 * with error_vset (through a thin wrapper), which says what and where; which batch it concerns
 * is then the caller's to say, as batch.c and segment.c name batches differently (by index once
 * validation knows it, by file position). A NULL err is allowed everywhere: detail is dropped. */

/* err for a new call: PL_OK, every position and index -1, no errno, no message. */
static inline void error_reset(pl_error *err)
{
    if (err == NULL)
        return;
    err->status = PL_OK;
    err->batch_index = -1;
    err->batch_position = -1;
    err->error_position = -1;
    err->record_index = -1;
    err->sys_errno = 0;
    err->message[0] = '\0';
}

/* Record a failure: its status, the first byte found wrong (-1: none), not inside a record
 * (record_index -1: whoever knows better sets it after), no errno, and the message. The batch
 * fields are left as they are. Returns status. */
static inline int error_vset(pl_error *err, int status, int64_t error_position, const char *fmt,
                             va_list ap)
{
    if (err == NULL)
        return status;
    err->status = status;
    err->error_position = error_position;
    err->record_index = -1;
    err->sys_errno = 0;
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    return status;
}

/* error_vset with the message's arguments given inline. */
__attribute__((format(printf, 4, 5))) static inline int fail(pl_error *err, int status,
                                                             int64_t error_position,
                                                             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(err, status, error_position, fmt, ap);
    va_end(ap);
    return status;
}

/* ---- the RecordBatch v2 header (layout in pylog_core.h) ----------------------------------- */

#define OFF_BASE_OFFSET 0
#define OFF_BATCH_LENGTH 8
#define OFF_LEADER_EPOCH 12
#define OFF_MAGIC 16
#define OFF_CRC 17
#define OFF_ATTRIBUTES 21
#define OFF_LAST_OFFSET_DELTA 23
#define OFF_FIRST_TIMESTAMP 27
#define OFF_MAX_TIMESTAMP 35
#define OFF_PRODUCER_ID 43
#define OFF_PRODUCER_EPOCH 51
#define OFF_BASE_SEQUENCE 53
#define OFF_RECORD_COUNT 57

/* ---- CRC-32C folding (crc32c.c, and records.c's fused pass) ------------------------------- */

#include "crc32c_internal.h"

/* ---- records.c, for batch.c's validation -------------------------------------------------- */

/* Step 5 of batch.c's validation, also pl_records_validate's first: recordCount against
 * lastOffsetDelta, lenient 0 <= count <= lod + 1, strict count == lod + 1; else PL_E_COUNT
 * with error_position = position. */
PL_INTERNAL int pl_check_record_count(int32_t record_count, int32_t last_offset_delta,
                                      uint32_t flags, int64_t position, pl_error *err);

/* Step 6: exactly record_count records that must exactly fill recs[0..len), by flags' rules.
 * Errors name their byte as bias + its position in recs. */
PL_INTERNAL int pl_walk_records(const uint8_t *recs, size_t len, int64_t bias,
                                int32_t record_count, int32_t last_offset_delta, uint32_t flags,
                                pl_error *err);

#ifdef PL_CRC_FOLD512
/* Smallest batch pl_crc_with_records takes: the CRC folding's minimum after the CRC field. */
#define PL_FUSED_MIN_SIZE (OFF_ATTRIBUTES + PL_FOLD512_MIN_LEN)

/* Steps 4 and 6 in one pass over the whole batch b[0..size), size >= PL_FUSED_MIN_SIZE, when
 * pl_crc32c_fold512_active(): returns the CRC-32C of b[21..size) and sets *records_valid to 1
 * when the fast walk found every record certainly valid (0: pl_walk_records must look). */
PL_INTERNAL PL_FOLD512_TARGET uint32_t pl_crc_with_records(const uint8_t *b, size_t size,
                                                           int32_t record_count,
                                                           int32_t last_offset_delta,
                                                           uint32_t flags, int *records_valid);
#endif

#endif /* PYLOG_INTERNAL_H */
