/*
 * crc32c.c - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), chosen at run time:
 *
 *   x86-64 with SSE4.2  three interleaved crc32q streams over long buffers, combined with
 *                       precomputed "append N zero bytes" operators (the instruction has a
 *                       3-cycle latency and 1-cycle throughput, so three independent streams
 *                       keep the unit busy); when the CPU also has AVX-512 and VPCLMULQDQ,
 *                       buffers of PL_FOLD512_MIN_LEN bytes or more are folded 256 bytes at a
 *                       time with carry-less multiplies instead (about twice the crc32q
 *                       limit; crc32c_internal.h explains the folding, which records.c also
 *                       runs inside its record walk). pl_crc32c_impl() still says 1;
 *   aarch64 with CRC    the ARMv8 crc32cx instruction, one stream;
 *   anything else       portable slicing-by-8 tables.
 *
 * CPU-specific functions carry target attributes, so the file is compiled without global -m
 * flags and the detection below decides what runs. Tables are built once, at load time, by a
 * constructor: after that every function here is read-only and thread-safe.
 *
 * Theory of the combination: with raw(B, c) the CRC register after feeding B from state c
 * (no pre/post inversion), raw(A||B, c) = Z_|B|(raw(A, c)) ^ raw(B, 0), where Z_n is the
 * linear map "feed n zero bytes". Streams 2 and 3 start from 0 and are folded into stream 1
 * with Z_n applied through four 256-entry tables (one per byte of the register).
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#define PL_CRC_X86 1
#include <nmmintrin.h>
#elif defined(__aarch64__)
#define PL_CRC_ARM 1
#include <arm_acle.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif
#endif

#define POLY 0x82F63B78u
#define LONG_BLOCK 8192   /* bytes per stream in the long interleaved loop */
#define SHORT_BLOCK 256   /* bytes per stream in the short interleaved loop */

static uint32_t slice_table[8][256];
static uint32_t zeros_long[4][256];
static uint32_t zeros_short[4][256];
static int detected_impl;      /* 0 portable, 1 sse4.2, 2 armv8: what the CPU offers */
#ifdef PL_CRC_FOLD512
static int detected_fold512;   /* 1: impl 1 and the CPU (and OS) also offer AVX-512 + VPCLMULQDQ */
#endif
static int forced_portable;    /* tests set this to exercise the portable path */

/* ---- portable slicing-by-8 ---------------------------------------------------------------- */

static void build_slice_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++)
            crc = (crc & 1) ? (crc >> 1) ^ POLY : crc >> 1;
        slice_table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = slice_table[0][n];
        for (int k = 1; k < 8; k++) {
            crc = slice_table[0][crc & 0xff] ^ (crc >> 8);
            slice_table[k][n] = crc;
        }
    }
}

