/*
 * records.c - the records section of a RecordBatch v2: varints, the walk that validates and
 * decodes records (a detailed one that describes faults, and a fast one that only answers
 * "certainly valid", alone or fused with the batch's CRC), and the encoding of one record.
 * batch.c validates the batch frames around them and calls in here for step 6 of its theory of
 * operation (internal.h declares what it uses).
 *
 * Every function takes the caller's buffer with its length and never reads or writes outside
 * it: each length read from the bytes is checked against what is left of its container before
 * anything is read through it, with 64-bit arithmetic (or subtraction from the remaining room)
 * so no sum can wrap. The fast walk reads without per-varint bounds only where it is proven
 * safe (see "the fast path" below).
 *
 * Error positions are absolute in the caller's buffer (the walk's bias moves them there);
 * error messages inside a record start with "record R at byte P: ".
 */
#include "internal.h"

#define VARINT_MAX_BYTES 5
#define VARLONG_MAX_BYTES 10

/* ---- varints (zigzag, as Kafka's ByteUtils) ----------------------------------------------- */

enum varint_result { VARINT_OK, VARINT_SHORT, VARINT_LONG };

/* Read an unsigned LEB128 of at most max_bytes from buf[*pos..end). The last allowed byte may
 * only carry the bits that still fit (4 of them for 32-bit, 1 for 64-bit): anything more is
 * VARINT_LONG, as is a continuation bit on it. Overlong encodings that fit are accepted. */
static inline enum varint_result read_uleb(const uint8_t *buf, size_t end, size_t *pos,
                                           int max_bytes, uint64_t *out)
{
    size_t p = *pos;
    if (p < end && buf[p] < 0x80) { /* fast path: one-byte varint */
        *out = buf[p];
        *pos = p + 1;
        return VARINT_OK;
    }
    uint64_t value = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (p >= end)
            return VARINT_SHORT;
        uint8_t b = buf[p++];
        if (i == max_bytes - 1) {
            uint8_t room = max_bytes == VARINT_MAX_BYTES ? 0x0f : 0x01;
            if (b > room)
                return VARINT_LONG;
        }
        value |= (uint64_t)(b & 0x7f) << (7 * i);
        if (b < 0x80) {
            *out = value;
            *pos = p;
            return VARINT_OK;
        }
    }
    return VARINT_LONG;
}

