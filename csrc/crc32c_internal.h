/*
 * crc32c_internal.h - what csrc/crc32c.c shares with csrc/records.c and nothing else: the
 * CRC-32C folding steps for x86-64 CPUs with AVX-512 and VPCLMULQDQ, so that records.c can run
 * a batch's CRC in the same loop as its record walk. Not part of the Python-visible API
 * (pylog_core.h); nothing here is in the cffi cdef. Included through internal.h only (whose
 * load_le64 and PL_INTERNAL it uses), never directly.
 *
 * Everything CPU-specific carries a target attribute (PL_FOLD512_TARGET), never a global -m
 * flag: callers must be PL_FOLD512_TARGET functions themselves and may run only when
 * pl_crc32c_fold512_active() says so (the CPU and the OS support it and the portable CRC is not
 * forced).
 *
 * Theory of operation (folding). Bytes are polynomials over GF(2) as the reflected CRC reads
 * them: bit j of byte i is the coefficient of x^(N-1-8i-j) in an N-bit message M, and the raw
 * CRC (no pre/post inversion, register 0) is M(x) x^32 mod P. Only M mod P matters, so a prefix
 * of any length can be replaced by a 16-byte chunk X with X(x) == prefix(x) (mod P), and the
 * CRC of the prefix is the crc32q of X's two 64-bit halves from register 0. An accumulator
 * that holds X at some position is moved T bits further on ("folded") by
 *     X x^T = L x^(64+T) + H x^T == L K_L + H K_H  (mod P)
 * where L and H are X's first and second 64-bit halves (in memory order) and K_L, K_H are the
 * reduced powers: two carry-less multiplies of 64 x 32 bits, whose 96-bit sum is XORed into
 * the 16 bytes found T bits on. A reflected carry-less multiply yields x A B rather than A B,
 * so each constant is x^(e-1) mod P for the wanted exponent e, stored shifted up by 32 (in the
 * low half of its 64-bit lane): K_L = x^(T+31) mod P, K_H = x^(T-33) mod P, bit-reflected.
 * VPCLMULQDQ does this for the four 16-byte lanes of a 64-byte register at once, so one
 * 512-bit accumulator folds 64 bytes; two accumulators 64 bytes apart move 128 bytes per step.
 * A step's latency (one multiply and one XOR per accumulator) is well below the record walk's
 * time per record, and it runs on the vector units the walk leaves idle, so folding inside the
 * walk's loop costs little more than its instructions. The initial register value is XORed
 * into the first 4 bytes, as the crc32 instruction does. The constants below were derived
 * this way and are checked against the portable CRC by tests/test_crc32c.py and
 * tests/test_fused_crc.py over every length and alignment.
 */
#ifndef PYLOG_CRC32C_INTERNAL_H
#define PYLOG_CRC32C_INTERNAL_H

#ifndef PYLOG_INTERNAL_H
#error "include internal.h, which includes crc32c_internal.h"
#endif

#if defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 8) || (!defined(__clang__) && __GNUC__ >= 8))
#define PL_CRC_FOLD512 1
#include <immintrin.h>
#endif

#ifdef PL_CRC_FOLD512

#define PL_FOLD512_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

/* Smallest input the folding code takes: the two 64-byte registers it starts from. */
#define PL_FOLD512_MIN_LEN 128

/* 1 when the CPU offers AVX-512F/VL and VPCLMULQDQ (and the OS saves their state) and the
 * portable CRC is not forced: only then may a PL_FOLD512_TARGET function run. crc32c.c. */
PL_INTERNAL int pl_crc32c_fold512_active(void);

/* {K_L, K_H} per 16-byte lane for folding forward by 16, 64, 128 and 256 bytes. */
#define PL_FOLD_16_L 0xf20c0dfeu
#define PL_FOLD_16_H 0x493c7d27u
#define PL_FOLD_64_L 0x740eef02u
#define PL_FOLD_64_H 0x9e4addf8u
#define PL_FOLD_128_L 0x6992cea2u
#define PL_FOLD_128_H 0x0d3b6092u
#define PL_FOLD_256_L 0xdcb17aa4u
#define PL_FOLD_256_H 0xb9e02b86u

PL_FOLD512_TARGET static inline __m512i pl_fold_constant512(uint32_t k_l, uint32_t k_h)
{
    return _mm512_broadcast_i32x4(_mm_setr_epi32((int)k_l, 0, (int)k_h, 0));
}

/* acc moved forward by the distance of k, XORed with the 64 bytes found there. */
PL_FOLD512_TARGET static inline __m512i pl_fold512(__m512i acc, __m512i k, __m512i data)
{
    __m512i lo = _mm512_clmulepi64_epi128(acc, k, 0x00);
    __m512i hi = _mm512_clmulepi64_epi128(acc, k, 0x11);
    return _mm512_ternarylogic_epi64(lo, hi, data, 0x96); /* lo ^ hi ^ data */
}