static uint32_t raw_portable(uint32_t crc, const uint8_t *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        crc = slice_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t word = load_le64(p) ^ crc;
        crc = slice_table[7][word & 0xff] ^
              slice_table[6][(word >> 8) & 0xff] ^
              slice_table[5][(word >> 16) & 0xff] ^
              slice_table[4][(word >> 24) & 0xff] ^
              slice_table[3][(word >> 32) & 0xff] ^
              slice_table[2][(word >> 40) & 0xff] ^
              slice_table[1][(word >> 48) & 0xff] ^
              slice_table[0][word >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = slice_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

/* ---- zero-append operators (GF(2) 32x32 matrices) ----------------------------------------- */

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* op := the operator that feeds `len` zero bytes (len a power of two, >= 1). */
static void zeros_operator(uint32_t *op, size_t len)
{
    uint32_t odd[32], even[32];
    uint32_t row = 1;
    odd[0] = POLY;                   /* one zero bit */
    for (int n = 1; n < 32; n++) {
        odd[n] = row;
        row <<= 1;
    }
    gf2_square(even, odd);           /* two zero bits */
    gf2_square(odd, even);           /* four zero bits */
    for (;;) {
        gf2_square(even, odd);       /* 8, 32, 128, ... bits */
        len >>= 1;
        if (len == 0) {
            memcpy(op, even, sizeof(even));
            return;
        }
        gf2_square(odd, even);       /* 16, 64, 256, ... bits */
        len >>= 1;
        if (len == 0) {
            memcpy(op, odd, sizeof(odd));
            return;
        }
    }
}

static void build_zeros_table(uint32_t table[4][256], size_t len)
{
    uint32_t op[32];
    zeros_operator(op, len);
    for (uint32_t n = 0; n < 256; n++) {
        table[0][n] = gf2_times(op, n);
        table[1][n] = gf2_times(op, n << 8);
        table[2][n] = gf2_times(op, n << 16);
        table[3][n] = gf2_times(op, n << 24);
    }
}

static inline uint32_t shift_crc(uint32_t table[4][256], uint32_t crc)
{
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^
           table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

/* ---- x86-64 SSE4.2 ------------------------------------------------------------------------ */

#ifdef PL_CRC_X86
/* Extend raw register crc0 over p[0..3 * block): three streams of `block` bytes run side by
 * side, the second and third from 0, and are combined with `zeros` (the operator for `block`
 * zero bytes). Always inlined, so that block is a constant in each loop that uses it. */
__attribute__((target("sse4.2"), always_inline))
static inline uint64_t sse42_three_streams(uint64_t crc0, const uint8_t *p, size_t block,
                                           uint32_t zeros[4][256])
{
    uint64_t crc1 = 0, crc2 = 0;
    const uint8_t *end = p + block;
    do {
        crc0 = _mm_crc32_u64(crc0, load_le64(p));
        crc1 = _mm_crc32_u64(crc1, load_le64(p + block));
        crc2 = _mm_crc32_u64(crc2, load_le64(p + 2 * block));
        p += 8;
    } while (p < end);
    crc0 = shift_crc(zeros, (uint32_t)crc0) ^ (uint32_t)crc1;
    return shift_crc(zeros, (uint32_t)crc0) ^ (uint32_t)crc2;
}

__attribute__((target("sse4.2")))
static uint32_t raw_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t crc0 = crc;
    while (len && ((uintptr_t)p & 7)) {
        crc0 = _mm_crc32_u8((uint32_t)crc0, *p++);
        len--;
    }
    while (len >= 3 * LONG_BLOCK) {
        crc0 = sse42_three_streams(crc0, p, LONG_BLOCK, zeros_long);
        p += 3 * LONG_BLOCK;
        len -= 3 * LONG_BLOCK;
    }
    while (len >= 3 * SHORT_BLOCK) {
        crc0 = sse42_three_streams(crc0, p, SHORT_BLOCK, zeros_short);
        p += 3 * SHORT_BLOCK;
        len -= 3 * SHORT_BLOCK;
    }
    while (len >= 8) {
        crc0 = _mm_crc32_u64(crc0, load_le64(p));
        p += 8;
        len -= 8;
    }
    while (len--)
        crc0 = _mm_crc32_u8((uint32_t)crc0, *p++);
    return (uint32_t)crc0;
}
#endif

/* ---- x86-64 AVX-512 VPCLMULQDQ folding ---------------------------------------------------- */

#ifdef PL_CRC_FOLD512
/* len >= PL_FOLD512_MIN_LEN: the first 128 bytes start two accumulators, the folding
 * finishes the rest (crc32c_internal.h). */
PL_FOLD512_TARGET
static uint32_t raw_fold512(uint32_t crc, const uint8_t *p, size_t len)
{
    __m512i x0, x1;
    pl_fold2_begin(crc, p, &x0, &x1);
    return pl_fold2_finish(x0, x1, p + 128, p + len);
}
#endif

/* ---- aarch64 CRC extension ---------------------------------------------------------------- */

#ifdef PL_CRC_ARM
__attribute__((target("+crc")))
static uint32_t raw_armv8(uint32_t crc, const uint8_t *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        crc = __crc32cb(crc, *p++);
        len--;
    }
    while (len >= 8) {
        crc = __crc32cd(crc, load_le64(p));
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = __crc32cb(crc, *p++);
    return crc;
}
#endif

/* ---- set-up and the public API ------------------------------------------------------------ */

__attribute__((constructor))
static void crc32c_init(void)
{
    build_slice_table();
    build_zeros_table(zeros_long, LONG_BLOCK);
    build_zeros_table(zeros_short, SHORT_BLOCK);
    detected_impl = 0;
#ifdef PL_CRC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        detected_impl = 1;
#ifdef PL_CRC_FOLD512
    detected_fold512 = detected_impl == 1 && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("vpclmulqdq") &&
                       __builtin_cpu_supports("pclmul");
#endif
#elif defined(PL_CRC_ARM) && defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_CRC32)
        detected_impl = 2;
#endif
}

int pl_crc32c_impl(void)
{
    return forced_portable ? 0 : detected_impl;
}

void pl_crc32c_force_portable(int on)
{
    forced_portable = on != 0;
}

#ifdef PL_CRC_FOLD512
int pl_crc32c_fold512_active(void)
{
    return !forced_portable && detected_fold512;
}
#endif

uint32_t pl_crc32c_portable(uint32_t crc, const uint8_t *buf, size_t len)
{
    return ~raw_portable(~crc, buf, len);
}

uint32_t pl_crc32c(uint32_t crc, const uint8_t *buf, size_t len)
{
    switch (pl_crc32c_impl()) {
#ifdef PL_CRC_X86
    case 1:
#ifdef PL_CRC_FOLD512
        if (detected_fold512 && len >= PL_FOLD512_MIN_LEN)
            return ~raw_fold512(~crc, buf, len);
#endif
        return ~raw_sse42(~crc, buf, len);
#endif
#ifdef PL_CRC_ARM
    case 2:
        return ~raw_armv8(~crc, buf, len);
#endif
    default:
        return ~raw_portable(~crc, buf, len);
    }
}
