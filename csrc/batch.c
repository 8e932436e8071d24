/*
 * batch.c - Kafka RecordBatch v2 frames: validate, peek, fit, stamp offsets and epoch, finish.
 * The records inside a batch are records.c's.
 *
 * Every function takes the caller's buffer with its length and never reads or writes outside
 * it: each length read from the bytes is checked against what is left of its container before
 * anything is read through it, with 64-bit arithmetic (or subtraction from the remaining room)
 * so no sum can wrap.
 *
 * Theory of operation (validation order). For the batch at `at`:
 *   1. batchLength (needs 12 bytes): negative, below the 49 bytes of header that follow it, or
 *      so large that the batch size leaves int32 -> PL_E_LENGTH;
 *   2. magic (needs 17 bytes) != 2 -> PL_E_MAGIC; checked before truncation so that an old
 *      client's message set is reported as such rather than as a torn batch;
 *   3. the whole batch must be in the buffer, else PL_E_TRUNCATED (a torn tail);
 *   4. CRC-32C over bytes 21..end, unless PL_VALIDATE_NO_CRC -> PL_E_CRC; header fields come
 *      after the CRC so that a flipped bit is reported as the CRC mismatch it is;
 *   5. header fields: codec <= 4 (PL_E_RECORD), lastOffsetDelta >= 0 and recordCount in
 *      [0, lastOffsetDelta + 1] (strict: == lastOffsetDelta + 1) -> PL_E_COUNT;
 *   6. records of an uncompressed batch, unless PL_VALIDATE_NO_RECORDS (records.c,
 *      pl_walk_records; on a CPU that folds CRCs, steps 4 and 6 share one pass,
 *      pl_crc_with_records).
 *
 * Error positions are absolute in the caller's buffer; error messages start with
 * "batch I at byte P: " for batch-level calls and "record R at byte P: " inside records.
 */
#include "internal.h"

#define MAGIC_V2 2
#define MIN_BATCH_LENGTH (PL_BATCH_HEADER_SIZE - PL_BATCH_OVERHEAD) /* 49 */
#define MAX_BATCH_LENGTH (INT32_MAX - PL_BATCH_OVERHEAD)           /* size stays an int32 */
#define MAX_CODEC 4

/* ---- errors ------------------------------------------------------------------------------- */

static void prefix_message(char *message, size_t cap, const char *prefix, const char *detail)
{
    size_t n = 0;
    for (; prefix[n] != '\0' && n + 1 < cap; n++)
        message[n] = prefix[n];
    for (size_t i = 0; detail[i] != '\0' && n + 1 < cap; i++)
        message[n++] = detail[i];
    message[n] = '\0';
}

/* Say which batch a failure belongs to: fills the batch fields and prefixes the message. */
static int in_batch(pl_error *err, int status, int32_t batch_index, int64_t batch_position)
{
    if (err == NULL)
        return status;
    char detail[sizeof(err->message)], prefix[64];
    memcpy(detail, err->message, sizeof(detail));
    detail[sizeof(detail) - 1] = '\0';
    snprintf(prefix, sizeof(prefix), "batch %d at byte %lld: ", (int)batch_index,
             (long long)batch_position);
    err->batch_index = batch_index;
    err->batch_position = batch_position;
    prefix_message(err->message, sizeof(err->message), prefix, detail);
    return status;
}

/* ---- batches ------------------------------------------------------------------------------ */

static void read_header(const uint8_t *b, int64_t at, pl_batch_info *info)
{
    info->position = at;
    info->base_offset = (int64_t)load_be64(b + OFF_BASE_OFFSET);
    info->size = (int32_t)load_be32(b + OFF_BATCH_LENGTH) + PL_BATCH_OVERHEAD;
    info->partition_leader_epoch = (int32_t)load_be32(b + OFF_LEADER_EPOCH);
    info->crc = load_be32(b + OFF_CRC);
    info->attributes = (int16_t)load_be16(b + OFF_ATTRIBUTES);
    info->last_offset_delta = (int32_t)load_be32(b + OFF_LAST_OFFSET_DELTA);
    info->first_timestamp = (int64_t)load_be64(b + OFF_FIRST_TIMESTAMP);
    info->max_timestamp = (int64_t)load_be64(b + OFF_MAX_TIMESTAMP);
    info->producer_id = (int64_t)load_be64(b + OFF_PRODUCER_ID);
    info->producer_epoch = (int16_t)load_be16(b + OFF_PRODUCER_EPOCH);
    info->base_sequence = (int32_t)load_be32(b + OFF_BASE_SEQUENCE);
    info->record_count = (int32_t)load_be32(b + OFF_RECORD_COUNT);
}

