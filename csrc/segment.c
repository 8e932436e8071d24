/*
 * segment.c - one log segment on disk: append, sparse offset and time indexes, lookup, recovery.
 *
 * A segment is Kafka's trio <base>.log / <base>.index / <base>.timeindex. Python owns the file
 * descriptor and the two index maps; this file writes batches with pwrite(2), fills index
 * entries in the maps and reads batch headers back with pread(2). Nothing here allocates: the
 * one buffer of its own is a header window on the stack (header_reader).
 *
 * Theory of operation
 * -------------------
 * The index rule. Append, recovery and load all run this one rule over the batches in file
 * order, so both index files are a pure function of the batches in the .log and of
 * index_interval_bytes (a rebuilt index is byte-identical to the one append wrote):
 *
 *   for the batch at file position p, with last offset L and maxTimestamp T:
 *     1. if T > max_timestamp:  max_timestamp = T, offset_of_max_timestamp = L
 *     2. if p > 0 and bytes_since_index >= index_interval_bytes (an "index event"):
 *          .index     += (baseOffset - base_offset, p)
 *          .timeindex += (max_timestamp, offset_of_max_timestamp - base_offset)
 *                        only if max_timestamp > the last .timeindex timestamp (-1 if none)
 *          bytes_since_index = 0
 *     3. bytes_since_index += the batch's size
 *
 * This is Kafka's LogSegment.append (max timestamp first, then the entry for the batch about to
 * be appended) applied per batch, with ">=" for the header's "after at least this many bytes".
 * Position 0 is an implied entry, so the first batch never gets one. Consequences:
 *   - an .index entry names the start of a batch; a lookup takes the last entry at or below
 *     the target and walks headers forward: at most about interval bytes plus one batch;
 *   - a .timeindex entry (T, o) says: T is the running maximum, first reached by the batch
 *     whose last offset is o, so every earlier batch has maxTimestamp < T. For a target t the
 *     first batch with maxTimestamp >= t is therefore at or after o's batch, o taken from the
 *     last entry with T <= t. Timestamps below 0 (-1: none) never make an entry;
 *   - right after the event at position p_k the last .timeindex entry is (max_timestamp,
 *     offset_of_max_timestamp) of the batches up to and including p_k's, and any entry of a
 *     later event names an offset past p_k's batch.
 *
 * Loading a prefix [0, end) (pl_segment_load, used by open, truncation and recovery). Keep the
 * .index entries below end and the .timeindex entries up to the last offset of the batch at
 * the last kept .index entry. The last kept .timeindex entry (T, o) fixes the running maximum
 * at o's batch, so walk the batch headers from o's batch (from 0 if no entry is kept) to end:
 * before the last kept .index entry the events are where the kept entries say (each checked
 * against the batch it names), after it the rule decides; .timeindex entries the events want
 * and the file lacks are written. The walk is short in practice (timestamps rise, so o is
 * near the last event) and at worst the headers of the whole prefix.
 *
 * Trust. Open trusts index entries that are plausible (strictly increasing, inside the prefix)
 * and checks the last kept entry of each file against the batch it names, as Kafka's sanity
 * check does: that catches a stale, zero-filled, cut or garbage index, which is then rebuilt.
 * It does not read every entry's batch (one pread per entry); instead every lookup checks the
 * entry it starts from against the batch there, so a damaged entry in the middle gives
 * PL_E_OFFSET, never a wrong position. CRCs are recovery's business, from the recovery point.
 */
#include <errno.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "internal.h"

#define INDEX_ENTRY_SIZE 8
#define TIMEINDEX_ENTRY_SIZE 12
#define MAX_LOG_SIZE INT32_MAX   /* positions are u32 in the index and int32 in Kafka */
#define MAX_RELATIVE INT32_MAX   /* Kafka's bound on offset - base_offset */
#define HEADER_WINDOW 4096       /* bytes pread at once when walking batch headers */
#define RECOVERY_INFOS 128       /* batches validated per pl_batches_validate call */

/* ---- errors ------------------------------------------------------------------------------- */

/* Record a failure (internal.h, error_vset) about the batch at file position batch_position
 * (-1: none) and return its status. */
__attribute__((format(printf, 5, 6))) static int fail_batch(pl_error *err, int status,
                                                            int64_t batch_position,
                                                            int64_t error_position,
                                                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(err, status, error_position, fmt, ap);
    va_end(ap);
    if (err != NULL)
        err->batch_position = batch_position;
    return status;
}

static int fail_io(pl_error *err, int saved_errno, int64_t position, const char *what)
{
    fail_batch(err, PL_E_IO, -1, position, "%s at byte %lld failed", what, (long long)position);
    if (err != NULL)
        err->sys_errno = saved_errno;
    return PL_E_IO;
}

/* Move an error from a call on a sub-buffer (positions counted from `base`) into file terms,
 * and name the batch by its file position: "batch at byte P: " replaces the callee's own
 * "batch I at byte P: " prefix (whose numbers count from the sub-buffer). */
