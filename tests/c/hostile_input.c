/*
 * hostile_input.c - drive the C core with hostile bytes under AddressSanitizer and UBSan.
 *
 * Built and run by tests/test_sanitizers.py (gcc -fsanitize=address,undefined, every
 * csrc/*.c compiled in). Inputs are the seed batch files named on the command line, mutated:
 * truncated at every length near the ends, bytes flipped, lengths and counts overwritten with
 * extreme values, and random bytes. After a mutation the CRC is recomputed in half of the
 * cases so that the record walker, not just the CRC check, sees the damage. Every input lives
 * in a heap block of exactly its size, so a one-byte over-read is a sanitizer report.
 *
 * usage: hostile_input ITERATIONS SEED FILE...
 * Exit status 0 when every call returned (any status); the sanitizers abort on a bad access.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pylog_core.h"

#define MAX_INFOS 64
#define MAX_RECORDS 4096
#define MAX_HEADERS 8192

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64*: deterministic for a given seed, good enough to pick mutations */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return -1;
    }
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return -1;
    }
    uint8_t *buf = malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    *out = buf;
    *len = (size_t)size;
    return 0;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Recompute the CRC of every batch whose length field still fits, so that damage past the
 * CRC check reaches the record walker. */
static void fix_crcs(uint8_t *buf, size_t len)
{
    size_t pos = 0;
    while (pos + PL_BATCH_HEADER_SIZE <= len) {
        uint32_t batch_length = get_be32(buf + pos + 8);
        size_t size = (size_t)batch_length + PL_BATCH_OVERHEAD;
        if (batch_length > (1u << 30) || size < PL_BATCH_HEADER_SIZE || size > len - pos)
            return;
        put_be32(buf + pos + 17, pl_crc32c(0, buf + pos + 21, size - 21));
        pos += size;
    }
}

static void mutate(uint8_t *buf, size_t len)
{
    if (len == 0)
        return;
    switch (rng() % 6) {
    case 0: /* flip a few random bytes */
        for (int i = 0, n = 1 + (int)(rng() % 4); i < n; i++)
            buf[rng() % len] ^= (uint8_t)(1 + rng() % 255);
        break;
    case 1: /* extreme value in a header length/count field */
        if (len >= PL_BATCH_HEADER_SIZE) {
            static const size_t fields[] = {8, 23, 57};
            static const uint32_t values[] = {0, 1, 48, 49, 0x7fffffff, 0x80000000u, 0xffffffffu};
            put_be32(buf + fields[rng() % 3], values[rng() % 7]);
        }
        break;
    case 2: /* a run of 0xff (huge varints) */
    case 3: { /* a run of random bytes */
        size_t at = rng() % len, n = 1 + rng() % 16;
        for (size_t i = at; i < len && i < at + n; i++)
            buf[i] = (rng() % 6 == 2) ? 0xff : (uint8_t)rng();
        break;
    }
    case 4: /* 0x80 continuation bytes: unterminated varints */
        for (size_t i = PL_BATCH_HEADER_SIZE; i < len && i < PL_BATCH_HEADER_SIZE + 12; i++)
            buf[i] = 0x80;
        break;
    default: /* all random */
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rng();
    }
}

static void exercise_buffer(const uint8_t *src, size_t len)
{
    /* exact-size heap copy so over-reads hit the redzone */
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    memcpy(buf, src, len);

    pl_batch_info infos[MAX_INFOS];
    size_t n = 0;
    pl_error err;
    const uint32_t modes[] = {0, PL_VALIDATE_STRICT, PL_VALIDATE_NO_CRC,
                              PL_VALIDATE_NO_CRC | PL_VALIDATE_STRICT};
    for (int m = 0; m < 4; m++) {
        memset(&err, 0, sizeof(err));
        (void)pl_batches_validate(buf, len, modes[m], infos, MAX_INFOS, &n, &err);
    }
    /* records of every batch that passed lenient validation without the CRC, decoded */
    memset(&err, 0, sizeof(err));
    int status = pl_batches_validate(buf, len, PL_VALIDATE_NO_CRC, infos, MAX_INFOS, &n, &err);
    for (size_t i = 0; i < n; i++) {
        const pl_batch_info *b = &infos[i];
        if ((b->attributes & PL_ATTR_COMPRESSION_MASK) != 0)
            continue;
        const uint8_t *recs = buf + b->position + PL_BATCH_HEADER_SIZE;
        size_t recs_len = (size_t)b->size - PL_BATCH_HEADER_SIZE;
        static pl_record_out out[MAX_RECORDS];
        static pl_header_out hdrs[MAX_HEADERS];
        size_t nh = 0;
        (void)pl_records_validate(recs, recs_len, b->record_count, b->last_offset_delta, 0, &err);
        (void)pl_records_decode(recs, recs_len, b->record_count, out, MAX_RECORDS, hdrs,
                                MAX_HEADERS, &nh, &err);
    }
    /* raw records sections: the whole mutated buffer read as records */
    {
        static pl_record_out out[MAX_RECORDS];
        static pl_header_out hdrs[MAX_HEADERS];
        size_t nh = 0;
        int32_t count = (int32_t)(rng() % 100);
        (void)pl_records_validate(buf, len, count, count, 0, &err);
        (void)pl_records_decode(buf, len, count, out, MAX_RECORDS, hdrs, MAX_HEADERS, &nh, &err);
    }
    if (status == PL_OK && n > 0) {
        int64_t next = 0;
        (void)pl_batches_stamp(buf, len, 1000, 3, &next, &err);
    } else {
        int64_t next = 0;
        (void)pl_batches_stamp(buf, len, 0, 0, &next, &err); /* must refuse cleanly */
    }
    free(buf);
}