/* Steps 1-3 of the theory of operation: the batch at b (avail bytes from `at` to the end of
 * the buffer) has a sane length and magic and is wholly present. *size gets its size. */
static int check_frame(const uint8_t *b, size_t avail, int64_t at, size_t *size,
                       pl_error *err)
{
    if (avail < PL_BATCH_OVERHEAD)
        return fail(err, PL_E_TRUNCATED, at + (int64_t)avail,
                    "truncated: %lld of the 12 bytes of baseOffset and batchLength",
                    (long long)avail);
    int32_t length = (int32_t)load_be32(b + OFF_BATCH_LENGTH);
    if (length < MIN_BATCH_LENGTH || length > MAX_BATCH_LENGTH)
        return fail(err, PL_E_LENGTH, at + OFF_BATCH_LENGTH,
                    "batchLength %d out of range [%d, %d]", (int)length, MIN_BATCH_LENGTH,
                    MAX_BATCH_LENGTH);
    if (avail > OFF_MAGIC && b[OFF_MAGIC] != MAGIC_V2)
        return fail(err, PL_E_MAGIC, at + OFF_MAGIC, "magic %d, expected 2",
                    (int)(int8_t)b[OFF_MAGIC]);
    *size = (size_t)length + PL_BATCH_OVERHEAD;
    if (*size > avail)
        return fail(err, PL_E_TRUNCATED, at + (int64_t)avail,
                    "truncated: %lld of %lld bytes present", (long long)avail,
                    (long long)*size);
    return PL_OK;
}

/* Step 4. When the batch's records are to be walked (walk != 0) and the CPU can, the walk's
 * fast path runs in the same pass (pl_crc_with_records): *records_valid is then its verdict,
 * which step 6 uses once the header checks of step 5 have passed. */
static int check_crc(const uint8_t *b, size_t size, int64_t at, const pl_batch_info *info,
                     int walk, uint32_t flags, int *records_valid, pl_error *err)
{
    uint32_t stored = info->crc;
    uint32_t computed;
#ifdef PL_CRC_FOLD512
    if (walk && size >= PL_FUSED_MIN_SIZE && pl_crc32c_fold512_active())
        computed = pl_crc_with_records(b, size, info->record_count, info->last_offset_delta,
                                       flags, records_valid);
    else
#endif
        computed = pl_crc32c(0, b + OFF_ATTRIBUTES, size - OFF_ATTRIBUTES);
    if (stored != computed)
        return fail(err, PL_E_CRC, at + OFF_CRC,
                    "crc mismatch (stored 0x%08x, computed 0x%08x)", stored, computed);
    return PL_OK;
}

/* One batch at buf[at..len): the whole theory of operation. */
static int check_batch(const uint8_t *buf, size_t len, size_t at, uint32_t flags,
                       pl_batch_info *info, pl_error *err)
{
    const uint8_t *b = buf + at;
    size_t size = 0;
    int rc = check_frame(b, len - at, (int64_t)at, &size, err);
    if (rc != PL_OK)
        return rc;
    read_header(b, (int64_t)at, info);
    int codec = info->attributes & PL_ATTR_COMPRESSION_MASK;
    int walk = codec == 0 && !(flags & PL_VALIDATE_NO_RECORDS);
    int records_valid = 0; /* step 4 already found every record certainly valid */
    if (!(flags & PL_VALIDATE_NO_CRC)) {
        rc = check_crc(b, size, (int64_t)at, info, walk, flags, &records_valid, err);
        if (rc != PL_OK)
            return rc;
    }
    if (codec > MAX_CODEC)
        return fail(err, PL_E_RECORD, (int64_t)at + OFF_ATTRIBUTES,
                    "unknown compression codec %d", codec);
    rc = pl_check_record_count(info->record_count, info->last_offset_delta, flags,
                               (int64_t)at + OFF_RECORD_COUNT, err);
    if (rc != PL_OK || !walk || records_valid)
        return rc;
    return pl_walk_records(b + PL_BATCH_HEADER_SIZE, size - PL_BATCH_HEADER_SIZE,
                           (int64_t)at + PL_BATCH_HEADER_SIZE, info->record_count,
                           info->last_offset_delta, flags, err);
}

/* Validate from `pos` on, filling infos[*n_batches..infos_cap); a failing batch's index is
 * its slot in infos. */