static void error_rebase(pl_error *err, int64_t base)
{
    if (err == NULL)
        return;
    if (err->batch_position >= 0)
        err->batch_position += base;
    if (err->error_position >= 0)
        err->error_position += base;
    char detail[sizeof(err->message)];
    const char *rest = err->message;
    if (strncmp(rest, "batch ", 6) == 0) {
        const char *colon = strstr(rest, ": ");
        if (colon != NULL)
            rest = colon + 2;
    }
    size_t n = strlen(rest);
    memcpy(detail, rest, n + 1);
    int used = snprintf(err->message, sizeof(err->message), "batch at byte %lld: ",
                        (long long)(err->batch_position >= 0 ? err->batch_position : base));
    size_t room = sizeof(err->message) - (size_t)used - 1; /* the prefix is < 40 bytes */
    if (n > room)
        n = room;
    memcpy(err->message + used, detail, n);
    err->message[(size_t)used + n] = '\0';
}

/* ---- whole reads and writes --------------------------------------------------------------- */

/* pread until len bytes or end of file; returns the bytes read or -1 with errno set. */
static ssize_t pread_full(int fd, uint8_t *buf, size_t len, int64_t position)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, buf + done, len - done, (off_t)(position + (int64_t)done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

/* pwrite all of buf at position, retrying partial writes and EINTR; 0 or -1 with errno set. */
static int pwrite_full(int fd, const uint8_t *buf, size_t len, int64_t position)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(position + (int64_t)done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) { /* no progress and no error: treat as a full device */
            errno = ENOSPC;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* ---- index entries ------------------------------------------------------------------------ */

/* Where each field lies in its entry (layout in pylog_core.h). */
#define INDEX_RELATIVE_AT 0   /* .index: relative offset, u32 */
#define INDEX_POSITION_AT 4   /* .index: file position, u32 */
#define TIME_TIMESTAMP_AT 0   /* .timeindex: timestamp, i64 */
#define TIME_RELATIVE_AT 8    /* .timeindex: relative offset, u32 */

static inline uint32_t index_relative(const pl_segment *seg, uint32_t i)
{
    return load_be32(seg->index + (size_t)i * INDEX_ENTRY_SIZE + INDEX_RELATIVE_AT);
}

static inline uint32_t index_position(const pl_segment *seg, uint32_t i)
{
    return load_be32(seg->index + (size_t)i * INDEX_ENTRY_SIZE + INDEX_POSITION_AT);
}

static inline int64_t time_timestamp(const pl_segment *seg, uint32_t i)
{
    const uint8_t *entry = seg->timeindex + (size_t)i * TIMEINDEX_ENTRY_SIZE;
    return (int64_t)load_be64(entry + TIME_TIMESTAMP_AT);
}

static inline uint32_t time_relative(const pl_segment *seg, uint32_t i)
{
    return load_be32(seg->timeindex + (size_t)i * TIMEINDEX_ENTRY_SIZE + TIME_RELATIVE_AT);
}

/* Number of entries among the first n of a map of entry_size-byte entries whose key is <=
 * limit; the key is the big-endian field at byte `field` of each entry, a u32 or (field_size
 * 8) an i64, and increases from entry to entry (as every index field does). */
static uint32_t count_keys_at_or_below(const uint8_t *map, size_t entry_size, size_t field,
                                       size_t field_size, uint32_t n, int64_t limit)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const uint8_t *p = map + (size_t)mid * entry_size + field;
        int64_t key = field_size == 8 ? (int64_t)load_be64(p) : (int64_t)load_be32(p);
        if (key <= limit)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Number of .index entries (among the first n) whose relative offset is <= relative. */
static uint32_t index_count_at_or_below(const pl_segment *seg, uint32_t n, int64_t relative)
{
    return count_keys_at_or_below(seg->index, INDEX_ENTRY_SIZE, INDEX_RELATIVE_AT, 4, n,
                                  relative);
}

/* Number of .index entries (among the first n) whose position is <= position. */
static uint32_t index_count_at_or_before(const pl_segment *seg, uint32_t n, int64_t position)
{
    return count_keys_at_or_below(seg->index, INDEX_ENTRY_SIZE, INDEX_POSITION_AT, 4, n,
                                  position);
}

/* Number of .timeindex entries whose timestamp is <= timestamp. */
static uint32_t time_count_at_or_below(const pl_segment *seg, int64_t timestamp)
{
    return count_keys_at_or_below(seg->timeindex, TIMEINDEX_ENTRY_SIZE, TIME_TIMESTAMP_AT, 8,
                                  seg->timeindex_entries, timestamp);
}

/* Zero entries [from, to) of a map that are not zero already (so a page that is only read
 * is not dirtied): stale entries past the used ones must never look plausible to load(). */
static void zero_entries(uint8_t *map, size_t entry_size, uint32_t from, uint32_t to)
{
    static const uint8_t zeros[TIMEINDEX_ENTRY_SIZE];
    for (uint32_t i = from; i < to; i++) {
        uint8_t *entry = map + (size_t)i * entry_size;
        if (memcmp(entry, zeros, entry_size) != 0)
            memset(entry, 0, entry_size);
    }
}

/* ---- the index rule ----------------------------------------------------------------------- */

/* The part of pl_segment the index rule moves, so append can try it before committing. */
typedef struct {
    uint32_t index_entries;
    uint32_t timeindex_entries;
    uint32_t bytes_since_index;
    int64_t max_timestamp;
    int64_t offset_of_max_timestamp;
    int64_t last_indexed_timestamp; /* timestamp of the last .timeindex entry, -1 if none */
} index_state;

enum index_mode {
    INDEX_PLAN,      /* the rule decides; count entries, write nothing (append's dry run) */
    INDEX_WRITE,     /* the rule decides; write the entries into the maps */
    INDEX_KEPT,      /* an event whose .index entry is already there (load's replay): count
                        it, write the .timeindex entry if the rule wants one */
    INDEX_NO_EVENT   /* no event here (load's replay between kept entries) */
};

static index_state index_state_of(const pl_segment *seg)
{
    index_state st;
    st.index_entries = seg->index_entries;
    st.timeindex_entries = seg->timeindex_entries;
    st.bytes_since_index = seg->bytes_since_index;
    st.max_timestamp = seg->max_timestamp;
    st.offset_of_max_timestamp = seg->offset_of_max_timestamp;
    st.last_indexed_timestamp =
        seg->timeindex_entries > 0 ? time_timestamp(seg, seg->timeindex_entries - 1) : -1;
    return st;
}

static void index_state_store(pl_segment *seg, const index_state *st)
{
    seg->index_entries = st->index_entries;
    seg->timeindex_entries = st->timeindex_entries;
    seg->bytes_since_index = st->bytes_since_index;
    seg->max_timestamp = st->max_timestamp;
    seg->offset_of_max_timestamp = st->offset_of_max_timestamp;
}

/* Run the index rule (top of file) for one batch. All or nothing: PL_E_FULL leaves *st as it
 * was. The caller has checked that position and both offsets are inside the segment's range. */
static int index_batch(pl_segment *seg, index_state *st, int64_t position, int64_t base_offset,
                       int64_t last_offset, int32_t size, int64_t max_timestamp,
                       enum index_mode mode)
{
    index_state next = *st;
    if (max_timestamp > next.max_timestamp) {
        next.max_timestamp = max_timestamp;
        next.offset_of_max_timestamp = last_offset;
    }
    int event = mode == INDEX_KEPT ||
                ((mode == INDEX_PLAN || mode == INDEX_WRITE) && position > 0 &&
                 next.bytes_since_index >= seg->index_interval_bytes);
    if (event) {
        int time_entry = next.max_timestamp > next.last_indexed_timestamp;
        if ((mode != INDEX_KEPT && next.index_entries >= seg->index_max_entries) ||
            (time_entry && next.timeindex_entries >= seg->timeindex_max_entries))
            return PL_E_FULL;
        if (mode == INDEX_WRITE) {
            uint8_t *entry = seg->index + (size_t)next.index_entries * INDEX_ENTRY_SIZE;
            store_be32(entry + INDEX_RELATIVE_AT, (uint32_t)(base_offset - seg->base_offset));
            store_be32(entry + INDEX_POSITION_AT, (uint32_t)position);
        }
        next.index_entries++;
        if (time_entry) {
            if (mode != INDEX_PLAN) {
                uint8_t *entry =
                    seg->timeindex + (size_t)next.timeindex_entries * TIMEINDEX_ENTRY_SIZE;
                store_be64(entry + TIME_TIMESTAMP_AT, (uint64_t)next.max_timestamp);
                store_be32(entry + TIME_RELATIVE_AT,
                           (uint32_t)(next.offset_of_max_timestamp - seg->base_offset));
            }
            next.timeindex_entries++;
            next.last_indexed_timestamp = next.max_timestamp;
        }
        next.bytes_since_index = 0;
    }
    next.bytes_since_index += (uint32_t)size; /* <= log size <= 2^31-1: no wrap */
    *st = next;
    return PL_OK;
}

/* ---- reading batch headers ---------------------------------------------------------------- */

/* A window of the log file for walking batch headers: one pread serves every header that lies
 * in the same HEADER_WINDOW bytes. Never reads at or past `limit`. */
typedef struct {
    int fd;
    int64_t limit;      /* end of the bytes this walk may read (log_size or a prefix end) */
    int64_t start;      /* file position of window[0] */
    size_t len;         /* valid bytes in window */
    uint8_t window[HEADER_WINDOW];
} header_reader;

static void reader_init(header_reader *r, int fd, int64_t limit)
{
    r->fd = fd;
    r->limit = limit;
    r->start = 0;
    r->len = 0;
}

/* Read the header of the batch at `position` (below r->limit) into *info, through
 * pl_batch_peek (length, magic), and check that the batch ends by r->limit and that its
 * lastOffsetDelta is not negative. info->position is set to `position`. */
static int read_header(header_reader *r, int64_t position, pl_batch_info *info, pl_error *err)
{
    if (position < 0 || position >= r->limit)
        return fail_batch(err, PL_E_ARG, position, position, "no batch at byte %lld (end %lld)",
                          (long long)position, (long long)r->limit);
    int64_t avail = r->limit - position;
    size_t need = avail < PL_BATCH_HEADER_SIZE ? (size_t)avail : PL_BATCH_HEADER_SIZE;
    if (position < r->start || position + (int64_t)need > r->start + (int64_t)r->len) {
        size_t want = avail < HEADER_WINDOW ? (size_t)avail : HEADER_WINDOW;
        ssize_t got = pread_full(r->fd, r->window, want, position);
        if (got < 0)
            return fail_io(err, errno, position, "pread of a batch header");
        r->start = position;
        r->len = (size_t)got;
        if ((size_t)got < need)
            return fail_batch(err, PL_E_TRUNCATED, position, position + got,
                              "log file ends at byte %lld, inside the batch header at %lld",
                              (long long)(position + got), (long long)position);
    }
    int rc = pl_batch_peek(r->window + (position - r->start), need, info, err);
    if (rc != PL_OK) {
        if (err != NULL)
            err->batch_position = 0;
        error_rebase(err, position);
        return rc;
    }
    info->position = position;
    if (info->size > avail)
        return fail_batch(err, PL_E_TRUNCATED, position, r->limit,
                          "batch at byte %lld of %d bytes runs past the end at %lld",
                          (long long)position, (int)info->size, (long long)r->limit);
    if (info->last_offset_delta < 0)
        return fail_batch(err, PL_E_COUNT, position, position + OFF_LAST_OFFSET_DELTA,
                          "batch at byte %lld has lastOffsetDelta %d", (long long)position,
                          (int)info->last_offset_delta);
    return PL_OK;
}

/* The header read at a position an index entry named failed: the index, not the log, is
 * what is wrong (the log's batches were whole when indexed), so say so as PL_E_OFFSET. */
static int index_entry_mismatch(pl_error *err, int rc, int64_t named, int64_t position)
{
    if (rc == PL_E_IO || rc == PL_E_ARG)
        return rc;
    return fail_batch(err, PL_E_OFFSET, position, position,
                      "index entry names offset %lld at byte %lld, where no batch starts",
                      (long long)named, (long long)position);
}

/* Check that a batch [base, base + delta] may follow next_offset in the segment: PL_E_OFFSET
 * if it goes backwards or its last offset leaves the 32-bit relative range. */
static int check_offsets(const pl_segment *seg, int64_t next_offset, int64_t base,
                         int32_t last_offset_delta, int64_t position, pl_error *err)
{
    if (base < next_offset)
        return fail_batch(err, PL_E_OFFSET, position, position,
                          "batch at byte %lld starts at offset %lld, below %lld",
                          (long long)position, (long long)base, (long long)next_offset);
    if (last_offset_delta < 0 || base - seg->base_offset > MAX_RELATIVE - last_offset_delta)
        return fail_batch(err, PL_E_OFFSET, position, position,
                          "batch at byte %lld ends past offset %lld, the segment's relative range",
                          (long long)position, (long long)(seg->base_offset + MAX_RELATIVE));
    return PL_OK;
}

/* Position of the first batch whose last offset is >= offset (the batch holding it or the
 * first after it) among the batches below r->limit, using the first n_entries .index
 * entries. *position = r->limit if none; *info then is untouched. */
static int locate_offset(const pl_segment *seg, uint32_t n_entries, header_reader *r,
                         int64_t offset, int64_t *position, pl_batch_info *info, pl_error *err)
{
    int64_t pos = 0, named = -1;
    if (offset > seg->base_offset) {
        uint32_t n = index_count_at_or_below(seg, n_entries, offset - seg->base_offset);
        if (n > 0) {
            pos = index_position(seg, n - 1);
            named = seg->base_offset + index_relative(seg, n - 1);
        }
    }
    while (pos < r->limit) {
        int rc = read_header(r, pos, info, err);
        if (rc != PL_OK)
            return named >= 0 ? index_entry_mismatch(err, rc, named, pos) : rc;
        if (named >= 0) { /* the entry used must name this batch: a corrupt index is an error,
                             never a wrong answer */
            if (info->base_offset != named)
                return fail_batch(err, PL_E_OFFSET, pos, pos,
                                  "index entry names offset %lld at byte %lld, the batch there "
                                  "starts at %lld", (long long)named, (long long)pos,
                                  (long long)info->base_offset);
            named = -1;
        }
        if (info->base_offset + info->last_offset_delta >= offset) {
            *position = pos;
            return PL_OK;
        }
        pos += info->size;
    }
    *position = r->limit;
    return PL_OK;
}

static int check_segment(const pl_segment *seg, pl_error *err)
{
    if (seg == NULL)
        return fail_batch(err, PL_E_ARG, -1, -1, "no segment");
    if (seg->base_offset < 0 || seg->next_offset < seg->base_offset ||
        seg->log_size < 0 || seg->log_size > MAX_LOG_SIZE ||
        seg->index_entries > seg->index_max_entries ||
        seg->timeindex_entries > seg->timeindex_max_entries ||
        (seg->index == NULL && seg->index_max_entries > 0) ||
        (seg->timeindex == NULL && seg->timeindex_max_entries > 0))
        return fail_batch(err, PL_E_ARG, -1, -1, "segment state out of range");
    return PL_OK;
}

/* ---- append ------------------------------------------------------------------------------- */

int pl_segment_append(pl_segment *seg, const uint8_t *buf, size_t len,
                      const pl_batch_info *infos, size_t n_infos, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if ((buf == NULL && len > 0) || (infos == NULL && n_infos > 0) || (len == 0) != (n_infos == 0))
        return fail_batch(err, PL_E_ARG, -1, -1, "bad arguments");
    if (len == 0)
        return PL_OK;
    if (len > (size_t)(MAX_LOG_SIZE - seg->log_size))
        return fail_batch(err, PL_E_FULL, -1, -1,
                          "%zu bytes at %lld would pass the 2^31-1 byte segment limit", len,
                          (long long)seg->log_size);

    /* Pass 1: the infos must tile buf; offsets move forward; the index entries fit. */
    index_state plan = index_state_of(seg);
    int64_t next_offset = seg->next_offset;
    size_t at = 0;
    for (size_t i = 0; i < n_infos; i++) {
        const pl_batch_info *info = &infos[i];
        if (info->position != (int64_t)at || info->size < PL_BATCH_HEADER_SIZE ||
            (size_t)info->size > len - at)
            return fail_batch(err, PL_E_ARG, info->position, info->position,
                              "infos[%zu] (position %lld, size %d) does not tile the buffer", i,
                              (long long)info->position, (int)info->size);
        int64_t base = (int64_t)load_be64(buf + at + OFF_BASE_OFFSET);
        rc = check_offsets(seg, next_offset, base, info->last_offset_delta, (int64_t)at, err);
        if (rc != PL_OK) {
            if (err != NULL)
                err->batch_index = (int32_t)i;
            return rc;
        }
        int64_t last = base + info->last_offset_delta;
        if (index_batch(seg, &plan, seg->log_size + (int64_t)at, base, last, info->size,
                        info->max_timestamp, INDEX_PLAN) != PL_OK)
            return fail_batch(err, PL_E_FULL, (int64_t)at, -1,
                              "index full (%u of %u entries, time index %u of %u)",
                              plan.index_entries, seg->index_max_entries, plan.timeindex_entries,
                              seg->timeindex_max_entries);
        next_offset = last + 1;
        at += (size_t)info->size;
    }
    if (at != len)
        return fail_batch(err, PL_E_ARG, (int64_t)at, (int64_t)at,
                          "infos cover %zu of the %zu bytes", at, len);

    /* Write; on failure cut the file back so it matches the (unchanged) state. */
    if (pwrite_full(seg->log_fd, buf, len, seg->log_size) != 0) {
        int saved = errno;
        while (ftruncate(seg->log_fd, (off_t)seg->log_size) != 0 && errno == EINTR)
            ;
        return fail_io(err, saved, seg->log_size, "write of the batches");
    }

    /* Pass 2: the same rule, writing the entries; it cannot fail after pass 1. */
    index_state st = index_state_of(seg);
    at = 0;
    for (size_t i = 0; i < n_infos; i++) {
        int64_t base = (int64_t)load_be64(buf + at + OFF_BASE_OFFSET);
        index_batch(seg, &st, seg->log_size + (int64_t)at, base,
                    base + infos[i].last_offset_delta, infos[i].size, infos[i].max_timestamp,
                    INDEX_WRITE);
        at += (size_t)infos[i].size;
    }
    index_state_store(seg, &st);
    seg->next_offset = next_offset;
    seg->log_size += (int64_t)len;
    return PL_OK;
}

/* ---- lookups ------------------------------------------------------------------------------ */

int pl_segment_lookup(const pl_segment *seg, int64_t offset, int64_t *position, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if (position == NULL)
        return fail_batch(err, PL_E_ARG, -1, -1, "bad arguments");
    if (offset >= seg->next_offset) {
        *position = seg->log_size;
        return PL_OK;
    }
    header_reader r;
    pl_batch_info info;
    reader_init(&r, seg->log_fd, seg->log_size);
    return locate_offset(seg, seg->index_entries, &r, offset, position, &info, err);
}

int pl_segment_lookup_time(const pl_segment *seg, int64_t timestamp, int64_t *position,
                           int64_t *base_offset, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if (position == NULL || base_offset == NULL)
        return fail_batch(err, PL_E_ARG, -1, -1, "bad arguments");
    *position = seg->log_size;
    *base_offset = -1;
    if (seg->log_size == 0 || timestamp > seg->max_timestamp)
        return PL_OK; /* no batch reaches it: max_timestamp is the maximum of them all */

    header_reader r;
    pl_batch_info info;
    reader_init(&r, seg->log_fd, seg->log_size);
    int64_t pos = 0;
    uint32_t n = time_count_at_or_below(seg, timestamp);
    if (n > 0) {
        int64_t named_ts = time_timestamp(seg, n - 1);
        int64_t offset = seg->base_offset + time_relative(seg, n - 1);
        rc = locate_offset(seg, seg->index_entries, &r, offset, &pos, &info, err);
        if (rc != PL_OK)
            return rc;
        if (pos >= seg->log_size || info.base_offset + info.last_offset_delta != offset ||
            info.max_timestamp != named_ts)
            return fail_batch(err, PL_E_OFFSET, pos, pos,
                              "time index entry %u (%lld, offset %lld) does not match the log",
                              n - 1, (long long)named_ts, (long long)offset);
    }
    while (pos < seg->log_size) {
        rc = read_header(&r, pos, &info, err);
        if (rc != PL_OK)
            return rc;
        if (info.max_timestamp >= timestamp) {
            *position = pos;
            *base_offset = info.base_offset;
            return PL_OK;
        }
        pos += info.size;
    }
    return PL_OK;
}

int pl_segment_read_span(const pl_segment *seg, int64_t start_position, int64_t end_position,
                         int64_t max_bytes, int64_t *length, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if (length == NULL || start_position < 0 || start_position > end_position ||
        end_position > seg->log_size || max_bytes < 0)
        return fail_batch(err, PL_E_ARG, -1, -1, "bad span [%lld, %lld) of %lld bytes",
                          (long long)start_position, (long long)end_position,
                          (long long)seg->log_size);
    *length = 0;
    if (start_position == end_position)
        return PL_OK;
    if (end_position - start_position <= max_bytes) {
        *length = end_position - start_position; /* end_position is a batch boundary */
        return PL_OK;
    }
    /* Walk from the last index entry at or before the byte budget's end (or from the start). */
    int64_t limit = start_position + max_bytes;
    int64_t pos = start_position, named = -1;
    uint32_t n = index_count_at_or_before(seg, seg->index_entries, limit);
    if (n > 0 && (int64_t)index_position(seg, n - 1) > pos) {
        pos = index_position(seg, n - 1);
        named = seg->base_offset + index_relative(seg, n - 1);
    }
    header_reader r;
    pl_batch_info info;
    reader_init(&r, seg->log_fd, end_position);
    while (pos < end_position) {
        rc = read_header(&r, pos, &info, err);
        if (rc != PL_OK)
            return named >= 0 ? index_entry_mismatch(err, rc, named, pos) : rc;
        if (named >= 0 && info.base_offset != named)
            return fail_batch(err, PL_E_OFFSET, pos, pos,
                              "index entry names offset %lld at byte %lld, the batch there starts "
                              "at %lld", (long long)named, (long long)pos,
                              (long long)info.base_offset);
        named = -1;
        if (pos + info.size > limit)
            break;
        pos += info.size;
    }
    if (pos == start_position) { /* KIP-74: the first batch goes whole, whatever max_bytes */
        rc = read_header(&r, pos, &info, err);
        if (rc != PL_OK)
            return rc;
        pos += info.size;
    }
    *length = pos - start_position;
    return PL_OK;
}

/* ---- load, truncate, recover -------------------------------------------------------------- */

int pl_segment_load(pl_segment *seg, int64_t end_position, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if (end_position < 0 || end_position > MAX_LOG_SIZE)
        return fail_batch(err, PL_E_ARG, -1, -1, "end position %lld out of range",
                          (long long)end_position);
    uint32_t old_index = seg->index_entries, old_time = seg->timeindex_entries;
    struct stat sb;
    if (fstat(seg->log_fd, &sb) != 0)
        return fail_io(err, errno, end_position, "fstat of the log");
    if ((int64_t)sb.st_size < end_position)
        return fail_batch(err, PL_E_TRUNCATED, -1, (int64_t)sb.st_size,
                          "the log has %lld bytes, fewer than the %lld to load",
                          (long long)sb.st_size, (long long)end_position);

    /* The plausible prefix of each index: k .index entries below end_position, t entries. */
    uint32_t k = 0;
    for (int64_t prev_rel = -1, prev_pos = 0; k < old_index; k++) {
        int64_t rel = index_relative(seg, k), pos = index_position(seg, k);
        if (pos >= end_position || pos <= prev_pos || rel <= prev_rel || rel > MAX_RELATIVE)
            break;
        prev_rel = rel;
        prev_pos = pos;
    }
    uint32_t t = 0;
    for (int64_t prev_ts = -1, prev_rel = -1; t < old_time; t++) {
        int64_t ts = time_timestamp(seg, t), rel = time_relative(seg, t);
        if (ts <= prev_ts || rel <= prev_rel || rel > MAX_RELATIVE)
            break;
        prev_ts = ts;
        prev_rel = rel;
    }

    header_reader r;
    pl_batch_info info;
    reader_init(&r, seg->log_fd, end_position);
    index_state st = {0, 0, 0, -1, -1, -1};
    int64_t walk_from = 0;
    if (k > 0) {
        /* Keep the .timeindex entries of the events up to the last kept .index entry: their
         * offsets are at most the last offset of the batch that entry names. */
        int64_t p_last = index_position(seg, k - 1);
        rc = read_header(&r, p_last, &info, err);
        if (rc != PL_OK)
            return rc;
        int64_t last_rel = info.base_offset + info.last_offset_delta - seg->base_offset;
        while (t > 0 && (int64_t)time_relative(seg, t - 1) > last_rel)
            t--;
    } else {
        t = 0; /* no event, no .timeindex entry */
    }
    if (t > 0) {
        /* The last kept .timeindex entry must name the last offset of a batch with exactly
         * that maxTimestamp; the walk starts at that batch, where the running maximum is
         * known, so .timeindex entries missing after it are written again. */
        int64_t named_ts = time_timestamp(seg, t - 1);
        int64_t named_off = seg->base_offset + time_relative(seg, t - 1);
        rc = locate_offset(seg, k, &r, named_off, &walk_from, &info, err);
        if (rc != PL_OK)
            return rc;
        if (walk_from >= end_position ||
            info.base_offset + info.last_offset_delta != named_off ||
            info.max_timestamp != named_ts)
            return fail_batch(err, PL_E_OFFSET, walk_from, walk_from,
                              "time index entry %u (%lld, offset %lld) does not match the log",
                              t - 1, (long long)named_ts, (long long)named_off);
        st.timeindex_entries = t;
        st.last_indexed_timestamp = named_ts; /* max_timestamp becomes it at walk_from */
    }
    /* The .index entries before walk_from stand; the walk meets the others (kept events,
     * checked against the batches they name) and adds the missing ones past them. */
    uint32_t next_kept = walk_from > 0 ? index_count_at_or_before(seg, k, walk_from - 1) : 0;
    st.index_entries = next_kept;
    st.bytes_since_index =
        (uint32_t)(walk_from - (next_kept > 0 ? (int64_t)index_position(seg, next_kept - 1) : 0));
    int64_t next_offset = seg->base_offset, pos = walk_from;
    while (pos < end_position) {
        rc = read_header(&r, pos, &info, err);
        if (rc == PL_OK)
            rc = check_offsets(seg, next_offset, info.base_offset, info.last_offset_delta, pos,
                               err);
        if (rc != PL_OK)
            return rc;
        enum index_mode mode = INDEX_WRITE;
        if (next_kept < k) {
            int64_t kept_pos = index_position(seg, next_kept);
            int64_t kept_off = seg->base_offset + index_relative(seg, next_kept);
            if (kept_pos < pos || (kept_pos == pos && kept_off != info.base_offset))
                return fail_batch(err, PL_E_OFFSET, kept_pos, kept_pos,
                                  "index entry %u (offset %lld, byte %lld) names no batch start",
                                  next_kept, (long long)kept_off, (long long)kept_pos);
            mode = kept_pos == pos ? INDEX_KEPT : INDEX_NO_EVENT;
            next_kept += kept_pos == pos;
        }
        int64_t last = info.base_offset + info.last_offset_delta;
        if (index_batch(seg, &st, pos, info.base_offset, last, info.size, info.max_timestamp,
                        mode) != PL_OK)
            return fail_batch(err, PL_E_FULL, pos, -1, "index full while loading");
        next_offset = last + 1;
        pos += info.size;
    }
    zero_entries(seg->index, INDEX_ENTRY_SIZE, st.index_entries, old_index);
    zero_entries(seg->timeindex, TIMEINDEX_ENTRY_SIZE, st.timeindex_entries, old_time);
    index_state_store(seg, &st);
    seg->next_offset = next_offset;
    seg->log_size = end_position;
    return PL_OK;
}

int pl_segment_truncate(pl_segment *seg, int64_t offset, int64_t *position, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if (position == NULL)
        return fail_batch(err, PL_E_ARG, -1, -1, "bad arguments");
    if (offset >= seg->next_offset) {
        *position = seg->log_size;
        return PL_OK;
    }
    int64_t cut;
    rc = pl_segment_lookup(seg, offset, &cut, err);
    if (rc != PL_OK)
        return rc;
    rc = pl_segment_load(seg, cut, err);
    if (rc != PL_OK)
        return rc;
    *position = cut;
    return PL_OK;
}

/* Stop recovery at the bad batch at `position`: err already says why (file positions). */
static int recovery_stop(pl_segment *seg, int64_t *valid_end, int32_t walked, pl_error *err)
{
    *valid_end = seg->log_size;
    if (err != NULL)
        err->batch_index = walked;
    return PL_OK;
}

int pl_segment_recover(pl_segment *seg, int64_t start_position, uint8_t *scratch,
                       size_t scratch_cap, int64_t *valid_end, pl_error *err)
{
    error_reset(err);
    int rc = check_segment(seg, err);
    if (rc != PL_OK)
        return rc;
    if (scratch == NULL || valid_end == NULL || scratch_cap < PL_BATCH_HEADER_SIZE)
        return fail_batch(err, PL_E_ARG, -1, -1, "bad arguments (scratch of %zu bytes)",
                          scratch_cap);
    rc = pl_segment_load(seg, start_position, err);
    if (rc != PL_OK)
        return rc;
    *valid_end = seg->log_size;

    pl_batch_info infos[RECOVERY_INFOS];
    int32_t walked = 0;
    index_state st = index_state_of(seg);
    for (;;) {
        int64_t chunk_at = seg->log_size; /* every batch before it is walked */
        ssize_t got = pread_full(seg->log_fd, scratch, scratch_cap, chunk_at);
        if (got < 0)
            return fail_io(err, errno, chunk_at, "pread during recovery");
        if (got == 0)
            break;
        int at_eof = (size_t)got < scratch_cap;
        size_t at = 0; /* scratch[0..at) is walked */
        for (;;) {
            size_t n = 0, from = at;
            rc = pl_batches_validate(scratch + at, (size_t)got - at, 0, infos, RECOVERY_INFOS,
                                     &n, err);
            for (size_t i = 0; i < n; i++) {
                const pl_batch_info *info = &infos[i];
                int64_t pos = chunk_at + (int64_t)at + info->position;
                int brc = check_offsets(seg, seg->next_offset, info->base_offset,
                                        info->last_offset_delta, pos, err);
                if (brc == PL_OK && info->size > MAX_LOG_SIZE - pos)
                    brc = fail_batch(err, PL_E_FULL, pos, pos,
                                     "batch at byte %lld passes the 2^31-1 byte segment limit",
                                     (long long)pos);
                if (brc != PL_OK)
                    return recovery_stop(seg, valid_end, walked, err);
                int64_t last = info->base_offset + info->last_offset_delta;
                if (index_batch(seg, &st, pos, info->base_offset, last, info->size,
                                info->max_timestamp, INDEX_WRITE) != PL_OK)
                    return fail_batch(err, PL_E_FULL, pos, -1,
                                      "index full during recovery (%u entries, time index %u)",
                                      st.index_entries, st.timeindex_entries);
                index_state_store(seg, &st);
                seg->next_offset = last + 1;
                seg->log_size = pos + info->size;
                *valid_end = seg->log_size;
                walked++;
            }
            at = (size_t)(seg->log_size - chunk_at);
            if (rc == PL_OK)
                break; /* the chunk held whole batches only: read the next */
            if (rc == PL_E_CAPACITY)
                continue;
            /* A bad batch, at scratch[at]: the batches before it are walked. */
            int64_t bad = (int64_t)at;
            if (err != NULL)
                err->batch_position = bad - (int64_t)from;
            error_rebase(err, chunk_at + (int64_t)from);
            if (rc == PL_E_TRUNCATED && !at_eof) {
                if (bad > 0)
                    break; /* the chunk cut it: read again from there */
                /* It starts the chunk and the chunk cannot hold it. */
                int64_t needed = PL_BATCH_OVERHEAD + (int64_t)(int32_t)load_be32(scratch +
                                                                            OFF_BATCH_LENGTH);
                struct stat sb;
                if (fstat(seg->log_fd, &sb) != 0)
                    return fail_io(err, errno, chunk_at, "fstat during recovery");
                if (needed > (int64_t)scratch_cap && needed <= (int64_t)sb.st_size - chunk_at) {
                    fail_batch(err, PL_E_CAPACITY, chunk_at, needed,
                               "batch at byte %lld needs %lld bytes of scratch, %zu given",
                               (long long)chunk_at, (long long)needed, scratch_cap);
                    if (err != NULL)
                        err->batch_index = walked;
                    return PL_E_CAPACITY;
                }
            }
            return recovery_stop(seg, valid_end, walked, err);
        }
    }
    error_reset(err);
    if (err != NULL)
        err->batch_index = walked;
    *valid_end = seg->log_size;
    return PL_OK;
}