static inline int64_t unzigzag64(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

static inline int32_t unzigzag32(uint64_t v)
{
    uint32_t u = (uint32_t)v;
    return (int32_t)(u >> 1) ^ -(int32_t)(u & 1);
}

static inline uint64_t zigzag64(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline size_t uleb_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline size_t write_uleb(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* ---- record walking ----------------------------------------------------------------------- */

/* One walk over a records section. Invariants: recs[0..len) is readable; bias + (a position in
 * recs) is the position reported to the caller; index is the record being walked. */
typedef struct {
    const uint8_t *recs;
    size_t len;
    int64_t bias;
    int32_t index;
    pl_error *err;
} walker;

/* Record a failure inside record w->index: "record R at byte P: detail", P = bias + at. */
__attribute__((format(printf, 4, 5))) static int record_fail(walker *w, int status, size_t at,
                                                             const char *fmt, ...)
{
    int64_t position = w->bias + (int64_t)at;
    char detail[sizeof(((pl_error *)0)->message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    fail(w->err, status, position, "record %d at byte %lld: %s", (int)w->index,
         (long long)position, detail);
    if (w->err != NULL)
        w->err->record_index = w->index;
    return status;
}

/* A varint (max_bytes VARINT_MAX_BYTES) or varlong (VARLONG_MAX_BYTES), still zigzagged, that
 * must end by `end`. */
static inline int take_uleb(walker *w, size_t *pos, size_t end, const char *what,
                            int max_bytes, uint64_t *raw)
{
    size_t at = *pos;
    enum varint_result r = read_uleb(w->recs, end, pos, max_bytes, raw);
    if (r != VARINT_OK)
        return record_fail(w, PL_E_RECORD, at, "%s %s %s", what,
                           max_bytes == VARINT_MAX_BYTES ? "varint" : "varlong",
                           r == VARINT_SHORT ? "runs past the record" : "is too long");
    return PL_OK;
}

static inline int take_varint(walker *w, size_t *pos, size_t end, const char *what,
                              int32_t *out)
{
    uint64_t raw = 0; /* read_uleb sets it only on success: quiets -Wmaybe-uninitialized */
    int rc = take_uleb(w, pos, end, what, VARINT_MAX_BYTES, &raw);
    if (rc == PL_OK)
        *out = unzigzag32(raw);
    return rc;
}

static inline int take_varlong(walker *w, size_t *pos, size_t end, const char *what,
                               int64_t *out)
{
    uint64_t raw = 0; /* read_uleb sets it only on success: quiets -Wmaybe-uninitialized */
    int rc = take_uleb(w, pos, end, what, VARLONG_MAX_BYTES, &raw);
    if (rc == PL_OK)
        *out = unzigzag64(raw);
    return rc;
}

/* A length-prefixed field: length varint (-1 = null when nullable), then that many bytes,
 * which must end by `end`. *data_pos receives where the bytes start. A null where none is
 * allowed (a header key) is PL_E_RECORD; any other length below -1 or past `end` PL_E_LENGTH. */
static inline int take_field(walker *w, size_t *pos, size_t end, int nullable,
                             const char *what, int32_t *len_out, size_t *data_pos)
{
    size_t at = *pos;
    int32_t n = 0;
    int rc = take_varint(w, pos, end, what, &n);
    if (rc != PL_OK)
        return rc;
    if (n == -1 && !nullable)
        return record_fail(w, PL_E_RECORD, at, "%s is null", what);
    if (n < -1)
        return record_fail(w, PL_E_LENGTH, at, "%s length %d is negative", what, (int)n);
    if (n > 0 && (size_t)n > end - *pos)
        return record_fail(w, PL_E_LENGTH, at, "%s length %d runs past the record (%lld left)",
                           what, (int)n, (long long)(end - *pos));
    *data_pos = *pos;
    if (n > 0)
        *pos += (size_t)n;
    *len_out = n;
    return PL_OK;
}

/* The headers of one record; each is stored in hdrs while *n_hdrs < hdrs_cap and counted in
 * *n_hdrs in any case (hdrs may be NULL with hdrs_cap 0: validation only). */
static int walk_headers(walker *w, size_t *pos, size_t end, int32_t count,
                        pl_header_out *hdrs, size_t hdrs_cap, size_t *n_hdrs)
{
    for (int32_t h = 0; h < count; h++) {
        int32_t key_len = 0, value_len = 0;
        size_t key_pos = 0, value_pos = 0;
        int rc = take_field(w, pos, end, 0, "header key", &key_len, &key_pos);
        if (rc == PL_OK)
            rc = take_field(w, pos, end, 1, "header value", &value_len, &value_pos);
        if (rc != PL_OK)
            return rc;
        if (*n_hdrs < hdrs_cap) {
            pl_header_out *o = &hdrs[*n_hdrs];
            o->key_pos = (int64_t)key_pos;
            o->key_len = key_len;
            o->value_pos = (int64_t)value_pos;
            o->value_len = value_len;
        }
        (*n_hdrs)++;
    }
    return PL_OK;
}

/* One record at recs[*pos..len): its length varint, then attributes, timestampDelta,
 * offsetDelta, key, value and headers, which must exactly fill that length. On success *pos
 * moves past it and rec (positions relative to recs) is filled. */
static int walk_record(walker *w, size_t *pos, pl_record_out *rec, pl_header_out *hdrs,
                       size_t hdrs_cap, size_t *n_hdrs)
{
    size_t start = *pos;
    int32_t length = 0;
    int rc = take_varint(w, pos, w->len, "length", &length);
    if (rc != PL_OK)
        return rc;
    if (length < 0 || (size_t)length > w->len - *pos)
        return record_fail(w, PL_E_LENGTH, start, "length %d %s (%lld bytes left)",
                           (int)length, length < 0 ? "is negative" : "runs past the records",
                           (long long)(w->len - *pos));
    size_t end = *pos + (size_t)length;
    if (*pos >= end)
        return record_fail(w, PL_E_RECORD, start, "length 0: no attributes byte");
    (*pos)++; /* attributes: unused by Kafka, not checked, as Kafka does not */
    int32_t header_count = 0;
    size_t key_pos = 0, value_pos = 0;
    rc = take_varlong(w, pos, end, "timestamp delta", &rec->timestamp_delta);
    if (rc == PL_OK)
        rc = take_varint(w, pos, end, "offset delta", &rec->offset_delta);
    if (rc == PL_OK)
        rc = take_field(w, pos, end, 1, "key", &rec->key_len, &key_pos);
    if (rc == PL_OK)
        rc = take_field(w, pos, end, 1, "value", &rec->value_len, &value_pos);
    size_t count_at = *pos;
    if (rc == PL_OK)
        rc = take_varint(w, pos, end, "header count", &header_count);
    if (rc != PL_OK)
        return rc;
    if (header_count < 0)
        return record_fail(w, PL_E_RECORD, count_at, "header count %d is negative",
                           (int)header_count);
    rec->header_start = (int64_t)*n_hdrs;
    rc = walk_headers(w, pos, end, header_count, hdrs, hdrs_cap, n_hdrs);
    if (rc != PL_OK)
        return rc;
    if (*pos != end)
        return record_fail(w, PL_E_RECORD, *pos, "%lld stray bytes after its last header",
                           (long long)(end - *pos));
    rec->key_pos = (int64_t)key_pos;
    rec->value_pos = (int64_t)value_pos;
    rec->header_count = header_count;
    return PL_OK;
}

/* recordCount against lastOffsetDelta: lenient 0 <= count <= lod + 1, strict count == lod + 1. */
int pl_check_record_count(int32_t record_count, int32_t last_offset_delta, uint32_t flags,
                          int64_t position, pl_error *err)
{
    int64_t slots = (int64_t)last_offset_delta + 1;
    if (last_offset_delta < 0)
        return fail(err, PL_E_COUNT, position, "lastOffsetDelta %d is negative",
                    (int)last_offset_delta);
    if (record_count < 0)
        return fail(err, PL_E_COUNT, position, "recordCount %d is negative",
                    (int)record_count);
    if ((flags & PL_VALIDATE_STRICT) ? record_count != slots : record_count > slots)
        return fail(err, PL_E_COUNT, position,
                    "recordCount %d %s lastOffsetDelta + 1 = %lld", (int)record_count,
                    (flags & PL_VALIDATE_STRICT) ? "is not" : "exceeds", (long long)slots);
    return PL_OK;
}

/* Offset deltas: strict exactly 0..n-1; lenient strictly increasing and <= lastOffsetDelta. */
static int check_offset_delta(walker *w, size_t at, int32_t delta, int32_t previous,
                              int32_t last_offset_delta, uint32_t flags)
{
    int ok = (flags & PL_VALIDATE_STRICT)
                 ? delta == w->index
                 : delta > previous && delta <= last_offset_delta;
    if (ok)
        return PL_OK;
    return record_fail(w, PL_E_RECORD, at, "offset delta %d %s", (int)delta,
                (flags & PL_VALIDATE_STRICT) ? "is not its index"
                : delta <= previous          ? "does not increase"
                                             : "exceeds lastOffsetDelta");
}

/* ---- the fast path ---------------------------------------------------------------------------
 * Validation only: one tight loop over the records that answers "certainly valid" (1) or "look
 * closer" (0). It accepts nothing the detailed walker below rejects (the same bounds and rules);
 * on any doubt it says 0 and the detailed walker runs to find and describe the fault. This keeps
 * error reporting out of the per-record path: the detailed walker costs about three times as
 * much per record.
 *
 * Theory of operation (reads without bounds). The walk costs what its instructions cost, and
 * checking every varint against its record's end was a good share of them, so a record that
 * ends at least FAST_SLACK bytes before the records section does is read by fast_record,
 * which does not. That is safe and exact because:
 *   - a record's fields start at q <= end (its length was checked), and every step moves q
 *     forward: a varint by at most 5 bytes (the timestamp varlong 10), a key, value or header
 *     key of length n only when n <= end - q, a null by its varint alone;
 *   - so the reads go at most 10 + 5 + 5 + 5 + 5 + 5 = 35 bytes past `end` (timestamp, offset
 *     delta, key, value, header count, then a header key, whose length check fails for any
 *     q > end), which is inside the section when end <= its end - FAST_SLACK;
 *   - a field that ran past `end`, which the detailed walker rejects with a bounded read,
 *     leaves q > end for good, so the final q == end check rejects the record too.
 * The last records, those within FAST_SLACK of the section's end, take fast_tail, whose reads
 * are all bounded by their record.
 *
 * Zigzag values are checked raw where that is shorter: odd is negative (1 is -1, null), an even
 * zz is zz / 2, and offset delta i is zz == 2 i. */

#define FAST_SLACK 64

/* A varint of 3 or more bytes at p (max_bytes readable): NULL if it breaks read_uleb's rule.
 * Out of line: the two common lengths stay in fast_varint's few instructions. */
__attribute__((noinline)) static const uint8_t *fast_varint_long(const uint8_t *p,
                                                                   int max_bytes,
                                                                   uint64_t *out)
{
    size_t pos = 0;
    if (read_uleb(p, (size_t)max_bytes, &pos, max_bytes, out) != VARINT_OK)
        return NULL;
    return p + pos;
}

/* A varint at p, max_bytes of them readable: where it ends, or NULL if it is too long. */
static inline const uint8_t *fast_varint(const uint8_t *p, int max_bytes, uint64_t *out)
{
    uint32_t b0 = p[0];
    if (b0 < 0x80) {
        *out = b0;
        return p + 1;
    }
    uint32_t b1 = p[1];
    if (b1 < 0x80) { /* two bytes: every length below 8 KiB */
        *out = (b0 & 0x7f) | (b1 << 7);
        return p + 2;
    }
    return fast_varint_long(p, max_bytes, out);
}

/* A key, value or header field at p: where it ends, or NULL if its length is negative (other
 * than a null where nullable) or runs past `end`. */
static inline const uint8_t *fast_field(const uint8_t *p, const uint8_t *end, int nullable)
{
    uint64_t raw;
    p = fast_varint(p, VARINT_MAX_BYTES, &raw);
    if (p == NULL)
        return NULL;
    uint32_t zz = (uint32_t)raw;
    if (zz & 1)
        return nullable && zz == 1 ? p : NULL;
    if ((ptrdiff_t)(zz >> 1) > end - p)
        return NULL;
    return p + (zz >> 1);
}

/* Record `index` at p (p < safe): where the next record starts, NULL if in doubt, or p itself
 * if this record ends past `safe` (fast_tail takes it). In lenient mode *previous is the
 * offset delta before it. The next record's start depends on the length alone, so the CPU
 * overlaps the walk of this record's fields with the next records' lengths. Always inlined:
 * a call per record costs a tenth of the walk. */
__attribute__((always_inline)) static inline const uint8_t *
fast_record(const uint8_t *p, const uint8_t *safe, int32_t index, int32_t *previous,
            int32_t last_offset_delta, int strict)
{
    uint64_t raw;
    const uint8_t *q = fast_varint(p, VARINT_MAX_BYTES, &raw);
    if (q == NULL)
        return NULL;
    uint32_t zz = (uint32_t)raw;
    if ((zz & 1) || zz == 0) /* negative, or 0: no attributes byte */
        return NULL;
    if ((ptrdiff_t)(zz >> 1) > safe - q)
        return p;
    const uint8_t *const end = q + (zz >> 1);
    q = fast_varint(q + 1, VARLONG_MAX_BYTES, &raw); /* past attributes; timestamp: any value */
    if (q == NULL)
        return NULL;
    q = fast_varint(q, VARINT_MAX_BYTES, &raw);
    if (q == NULL)
        return NULL;
    if (strict) {
        if ((uint32_t)raw != 2u * (uint32_t)index)
            return NULL;
    } else {
        int32_t delta = unzigzag32(raw);
        if (delta <= *previous || delta > last_offset_delta)
            return NULL;
        *previous = delta;
    }
    q = fast_field(q, end, 1); /* key */
    if (q == NULL)
        return NULL;
    q = fast_field(q, end, 1); /* value */
    if (q == NULL)
        return NULL;
    q = fast_varint(q, VARINT_MAX_BYTES, &raw);
    if (q == NULL)
        return NULL;
    if (raw != 0) {
        int32_t header_count = unzigzag32(raw);
        if (header_count < 0)
            return NULL;
        for (int32_t h = 0; h < header_count; h++) {
            q = fast_field(q, end, 0);
            if (q != NULL)
                q = fast_field(q, end, 1);
            if (q == NULL)
                return NULL;
        }
    }
    return q == end ? end : NULL;
}

/* The bounded reads of fast_tail: a varint that must end by `end`. */
static inline int tail_varint(const uint8_t **pp, const uint8_t *end, int max_bytes,
                              uint64_t *out)
{
    size_t pos = 0;
    if (read_uleb(*pp, (size_t)(end - *pp), &pos, max_bytes, out) != VARINT_OK)
        return 0;
    *pp += pos;
    return 1;
}

/* A key, value or header value: length -1 (null) or a length that fits before `end`. */
static inline int tail_field(const uint8_t **pp, const uint8_t *end, int nullable)
{
    uint64_t raw;
    if (!tail_varint(pp, end, VARINT_MAX_BYTES, &raw))
        return 0;
    int32_t n = unzigzag32(raw);
    if (n < 0)
        return n == -1 && nullable;
    if ((size_t)n > (size_t)(end - *pp))
        return 0;
    *pp += n;
    return 1;
}

/* Records index.. from p to end_all, every read bounded by its record; 1: all certainly valid
 * and exactly filling the section. */
static int fast_tail(const uint8_t *p, const uint8_t *end_all, int32_t index,
                     int32_t record_count, int32_t previous, int32_t last_offset_delta,
                     int strict)
{
    uint64_t raw;
    for (; index < record_count; index++) {
        if (!tail_varint(&p, end_all, VARINT_MAX_BYTES, &raw))
            return 0;
        int32_t length = unzigzag32(raw);
        if (length <= 0 || (size_t)length > (size_t)(end_all - p))
            return 0;
        const uint8_t *const end = p + length;
        const uint8_t *q = p + 1; /* past the attributes byte */
        if (!tail_varint(&q, end, VARLONG_MAX_BYTES, &raw)) /* timestamp delta: any value */
            return 0;
        if (!tail_varint(&q, end, VARINT_MAX_BYTES, &raw))
            return 0;
        int32_t delta = unzigzag32(raw);
        if (strict ? delta != index : (delta <= previous || delta > last_offset_delta))
            return 0;
        previous = delta;
        if (!tail_field(&q, end, 1) || !tail_field(&q, end, 1))
            return 0;
        if (!tail_varint(&q, end, VARINT_MAX_BYTES, &raw))
            return 0;
        int32_t header_count = unzigzag32(raw);
        if (header_count < 0)
            return 0;
        for (int32_t h = 0; h < header_count; h++)
            if (!tail_field(&q, end, 0) || !tail_field(&q, end, 1))
                return 0;
        if (q != end)
            return 0;
        p = end;
    }
    return p == end_all;
}

static int records_certainly_valid(const uint8_t *p, size_t len, int32_t record_count,
                                   int32_t last_offset_delta, uint32_t flags)
{
    const uint8_t *const end_all = p + len;
    const int strict = (flags & PL_VALIDATE_STRICT) != 0;
    int32_t index = 0, previous = -1;
    if (len > FAST_SLACK) {
        const uint8_t *const safe = end_all - FAST_SLACK;
        for (; index < record_count && p < safe; index++) {
            const uint8_t *next = fast_record(p, safe, index, &previous, last_offset_delta,
                                              strict);
            if (next == p)
                break;
            if (next == NULL)
                return 0;
            p = next;
        }
    }
    return fast_tail(p, end_all, index, record_count, previous, last_offset_delta, strict);
}

#ifdef PL_CRC_FOLD512
/* Steps 4 and 6 of one batch in a single pass, for a CPU that folds CRCs with VPCLMULQDQ
 * (crc32c_internal.h): records_certainly_valid's loop, in which the batch's CRC also folds
 * the 128 bytes the walk has most recently passed (in L1 by then) whenever it trails by that
 * much, and is finished after the loop. The walk is bound by its scalar instructions and
 * leaves the vector units idle, so the CRC costs little more than its loads and multiplies.
 * (At most one step per record keeps the loop free of an inner loop; a batch of long records
 * leaves most of its CRC to the finishing loop, which is as fast as pl_crc32c.)
 * b[0..size) is a whole batch of at least PL_FUSED_MIN_SIZE bytes. Returns the CRC-32C of
 * b[21..size) (as pl_crc32c(0, ...) would) and sets *records_valid to what
 * records_certainly_valid would answer; the CRC is finished even when the walk gives up early,
 * since its verdict comes first. Aligned to a cache line so that the loop's place in it, which
 * moved its time by several per cent, does not change with whatever code precedes it. */
PL_FOLD512_TARGET __attribute__((aligned(64)))
uint32_t pl_crc_with_records(const uint8_t *b, size_t size, int32_t record_count,
                             int32_t last_offset_delta, uint32_t flags, int *records_valid)
{
    const uint8_t *const end_all = b + size;
    const uint8_t *c = b + OFF_ATTRIBUTES; /* the CRC has folded everything before c */
    __m512i x0, x1;
    pl_fold2_begin(0xffffffffu, c, &x0, &x1);
    c += 128;
    const __m512i k128 = pl_fold_constant512(PL_FOLD_128_L, PL_FOLD_128_H);
    const uint8_t *p = b + PL_BATCH_HEADER_SIZE;
    const size_t len = size - PL_BATCH_HEADER_SIZE;
    const int strict = (flags & PL_VALIDATE_STRICT) != 0;
    int32_t index = 0, previous = -1;
    int valid = 0;
    if (len > FAST_SLACK) {
        const uint8_t *const safe = end_all - FAST_SLACK;
        for (; index < record_count && p < safe; index++) {
            if ((uintptr_t)c + 128 <= (uintptr_t)p) {
                pl_fold2_step(&x0, &x1, k128, c);
                c += 128;
            }
            const uint8_t *next = fast_record(p, safe, index, &previous, last_offset_delta,
                                              strict);
            if (next == p)
                break;
            if (next == NULL)
                goto finish_crc;
            p = next;
        }
    }
    valid = fast_tail(p, end_all, index, record_count, previous, last_offset_delta, strict);
finish_crc:
    *records_valid = valid;
    return ~pl_fold2_finish(x0, x1, c, end_all);
}
#endif

/* The fast path first; if it is in doubt, the detailed walker finds and describes the fault. */
int pl_walk_records(const uint8_t *recs, size_t len, int64_t bias, int32_t record_count,
                    int32_t last_offset_delta, uint32_t flags, pl_error *err)
{
    if (records_certainly_valid(recs, len, record_count, last_offset_delta, flags))
        return PL_OK;
    walker w = {recs, len, bias, 0, err};
    size_t pos = 0, n_hdrs = 0;
    int32_t previous = -1;
    for (; w.index < record_count; w.index++) {
        if (pos == len)
            return fail(err, PL_E_COUNT, bias + (int64_t)pos,
                        "records end after %d of recordCount %d records", (int)w.index,
                        (int)record_count);
        size_t at = pos;
        pl_record_out rec;
        int rc = walk_record(&w, &pos, &rec, NULL, 0, &n_hdrs);
        if (rc == PL_OK)
            rc = check_offset_delta(&w, at, rec.offset_delta, previous, last_offset_delta,
                                    flags);
        if (rc != PL_OK)
            return rc;
        previous = rec.offset_delta;
    }
    if (pos != len)
        return fail(err, PL_E_COUNT, bias + (int64_t)pos,
                    "%lld bytes at byte %lld after the last of %d records",
                    (long long)(len - pos), (long long)(bias + (int64_t)pos),
                    (int)record_count);
    return PL_OK;
}

int pl_records_validate(const uint8_t *recs, size_t len, int32_t record_count,
                        int32_t last_offset_delta, uint32_t flags, pl_error *err)
{
    error_reset(err);
    if (recs == NULL && len > 0)
        return fail(err, PL_E_ARG, -1, "records buffer is NULL");
    int rc = pl_check_record_count(record_count, last_offset_delta, flags, -1, err);
    if (rc != PL_OK)
        return rc;
    return pl_walk_records(recs, len, 0, record_count, last_offset_delta, flags, err);
}

/* ---- encoding ----------------------------------------------------------------------------- */

/* Bytes a length-prefixed field takes (len -1 = null: the varint only). */
static inline int64_t field_size(int32_t len)
{
    return (int64_t)uleb_size(zigzag64(len)) + (len > 0 ? len : 0);
}

/* Check the arguments of pl_record_write and compute the record body's size (everything after
 * its length varint). PL_E_ARG if an argument is out of range or the body passes int32. */
static int record_body_size(int32_t offset_delta, int64_t timestamp_delta,
                            const uint8_t *key, int32_t key_len, const uint8_t *value,
                            int32_t value_len, const pl_header_in *headers,
                            int32_t header_count, int64_t *body)
{
    if (offset_delta < 0 || key_len < -1 || value_len < -1 || header_count < 0 ||
        (key == NULL && key_len > 0) || (value == NULL && value_len > 0) ||
        (headers == NULL && header_count > 0))
        return PL_E_ARG;
    int64_t n = 1 + (int64_t)uleb_size(zigzag64(timestamp_delta)) +
                (int64_t)uleb_size(zigzag64(offset_delta)) + field_size(key_len) +
                field_size(value_len) + (int64_t)uleb_size(zigzag64(header_count));
    for (int32_t h = 0; h < header_count && n <= INT32_MAX; h++) {
        const pl_header_in *hd = &headers[h];
        if (hd->key_len < 0 || hd->value_len < -1 || (hd->key == NULL && hd->key_len > 0) ||
            (hd->value == NULL && hd->value_len > 0))
            return PL_E_ARG;
        n += field_size(hd->key_len) + field_size(hd->value_len);
    }
    if (n > INT32_MAX)
        return PL_E_ARG;
    *body = n;
    return PL_OK;
}

static inline size_t put_field(uint8_t *out, const uint8_t *data, int32_t len)
{
    size_t n = write_uleb(out, zigzag64(len));
    if (len > 0) {
        memcpy(out + n, data, (size_t)len);
        n += (size_t)len;
    }
    return n;
}

int pl_record_write(uint8_t *out, size_t cap, size_t *pos, int32_t offset_delta,
                    int64_t timestamp_delta, const uint8_t *key, int32_t key_len,
                    const uint8_t *value, int32_t value_len,
                    const pl_header_in *headers, int32_t header_count, size_t *needed)
{
    if (pos == NULL || *pos > cap || (out == NULL && cap > 0))
        return PL_E_ARG;
    int64_t body;
    int rc = record_body_size(offset_delta, timestamp_delta, key, key_len, value, value_len,
                              headers, header_count, &body);
    if (rc != PL_OK)
        return rc;
    size_t total = uleb_size(zigzag64(body)) + (size_t)body;
    if (needed != NULL)
        *needed = total;
    if (total > cap - *pos)
        return PL_E_CAPACITY;
    uint8_t *p = out + *pos;
    p += write_uleb(p, zigzag64(body));
    *p++ = 0; /* attributes */
    p += write_uleb(p, zigzag64(timestamp_delta));
    p += write_uleb(p, zigzag64(offset_delta));
    p += put_field(p, key, key_len);
    p += put_field(p, value, value_len);
    p += write_uleb(p, zigzag64(header_count));
    for (int32_t h = 0; h < header_count; h++) {
        p += put_field(p, headers[h].key, headers[h].key_len);
        p += put_field(p, headers[h].value, headers[h].value_len);
    }
    *pos += total;
    return PL_OK;
}

/* ---- decoding ----------------------------------------------------------------------------- */

int pl_records_decode(const uint8_t *recs, size_t len, int32_t record_count,
                      pl_record_out *out, size_t recs_cap,
                      pl_header_out *hdrs, size_t hdrs_cap, size_t *n_headers,
                      pl_error *err)
{
    error_reset(err);
    if (n_headers == NULL || (recs == NULL && len > 0) || record_count < 0 ||
        (out == NULL && recs_cap > 0) || (hdrs == NULL && hdrs_cap > 0))
        return fail(err, PL_E_ARG, -1, "bad arguments (record count %d)",
                    (int)record_count);
    walker w = {recs, len, 0, 0, err};
    size_t pos = 0;
    *n_headers = 0;
    for (; w.index < record_count; w.index++) {
        if (pos == len)
            return fail(err, PL_E_COUNT, (int64_t)pos,
                        "records end after %d of recordCount %d records", (int)w.index,
                        (int)record_count);
        pl_record_out rec;
        int rc = walk_record(&w, &pos, &rec, hdrs, hdrs_cap, n_headers);
        if (rc != PL_OK)
            return rc;
        if ((size_t)w.index < recs_cap)
            out[w.index] = rec;
    }
    if (pos != len)
        return fail(err, PL_E_COUNT, (int64_t)pos,
                    "%lld bytes at byte %lld after the last of %d records",
                    (long long)(len - pos), (long long)pos, (int)record_count);
    if ((size_t)record_count > recs_cap || *n_headers > hdrs_cap)
        return fail(err, PL_E_CAPACITY, -1,
                    "%d records and %lld headers need more room than %lld and %lld",
                    (int)record_count, (long long)*n_headers, (long long)recs_cap,
                    (long long)hdrs_cap);
    return PL_OK;
}