static int validate_from(const uint8_t *buf, size_t len, size_t pos, uint32_t flags,
                         pl_batch_info *infos, size_t infos_cap, size_t *n_batches,
                         pl_error *err)
{
    while (pos < len) {
        int32_t index = (int32_t)*n_batches;
        if (*n_batches == infos_cap) {
            fail(err, PL_E_CAPACITY, (int64_t)pos,
                 "%lld batches filled the array, more follow", (long long)infos_cap);
            return in_batch(err, PL_E_CAPACITY, index, (int64_t)pos);
        }
        pl_batch_info info;
        int rc = check_batch(buf, len, pos, flags, &info, err);
        if (rc != PL_OK)
            return in_batch(err, rc, index, (int64_t)pos);
        infos[(*n_batches)++] = info;
        pos += (size_t)info.size;
    }
    return PL_OK;
}

int pl_batches_validate(const uint8_t *buf, size_t len, uint32_t flags,
                        pl_batch_info *infos, size_t infos_cap, size_t *n_batches,
                        pl_error *err)
{
    return pl_batches_validate_at(buf, len, 0, flags, infos, infos_cap, n_batches, err);
}

int pl_batches_validate_at(const uint8_t *buf, size_t len, size_t start, uint32_t flags,
                           pl_batch_info *infos, size_t infos_cap, size_t *n_batches,
                           pl_error *err)
{
    error_reset(err);
    if (n_batches == NULL || (buf == NULL && len > 0) || start > len ||
        (infos == NULL && infos_cap > 0))
        return fail(err, PL_E_ARG, -1, "bad arguments");
    *n_batches = 0;
    return validate_from(buf, len, start, flags, infos, infos_cap, n_batches, err);
}

int pl_batches_resume(const uint8_t *buf, size_t len, uint32_t flags, pl_batch_info *infos,
                      size_t infos_cap, size_t *n_batches, pl_error *err)
{
    error_reset(err);
    if (n_batches == NULL || (buf == NULL && len > 0) || (infos == NULL && infos_cap > 0) ||
        *n_batches > infos_cap)
        return fail(err, PL_E_ARG, -1, "bad arguments");
    size_t pos = 0;
    if (*n_batches > 0) {
        const pl_batch_info *last = &infos[*n_batches - 1];
        if (last->position < 0 || last->size < PL_BATCH_HEADER_SIZE ||
            (uint64_t)last->position + (uint64_t)last->size > (uint64_t)len)
            return fail(err, PL_E_ARG, -1, "infos[%lld] does not lie inside the buffer",
                        (long long)*n_batches - 1);
        pos = (size_t)last->position + (size_t)last->size;
    }
    return validate_from(buf, len, pos, flags, infos, infos_cap, n_batches, err);
}

int pl_batch_peek(const uint8_t *buf, size_t len, pl_batch_info *info, pl_error *err)
{
    error_reset(err);
    if (info == NULL || (buf == NULL && len > 0))
        return fail(err, PL_E_ARG, -1, "bad arguments");
    if (len < PL_BATCH_OVERHEAD)
        return fail(err, PL_E_TRUNCATED, (int64_t)len,
                    "truncated: %lld of the 12 bytes of baseOffset and batchLength",
                    (long long)len);
    int32_t length = (int32_t)load_be32(buf + OFF_BATCH_LENGTH);
    if (length < MIN_BATCH_LENGTH || length > MAX_BATCH_LENGTH)
        return fail(err, PL_E_LENGTH, OFF_BATCH_LENGTH,
                    "batchLength %d out of range [%d, %d]", (int)length, MIN_BATCH_LENGTH,
                    MAX_BATCH_LENGTH);
    if (len < PL_BATCH_HEADER_SIZE)
        return fail(err, PL_E_TRUNCATED, (int64_t)len,
                    "truncated: %lld of the 61 header bytes", (long long)len);
    if (buf[OFF_MAGIC] != MAGIC_V2)
        return fail(err, PL_E_MAGIC, OFF_MAGIC, "magic %d, expected 2",
                    (int)(int8_t)buf[OFF_MAGIC]);
    read_header(buf, 0, info);
    return PL_OK;
}

int pl_batches_fit(const uint8_t *buf, size_t len, size_t *end, size_t *count,
                   int64_t *next_size, pl_error *err)
{
    error_reset(err);
    if (end == NULL || count == NULL || next_size == NULL || (buf == NULL && len > 0))
        return fail(err, PL_E_ARG, -1, "bad arguments");
    *end = 0;
    *count = 0;
    *next_size = 0;
    while (*end < len) {
        size_t size = 0;
        int rc = check_frame(buf + *end, len - *end, (int64_t)*end, &size, err);
        if (rc == PL_E_TRUNCATED) {
            size_t avail = len - *end;
            *next_size = avail < PL_BATCH_OVERHEAD
                             ? -1
                             : (int64_t)load_be32(buf + *end + OFF_BATCH_LENGTH) +
                                   PL_BATCH_OVERHEAD;
            error_reset(err);
            return PL_OK;
        }
        if (rc != PL_OK)
            return in_batch(err, rc, (int32_t)*count, (int64_t)*end);
        *end += size;
        (*count)++;
    }
    return PL_OK;
}