static void exercise_segment(const uint8_t *src, size_t len, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/00000000000000000000.log", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror("open");
        exit(2);
    }
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, src + done, len - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            perror("write");
            exit(2);
        }
        done += (size_t)w;
    }
    uint8_t *index = calloc(64, 8);
    uint8_t *timeindex = calloc(64, 12);
    size_t scratch_cap = 1 + rng() % 4096;
    uint8_t *scratch = malloc(scratch_cap);
    pl_segment seg;
    memset(&seg, 0, sizeof(seg));
    seg.log_fd = fd;
    seg.base_offset = 0;
    seg.next_offset = 0;
    seg.log_size = 0;
    seg.index = index;
    seg.timeindex = timeindex;
    seg.index_max_entries = 64;
    seg.timeindex_max_entries = 64;
    seg.index_interval_bytes = 1 + (uint32_t)(rng() % 8192);
    seg.max_timestamp = -1;
    seg.offset_of_max_timestamp = -1;
    pl_error err;
    int64_t valid_end = 0;
    memset(&err, 0, sizeof(err));
    int status = pl_segment_recover(&seg, 0, scratch, scratch_cap, &valid_end, &err);
    if (status == PL_E_CAPACITY && err.error_position > 0 && err.error_position < (1 << 26)) {
        free(scratch);
        scratch_cap = (size_t)err.error_position;
        scratch = malloc(scratch_cap);
        memset(&seg, 0, sizeof(seg));
        seg.log_fd = fd;
        seg.index = index;
        seg.timeindex = timeindex;
        seg.index_max_entries = 64;
        seg.timeindex_max_entries = 64;
        seg.index_interval_bytes = 4096;
        seg.max_timestamp = -1;
        seg.offset_of_max_timestamp = -1;
        (void)pl_segment_recover(&seg, 0, scratch, scratch_cap, &valid_end, &err);
    }
    if (valid_end >= 0 && (size_t)valid_end <= len) {
        if (ftruncate(fd, valid_end) != 0) {
            perror("ftruncate");
            exit(2);
        }
        seg.log_size = valid_end;
        int64_t position = 0, base = 0;
        for (int i = 0; i < 8; i++) {
            int64_t target = (int64_t)(rng() % 200) - 10;
            (void)pl_segment_lookup(&seg, target, &position, &err);
            (void)pl_segment_lookup_time(&seg, (int64_t)(rng() % 4000000000000ULL), &position,
                                         &base, &err);
        }
        (void)pl_segment_truncate(&seg, (int64_t)(rng() % 100), &position, &err);
    }
    free(scratch);
    free(index);
    free(timeindex);
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s ITERATIONS SEED FILE...\n", argv[0]);
        return 2;
    }
    long iterations = strtol(argv[1], NULL, 10);
    rng_state = strtoull(argv[2], NULL, 10) | 1;
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/pylog-hostile-XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    int nseeds = argc - 3;
    uint8_t **seeds = calloc((size_t)nseeds, sizeof(*seeds));
    size_t *lens = calloc((size_t)nseeds, sizeof(*lens));
    for (int i = 0; i < nseeds; i++) {
        if (read_file(argv[3 + i], &seeds[i], &lens[i]) != 0) {
            fprintf(stderr, "cannot read %s\n", argv[3 + i]);
            return 2;
        }
    }
    /* every truncation of every seed, as is */
    for (int s = 0; s < nseeds; s++) {
        size_t step = lens[s] > 4096 ? lens[s] / 512 : 1;
        for (size_t cut = 0; cut <= lens[s]; cut += step)
            exercise_buffer(seeds[s], cut);
        exercise_segment(seeds[s], lens[s], dir);
    }
    uint8_t *work = malloc(1 << 20);
    for (long it = 0; it < iterations; it++) {
        int s = (int)(rng() % (uint64_t)nseeds);
        size_t len = lens[s] > (1 << 20) ? (1 << 20) : lens[s];
        memcpy(work, seeds[s], len);
        mutate(work, len);
        if (rng() & 1)
            fix_crcs(work, len);
        if (rng() % 4 == 0)
            len = rng() % (len + 1);
        exercise_buffer(work, len);
        if (it % 16 == 0)
            exercise_segment(work, len, dir);
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/00000000000000000000.log", dir);
    unlink(path);
    rmdir(dir);
    for (int i = 0; i < nseeds; i++)
        free(seeds[i]);
    free(seeds);
    free(lens);
    free(work);
    printf("hostile_input: %ld mutated inputs survived\n", iterations);
    return 0;
}
