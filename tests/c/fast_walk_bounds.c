/*
 * fast_walk_bounds.c - the fast record walk of csrc/records.c (reads without per-varint bounds
 * inside records that end FAST_SLACK bytes before the records section does) and the pass that
 * runs it together with a batch's CRC, under AddressSanitizer and UBSan.
 *
 * Built and run by tests/test_fused_crc.py (gcc -fsanitize=address,undefined, with every C
 * file of csrc/). Each batch in the files named on the command line is validated as it is,
 * then with every byte of its last TAIL_BYTES bytes (where the unchecked and the bounded
 * reads meet) changed in turn to a few values and the CRC made right again - strict and
 * lenient, on the CPU's CRC path and on the portable one - from a heap block of exactly its
 * size, as is its records section alone (pl_records_validate), so a one-byte over-read is a
 * sanitizer report. The two CRC paths must also give the same verdict (status and
 * positions). The test also passes batches made to read as far past a record's end as the
 * fast walk can.
 *
 * usage: fast_walk_bounds FILE...   (each file: concatenated batches, valid or not)
 * Exit status 0 when every verdict agreed; 1 with a message otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pylog_core.h"

#define TAIL_BYTES 160
#define MAX_INFOS 4

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    uint8_t *buf = size >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc(size ? (size_t)size : 1)
                                                           : NULL;
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

static uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

typedef struct {
    int status;
    int64_t batch_position;
    int64_t error_position;
    int32_t record_index;
} verdict;

/* Validate copy[0..size) (a heap block of exactly that size) on the current CRC path. */
static verdict judge(const uint8_t *copy, size_t size, uint32_t flags)
{
    pl_batch_info infos[MAX_INFOS];
    size_t n = 0;
    pl_error err;
    verdict v;
    v.status = pl_batches_validate(copy, size, flags, infos, MAX_INFOS, &n, &err);
    v.batch_position = v.status == PL_OK ? -1 : err.batch_position;
    v.error_position = v.status == PL_OK ? -1 : err.error_position;
    v.record_index = v.status == PL_OK ? -1 : err.record_index;
    return v;
}

/* The records section alone, in its own exact block. */
static int judge_section(const uint8_t *batch, size_t size, uint32_t flags)
{
    size_t len = size - PL_BATCH_HEADER_SIZE;
    uint8_t *section = malloc(len ? len : 1);
    if (!section)
        return -1;
    memcpy(section, batch + PL_BATCH_HEADER_SIZE, len);
    pl_error err;
    int status = pl_records_validate(section, len, (int32_t)load_be32(batch + 57),
                                     (int32_t)load_be32(batch + 23), flags, &err);
    free(section);
    return status;
}

/* Every change near the end of one batch; 0 if both paths always agreed. */
static int mutate_tail(const uint8_t *batch, size_t size, long *checked)
{
    static const int values[] = {-1, -0x80, 0x00, 0x01, 0x02, 0x7f, 0x80, 0xff};
    size_t first = size > TAIL_BYTES + PL_BATCH_HEADER_SIZE ? size - TAIL_BYTES
                                                            : PL_BATCH_HEADER_SIZE;
    for (size_t pos = first; pos < size; pos++) {
        for (size_t k = 0; k < sizeof(values) / sizeof(values[0]); k++) {
            uint8_t *copy = malloc(size);
            if (!copy)
                return -1;
            memcpy(copy, batch, size);
            /* -1: flip the low bit, -0x80: flip the continuation bit, else the value */
            copy[pos] = values[k] == -1     ? (uint8_t)(batch[pos] ^ 0x01)
                        : values[k] == -0x80 ? (uint8_t)(batch[pos] ^ 0x80)
                                             : (uint8_t)values[k];
            store_be32(copy + 17, pl_crc32c_portable(0, copy + 21, size - 21));
            for (uint32_t flags = 0; flags <= PL_VALIDATE_STRICT; flags++) {
                pl_crc32c_force_portable(0);
                verdict detected = judge(copy, size, flags);
                int section_detected = judge_section(copy, size, flags);
                pl_crc32c_force_portable(1);
                verdict portable = judge(copy, size, flags);
                int section_portable = judge_section(copy, size, flags);
                pl_crc32c_force_portable(0);
                if (memcmp(&detected, &portable, sizeof(verdict)) != 0 ||
                    section_detected != section_portable) {
                    printf("paths disagree: batch of %zu bytes, byte %zu = 0x%02x, flags %u: "
                           "%d@%lld vs %d@%lld\n",
                           size, pos, copy[pos], flags, detected.status,
                           (long long)detected.error_position, portable.status,
                           (long long)portable.error_position);
                    free(copy);
                    return 1;
                }
                (*checked)++;
            }
            free(copy);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    long checked = 0;
    for (int i = 1; i < argc; i++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (read_file(argv[i], &buf, &len) != 0) {
            printf("cannot read %s\n", argv[i]);
            return 1;
        }
        for (size_t at = 0; at + PL_BATCH_OVERHEAD <= len;) {
            size_t size = (size_t)load_be32(buf + at + 8) + PL_BATCH_OVERHEAD;
            if (size < PL_BATCH_HEADER_SIZE || size > len - at) {
                printf("%s: not whole batches at byte %zu\n", argv[i], at);
                free(buf);
                return 1;
            }
            uint8_t *copy = malloc(size);
            if (!copy) {
                free(buf);
                return 1;
            }
            memcpy(copy, buf + at, size);
            for (uint32_t flags = 0; flags <= PL_VALIDATE_STRICT; flags++) {
                judge(copy, size, flags);
                judge_section(copy, size, flags);
            }
            free(copy);
            int rc = mutate_tail(buf + at, size, &checked);
            if (rc != 0) {
                free(buf);
                return 1;
            }
            at += size;
        }
        free(buf);
    }
    printf("%ld verdicts agreed\n", checked);
    return 0;
}