/* ---- stamping ----------------------------------------------------------------------------- */

/* Walk the batches of buf[0..len) by their length fields only: each must be whole, and the
 * offsets they take must stay within int64. *next_offset gets the offset after the last. */
static int plan_stamp(const uint8_t *buf, size_t len, int64_t base_offset,
                      int64_t *next_offset, pl_error *err)
{
    int64_t next = base_offset;
    int32_t index = 0;
    for (size_t pos = 0; pos < len; index++) {
        size_t size = 0;
        int rc = check_frame(buf + pos, len - pos, (int64_t)pos, &size, err);
        if (rc != PL_OK)
            return in_batch(err, rc, index, (int64_t)pos);
        int32_t lod = (int32_t)load_be32(buf + pos + OFF_LAST_OFFSET_DELTA);
        if (lod < 0 || next > INT64_MAX - 1 - lod) {
            int status = fail(err, lod < 0 ? PL_E_COUNT : PL_E_OFFSET,
                              (int64_t)pos + OFF_LAST_OFFSET_DELTA,
                              "lastOffsetDelta %d from offset %lld leaves the offset range",
                              (int)lod, (long long)next);
            return in_batch(err, status, index, (int64_t)pos);
        }
        next += (int64_t)lod + 1;
        pos += size;
    }
    *next_offset = next;
    return PL_OK;
}

int pl_batches_stamp(uint8_t *buf, size_t len, int64_t base_offset, int32_t leader_epoch,
                     int64_t *next_offset, pl_error *err)
{
    error_reset(err);
    if (next_offset == NULL || (buf == NULL && len > 0) || base_offset < 0)
        return fail(err, PL_E_ARG, -1, "bad arguments (base offset %lld)",
                    (long long)base_offset);
    int64_t next = 0;
    int rc = plan_stamp(buf, len, base_offset, &next, err);
    if (rc != PL_OK)
        return rc; /* nothing written: the buffer is as it came */
    int64_t offset = base_offset;
    for (size_t pos = 0; pos < len;) {
        uint8_t *b = buf + pos;
        store_be64(b + OFF_BASE_OFFSET, (uint64_t)offset);
        store_be32(b + OFF_LEADER_EPOCH, (uint32_t)leader_epoch);
        offset += (int64_t)(int32_t)load_be32(b + OFF_LAST_OFFSET_DELTA) + 1;
        pos += (size_t)(int32_t)load_be32(b + OFF_BATCH_LENGTH) + PL_BATCH_OVERHEAD;
    }
    *next_offset = next;
    return PL_OK;
}

/* ---- finishing a batch the caller built --------------------------------------------------- */

int pl_batch_finish(uint8_t *batch, size_t batch_len, const pl_batch_header *hdr)
{
    if (batch == NULL || hdr == NULL || batch_len < PL_BATCH_HEADER_SIZE ||
        batch_len - PL_BATCH_OVERHEAD > (size_t)MAX_BATCH_LENGTH)
        return PL_E_ARG;
    store_be64(batch + OFF_BASE_OFFSET, (uint64_t)hdr->base_offset);
    store_be32(batch + OFF_BATCH_LENGTH, (uint32_t)(batch_len - PL_BATCH_OVERHEAD));
    store_be32(batch + OFF_LEADER_EPOCH, (uint32_t)hdr->partition_leader_epoch);
    batch[OFF_MAGIC] = MAGIC_V2;
    store_be16(batch + OFF_ATTRIBUTES, (uint16_t)hdr->attributes);
    store_be32(batch + OFF_LAST_OFFSET_DELTA, (uint32_t)hdr->last_offset_delta);
    store_be64(batch + OFF_FIRST_TIMESTAMP, (uint64_t)hdr->first_timestamp);
    store_be64(batch + OFF_MAX_TIMESTAMP, (uint64_t)hdr->max_timestamp);
    store_be64(batch + OFF_PRODUCER_ID, (uint64_t)hdr->producer_id);
    store_be16(batch + OFF_PRODUCER_EPOCH, (uint16_t)hdr->producer_epoch);
    store_be32(batch + OFF_BASE_SEQUENCE, (uint32_t)hdr->base_sequence);
    store_be32(batch + OFF_RECORD_COUNT, (uint32_t)hdr->record_count);
    store_be32(batch + OFF_CRC,
               pl_crc32c(0, batch + OFF_ATTRIBUTES, batch_len - OFF_ATTRIBUTES));
    return PL_OK;
}