PL_FOLD512_TARGET static inline __m128i pl_fold128(__m128i acc, __m128i k, __m128i data)
{
    __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
    return _mm_ternarylogic_epi64(lo, hi, data, 0x96);
}

/* Start a two-accumulator fold at p (at least 128 bytes there) from raw register crc:
 * *x0 and *x1 hold p[0..64) and p[64..128). */
PL_FOLD512_TARGET static inline void pl_fold2_begin(uint32_t crc, const uint8_t *p,
                                                    __m512i *x0, __m512i *x1)
{
    __m512i init = _mm512_castsi128_si512(_mm_cvtsi32_si128((int)crc));
    *x0 = _mm512_xor_si512(_mm512_loadu_si512((const void *)p), init);
    *x1 = _mm512_loadu_si512((const void *)(p + 64));
}

/* One 128-byte step: x0 and x1 (covering the 128 bytes before p) absorb p[0..128). */
PL_FOLD512_TARGET static inline void pl_fold2_step(__m512i *x0, __m512i *x1, __m512i k128,
                                                   const uint8_t *p)
{
    *x0 = pl_fold512(*x0, k128, _mm512_loadu_si512((const void *)p));
    *x1 = pl_fold512(*x1, k128, _mm512_loadu_si512((const void *)(p + 64)));
}

/* Finish a two-accumulator fold whose x0, x1 cover the 128 bytes before p: absorb p..end and
 * return the raw register. A long rest goes 256 bytes per step through four accumulators
 * (x0..x3, 64 bytes apart: enough independent multiplies in flight to keep the multiplier
 * busy), which then fold back onto two; then 128-byte steps, one register, 64 then 16-byte
 * steps, and the crc32 instruction for the last 16-byte chunk and the last few bytes. */
PL_FOLD512_TARGET static inline uint32_t pl_fold2_finish(__m512i x0, __m512i x1,
                                                         const uint8_t *p, const uint8_t *end)
{
    const __m512i k128 = pl_fold_constant512(PL_FOLD_128_L, PL_FOLD_128_H);
    if (end - p >= 384) {
        __m512i x2 = _mm512_loadu_si512((const void *)p);
        __m512i x3 = _mm512_loadu_si512((const void *)(p + 64));
        p += 128;
        const __m512i k256 = pl_fold_constant512(PL_FOLD_256_L, PL_FOLD_256_H);
        while (end - p >= 256) {
            x0 = pl_fold512(x0, k256, _mm512_loadu_si512((const void *)p));
            x1 = pl_fold512(x1, k256, _mm512_loadu_si512((const void *)(p + 64)));
            x2 = pl_fold512(x2, k256, _mm512_loadu_si512((const void *)(p + 128)));
            x3 = pl_fold512(x3, k256, _mm512_loadu_si512((const void *)(p + 192)));
            p += 256;
        }
        x0 = pl_fold512(x0, k128, x2);
        x1 = pl_fold512(x1, k128, x3);
    }
    while (end - p >= 128) {
        pl_fold2_step(&x0, &x1, k128, p);
        p += 128;
    }
    const __m512i k64 = pl_fold_constant512(PL_FOLD_64_L, PL_FOLD_64_H);
    x0 = pl_fold512(x0, k64, x1);
    if (end - p >= 64) {
        x0 = pl_fold512(x0, k64, _mm512_loadu_si512((const void *)p));
        p += 64;
    }
    const __m128i k16 = _mm_setr_epi32((int)PL_FOLD_16_L, 0, (int)PL_FOLD_16_H, 0);
    __m128i x = _mm512_castsi512_si128(x0);
    x = pl_fold128(x, k16, _mm512_extracti32x4_epi32(x0, 1));
    x = pl_fold128(x, k16, _mm512_extracti32x4_epi32(x0, 2));
    x = pl_fold128(x, k16, _mm512_extracti32x4_epi32(x0, 3));
    while (end - p >= 16) {
        x = pl_fold128(x, k16, _mm_loadu_si128((const __m128i *)(const void *)p));
        p += 16;
    }
    uint64_t crc = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(x));
    crc = _mm_crc32_u64(crc, (uint64_t)_mm_extract_epi64(x, 1));
    if (end - p >= 8) {
        crc = _mm_crc32_u64(crc, load_le64(p));
        p += 8;
    }
    while (p < end)
        crc = _mm_crc32_u8((uint32_t)crc, *p++);
    return (uint32_t)crc;
}

#endif /* PL_CRC_FOLD512 */

#endif /* PYLOG_CRC32C_INTERNAL_H */
