// T-MAC-style LUT matmul for 1-4 bit weights: int8 tables per activation row, 32 rows per
// _mm256_shuffle_epi8, int16 accumulation, fp32 scales. Layout: petkit/kernels/lut/pack.py.
//
// Build: plain -O3. The AVX2 and AVX-512BW kernels carry their own target attributes and run only after a runtime
// CPU check, so nothing else in this file is compiled for AVX2 and the scalar path runs anywhere.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PETKIT_X86 1
#endif

namespace {

constexpr int kTile = 32;  // rows per tile
constexpr int kStep = 8;   // activations per step: two 4-activation tables, one per 128-bit lane
// int16 accumulators are flushed at least every 64 activations (8 steps). Bound: a step adds at
// most 127 * (1+2+4+8) = 1905 per int16 lane and per table group; 8 steps -> 15240 per lane, and the
// two lanes folded together -> 30480 < 32767, so no overflow for any b <= 4.
constexpr int kMaxFlush = 64;

struct Problem {
  int64_t K, G, A, F;  // in_features, weight group, activation (table-scale) group, flush block
  int bits;
  int64_t tile_bytes;  // packed bytes per 32-row tile
  int64_t tbl_stride = 0, ls_stride = 0, gs_stride = 0;  // per activation row: tables, their scales, sums
};

// Round half to even, as torch.round, without a libm call (std::nearbyint is one on baseline x86-64):
// adding and subtracting 1.5 * 2^23 rounds in the FPU's default mode, exact for |v| < 2^22.
inline float round_even(float v) {
  volatile float big = 12582912.f;  // volatile: keep the compiler from folding (v + big) - big to v
  return (v + big) - big;
}

// The largest possible |entry| of each activation group's tables: s = max sum|a| / 127.
void table_scales(const float* x, int64_t J, int64_t per_group, float* lut_scale, float* inv) {
  for (int64_t a0 = 0, ga = 0; a0 < J; a0 += per_group, ++ga) {
    float peak = 0.f;
    for (int64_t j = a0; j < std::min(J, a0 + per_group); ++j) {
      const float* g = x + 4 * j;
      peak = std::max(peak, ((std::fabs(g[0]) + std::fabs(g[1])) + std::fabs(g[2])) + std::fabs(g[3]));
    }
    inv[ga] = peak > 0.f ? 127.f / peak : 0.f;
    lut_scale[ga] = peak / 127.f;
  }
}

// Tables of one activation row: tbl[j*16 + c] = round(T_j[c] / s). The same float operations, in
// the same order, as reference.py, so the int8 entries are identical.
void build_tables_scalar(const float* x, const Problem& p, int8_t* tbl, float* lut_scale) {
  const int64_t J = p.K / 4, per_group = p.A / 4;
  std::vector<float> inv((J + per_group - 1) / per_group);
  table_scales(x, J, per_group, lut_scale, inv.data());
  for (int64_t j = 0; j < J; ++j) {
    const float* g = x + 4 * j;
    for (int c = 0; c < 8; ++c) {  // mirror consolidation: entries 8..15 are -entries 7..0
      float t = (c & 1) ? g[0] : -g[0];
      t = t + ((c & 2) ? g[1] : -g[1]);
      t = t + ((c & 4) ? g[2] : -g[2]);
      t = t + (-g[3]);
      const float q = std::min(127.f, std::max(-127.f, round_even(t * inv[j / per_group])));
      tbl[16 * j + c] = static_cast<int8_t>(q);
      tbl[16 * j + 15 - c] = static_cast<int8_t>(-q);
    }
  }
}

#ifdef PETKIT_X86
// The same tables, 8 entries per instruction (cvtps_epi32 rounds half to even by default).
__attribute__((target("avx2,fma"))) void build_tables_avx2(const float* x, const Problem& p, int8_t* tbl,
                                                             float* lut_scale) {
  const int64_t J = p.K / 4, per_group = p.A / 4;
  std::vector<float> inv((J + per_group - 1) / per_group);
  table_scales(x, J, per_group, lut_scale, inv.data());
  const __m256 s0 = _mm256_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1), s1 = _mm256_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1);
  const __m256 s2 = _mm256_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1);
  const __m128i reverse16 = _mm_setr_epi8(14, 15, 12, 13, 10, 11, 8, 9, 6, 7, 4, 5, 2, 3, 0, 1);
  for (int64_t j = 0; j < J; ++j) {
    const float* g = x + 4 * j;
    __m256 t = _mm256_mul_ps(_mm256_set1_ps(g[0]), s0);  // products with +-1 are exact, so the
    t = _mm256_fmadd_ps(_mm256_set1_ps(g[1]), s1, t);     // fused adds round like the scalar sums
    t = _mm256_fmadd_ps(_mm256_set1_ps(g[2]), s2, t);
    t = _mm256_sub_ps(t, _mm256_set1_ps(g[3]));
    const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(t, _mm256_set1_ps(inv[j / per_group])));
    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i mirrored = _mm_shuffle_epi8(_mm_sub_epi16(_mm_setzero_si128(), q16), reverse16);
    const __m128i q8 = _mm_max_epi8(_mm_packs_epi16(q16, mirrored), _mm_set1_epi8(-127));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(tbl + 16 * j), q8);
  }
}
#endif

// Portable kernel over the same layout, for CPUs without AVX2 and as a check of the SIMD one.
void tile_scalar(const int8_t* tbl, const float* lut_scale, const float* gsum, const uint8_t* w,
                 const float* sc, const float* zr, const Problem& p, float* out) {
  float y[kTile] = {0.f};
  const int64_t groups = p.K / p.G;
  for (int64_t g = 0; g < groups; ++g) {
    float gacc[kTile] = {0.f};
    for (int64_t f0 = g * p.G; f0 < (g + 1) * p.G; f0 += p.F) {
      int32_t acc[kTile] = {0};
      for (int64_t s = f0 / kStep; s < (f0 + p.F) / kStep; ++s) {
        const int8_t* t = tbl + 32 * s;
        const uint8_t* wp = w + 32 * p.bits * s;
        int plane = 0;
        for (; plane + 1 < p.bits; plane += 2) {  // pair units
          for (int v = 0; v < 2; ++v, wp += 32) {
            for (int b = 0; b < 32; ++b) {
              const int lane = b / 16, q = (b % 16) / 2, weight = 1 << (plane + b % 2);
              acc[16 * v + q] += weight * t[16 * lane + (wp[b] & 15)];
              acc[16 * v + 8 + q] += weight * t[16 * lane + (wp[b] >> 4)];
            }
          }
        }
        if (plane < p.bits) {  // lone last plane
          for (int b = 0; b < 32; ++b) {
            const int lane = b / 16, q = (b % 16) / 2, par = b % 2;
            acc[8 * par + q] += (1 << plane) * t[16 * lane + (wp[b] & 15)];
            acc[16 + 8 * par + q] += (1 << plane) * t[16 * lane + (wp[b] >> 4)];
          }
        }
      }
      const float ls = lut_scale[f0 / p.A];
      for (int r = 0; r < kTile; ++r) gacc[r] += static_cast<float>(acc[r]) * ls;
    }
    for (int r = 0; r < kTile; ++r) {
      const float hs = 0.5f * sc[32 * g + r];  // alpha_0 = 1/2: the plane weights above are 2^i
      y[r] += gacc[r] * hs;
      y[r] += ((zr ? zr[32 * g + r] : 0.f) - hs) * gsum[g];  // zero point and the -1/2 sum(a) bias
    }
  }
  std::copy(y, y + kTile, out);
}

#ifdef PETKIT_X86
// NB activation rows at once (NB = 2 in a GEMM): each weight vector is loaded and split into
// nibbles once and looked up in every row's tables. Row r reads tbl + r * p.tbl_stride etc. and
// writes out + 32 r.
template <int BITS, int NB>
__attribute__((target("avx2,fma"))) void tile_avx2(const int8_t* tbl, const float* lut_scale,
                                                   const float* gsum, const uint8_t* w,
                                                   const float* sc, const float* zr, const Problem& p,
                                                   float* out) {
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  // maddubs multipliers (unsigned) for the plane pairs (0,1), (2,3) and the lone plane's even/odd bytes
  const __m256i pair01 = _mm256_set1_epi16(0x0201), pair23 = _mm256_set1_epi16(0x0804);
  constexpr int lone = BITS - 1;
  const __m256i lone_even = _mm256_set1_epi16(static_cast<int16_t>(1 << lone));
  const __m256i lone_odd = _mm256_set1_epi16(static_cast<int16_t>((1 << lone) << 8));
  __m256 y[NB][4];
  for (int r = 0; r < NB; ++r)
    for (int a = 0; a < 4; ++a) y[r][a] = _mm256_setzero_ps();
  const int64_t groups = p.K / p.G, steps_per_flush = p.F / kStep;
  const uint8_t* wp = w;
  const int8_t* tp = tbl;
  for (int64_t g = 0; g < groups; ++g) {
    __m256 gacc[NB][4];
    for (int r = 0; r < NB; ++r)
      for (int a = 0; a < 4; ++a) gacc[r][a] = _mm256_setzero_ps();
    for (int64_t f0 = g * p.G; f0 < (g + 1) * p.G; f0 += p.F) {
      __m256i acc[NB][4];
      for (int r = 0; r < NB; ++r)
        for (int a = 0; a < 4; ++a) acc[r][a] = _mm256_setzero_si256();
      for (int64_t s = 0; s < steps_per_flush; ++s, tp += 32) {
        __m256i t[NB];
        for (int r = 0; r < NB; ++r) t[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tp + r * p.tbl_stride));
        for (int u = 0; u < BITS / 2; ++u) {
          const __m256i mult = u == 0 ? pair01 : pair23;
          for (int v = 0; v < 2; ++v, wp += 32) {
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
            const __m256i lo_idx = _mm256_and_si256(wv, nibble);
            const __m256i hi_idx = _mm256_and_si256(_mm256_srli_epi16(wv, 4), nibble);
            for (int r = 0; r < NB; ++r) {
              acc[r][2 * v] = _mm256_add_epi16(acc[r][2 * v], _mm256_maddubs_epi16(mult, _mm256_shuffle_epi8(t[r], lo_idx)));
              acc[r][2 * v + 1] = _mm256_add_epi16(acc[r][2 * v + 1], _mm256_maddubs_epi16(mult, _mm256_shuffle_epi8(t[r], hi_idx)));
            }
          }
        }
        if (BITS % 2) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
          wp += 32;
          const __m256i lo_idx = _mm256_and_si256(wv, nibble);
          const __m256i hi_idx = _mm256_and_si256(_mm256_srli_epi16(wv, 4), nibble);
          for (int r = 0; r < NB; ++r) {
            const __m256i lo = _mm256_shuffle_epi8(t[r], lo_idx), hi = _mm256_shuffle_epi8(t[r], hi_idx);
            acc[r][0] = _mm256_add_epi16(acc[r][0], _mm256_maddubs_epi16(lone_even, lo));
            acc[r][1] = _mm256_add_epi16(acc[r][1], _mm256_maddubs_epi16(lone_odd, lo));
            acc[r][2] = _mm256_add_epi16(acc[r][2], _mm256_maddubs_epi16(lone_even, hi));
            acc[r][3] = _mm256_add_epi16(acc[r][3], _mm256_maddubs_epi16(lone_odd, hi));
          }
        }
      }
      for (int r = 0; r < NB; ++r) {
        const __m256 ls = _mm256_set1_ps(lut_scale[r * p.ls_stride + f0 / p.A]);
        for (int a = 0; a < 4; ++a) {  // fold the two lanes (two table groups, same rows), widen
          const __m128i folded = _mm_add_epi16(_mm256_castsi256_si128(acc[r][a]), _mm256_extracti128_si256(acc[r][a], 1));
          gacc[r][a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(folded)), ls, gacc[r][a]);
        }
      }
    }
    const __m256 half = _mm256_set1_ps(0.5f);
    for (int a = 0; a < 4; ++a) {
      const __m256 hs = _mm256_mul_ps(half, _mm256_loadu_ps(sc + 32 * g + 8 * a));
      const __m256 z = zr ? _mm256_loadu_ps(zr + 32 * g + 8 * a) : _mm256_setzero_ps();
      for (int r = 0; r < NB; ++r) {
        y[r][a] = _mm256_fmadd_ps(gacc[r][a], hs, y[r][a]);
        y[r][a] = _mm256_fmadd_ps(_mm256_sub_ps(z, hs), _mm256_set1_ps(gsum[r * p.gs_stride + g]), y[r][a]);
      }
    }
  }
  for (int r = 0; r < NB; ++r)
    for (int a = 0; a < 4; ++a) _mm256_storeu_ps(out + kTile * r + 8 * a, y[r][a]);
}

// 32 bytes (or 8 floats) of each of two tiles, `next` elements apart, as one zmm register. (Lambdas
// would not inherit the target attribute, so these are functions.)
__attribute__((target("avx512f,avx2"))) inline __m512i load_two(const uint8_t* a, int64_t next) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + next)), 1);
}

__attribute__((target("avx512f,avx2"))) inline __m512 load_two(const float* a, int64_t next) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(a))),
                                             _mm256_castps_pd(_mm256_loadu_ps(a + next)), 1));
}

// Two adjacent 32-row tiles at once, one per 256-bit half of a zmm register: the same layout and
// the same integer sums as tile_avx2, with half the instructions per lookup.
template <int BITS>
__attribute__((target("avx512f,avx512bw,avx2,fma"))) void tile_pair_avx512(
    const int8_t* tbl, const float* lut_scale, const float* gsum, const uint8_t* w, const float* sc,
    const float* zr, const Problem& p, float* out) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const __m512i pair01 = _mm512_set1_epi16(0x0201), pair23 = _mm512_set1_epi16(0x0804);
  constexpr int lone = BITS - 1;
  const __m512i lone_even = _mm512_set1_epi16(static_cast<int16_t>(1 << lone));
  const __m512i lone_odd = _mm512_set1_epi16(static_cast<int16_t>((1 << lone) << 8));
  const int64_t groups = p.K / p.G, steps_per_flush = p.F / kStep, next = p.tile_bytes;
  const int64_t sc_next = groups * kTile;
  // zmm a of y/gacc: rows 8a..8a+7 of the first tile (low 8 floats), of the second (high 8)
  __m512 y[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  const uint8_t* wp = w;
  const int8_t* tp = tbl;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 gacc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t f0 = g * p.G; f0 < (g + 1) * p.G; f0 += p.F) {
      __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
      for (int64_t s = 0; s < steps_per_flush; ++s, tp += 32) {
        const __m512i t = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tp)));
        for (int u = 0; u < BITS / 2; ++u) {
          const __m512i mult = u == 0 ? pair01 : pair23;
          for (int v = 0; v < 2; ++v, wp += 32) {
            const __m512i wv = load_two(wp, next);
            const __m512i lo = _mm512_shuffle_epi8(t, _mm512_and_si512(wv, nibble));
            const __m512i hi = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(wv, 4), nibble));
            acc[2 * v] = _mm512_add_epi16(acc[2 * v], _mm512_maddubs_epi16(mult, lo));
            acc[2 * v + 1] = _mm512_add_epi16(acc[2 * v + 1], _mm512_maddubs_epi16(mult, hi));
          }
        }
        if (BITS % 2) {
          const __m512i wv = load_two(wp, next);
          wp += 32;
          const __m512i lo = _mm512_shuffle_epi8(t, _mm512_and_si512(wv, nibble));
          const __m512i hi = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(wv, 4), nibble));
          acc[0] = _mm512_add_epi16(acc[0], _mm512_maddubs_epi16(lone_even, lo));
          acc[1] = _mm512_add_epi16(acc[1], _mm512_maddubs_epi16(lone_odd, lo));
          acc[2] = _mm512_add_epi16(acc[2], _mm512_maddubs_epi16(lone_even, hi));
          acc[3] = _mm512_add_epi16(acc[3], _mm512_maddubs_epi16(lone_odd, hi));
        }
      }
      const __m512 ls = _mm512_set1_ps(lut_scale[f0 / p.A]);
      for (int a = 0; a < 4; ++a) {  // fold 128-bit lanes 0+1 (first tile) and 2+3 (second tile)
        const __m512i folded = _mm512_add_epi16(acc[a], _mm512_shuffle_i64x2(acc[a], acc[a], 0xB1));
        const __m256i both = _mm512_castsi512_si256(_mm512_shuffle_i64x2(folded, folded, 0x88));
        gacc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(both)), ls, gacc[a]);
      }
    }
    const __m512 half = _mm512_set1_ps(0.5f), sum = _mm512_set1_ps(gsum[g]);
    for (int a = 0; a < 4; ++a) {
      const __m512 hs = _mm512_mul_ps(half, load_two(sc + 32 * g + 8 * a, sc_next));
      const __m512 z = zr ? load_two(zr + 32 * g + 8 * a, sc_next) : _mm512_setzero_ps();
      y[a] = _mm512_fmadd_ps(gacc[a], hs, y[a]);
      y[a] = _mm512_fmadd_ps(_mm512_sub_ps(z, hs), sum, y[a]);
    }
  }
  for (int a = 0; a < 4; ++a) {
    _mm256_storeu_ps(out + 8 * a, _mm512_castps512_ps256(y[a]));
    _mm256_storeu_ps(out + kTile + 8 * a, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(y[a]), 1)));
  }
}
#endif

using TileFn = void (*)(const int8_t*, const float*, const float*, const uint8_t*, const float*,
                        const float*, const Problem&, float*);

int64_t best_isa();

void build_tables(const float* x, const Problem& p, int8_t* tbl, float* lut_scale, int64_t isa) {
#ifdef PETKIT_X86
  if (std::min(isa, best_isa()) >= 1) return build_tables_avx2(x, p, tbl, lut_scale);
#endif
  build_tables_scalar(x, p, tbl, lut_scale);
}

int64_t best_isa() {  // 0 = scalar, 1 = AVX2, 2 = AVX-512BW
#ifdef PETKIT_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 2;
  if (avx2) return 1;
#endif
  return 0;
}

struct Kernels {
  TileFn one;   // one 32-row tile
  TileFn pair;  // two adjacent tiles (out: 64 floats), or nullptr
  TileFn two_rows;  // one tile for two activation rows (out: 2 x 32 floats), or nullptr
};

Kernels pick_kernels(int64_t isa, int bits) {
  isa = std::min(isa, best_isa());
#ifdef PETKIT_X86
  if (isa >= 1) {
    const TileFn one = bits == 1 ? tile_avx2<1, 1> : bits == 2 ? tile_avx2<2, 1> : bits == 3 ? tile_avx2<3, 1> : tile_avx2<4, 1>;
    const TileFn two_rows = bits == 1 ? tile_avx2<1, 2> : bits == 2 ? tile_avx2<2, 2> : bits == 3 ? tile_avx2<3, 2> : tile_avx2<4, 2>;
    if (isa < 2) return {one, nullptr, two_rows};
    return {one, bits == 1 ? tile_pair_avx512<1> : bits == 2 ? tile_pair_avx512<2>
                 : bits == 3 ? tile_pair_avx512<3> : tile_pair_avx512<4>, nullptr};
  }
#endif
  return {tile_scalar, nullptr, nullptr};
}

Problem make_problem(int64_t K, int64_t G, int64_t A, int64_t bits) {
  TORCH_CHECK(bits >= 1 && bits <= 4, "bits must be 1..4");
  TORCH_CHECK(G % kStep == 0 && K % G == 0, "K must be a multiple of group_size, a multiple of 8");
  TORCH_CHECK(A > 0 && A % kStep == 0, "act_group_size must be a positive multiple of 8");
  return Problem{K, G, A, std::gcd(std::gcd(G, A), static_cast<int64_t>(kMaxFlush)), static_cast<int>(bits),
                 (K / kStep) * kTile * bits};
}

std::vector<torch::Tensor> quantized_tables(torch::Tensor x, int64_t act_group_size, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.size(1) % 4 == 0);
  x = x.contiguous();
  const int64_t N = x.size(0), K = x.size(1), A = act_group_size;
  const Problem p{K, K, A, 0, 1, 0};
  auto tbl = torch::empty({N, K / 4, 16}, torch::kInt8);
  auto ls = torch::empty({N, (K + A - 1) / A}, torch::kFloat32);
  for (int64_t n = 0; n < N; ++n)
    build_tables(x.data_ptr<float>() + n * K, p, tbl.data_ptr<int8_t>() + n * K * 4,
                 ls.data_ptr<float>() + n * ls.size(1), isa);
  return {tbl, ls};
}

// y (N, M) = x (N, K) @ W^T for the packed weight. isa: highest instruction set to use.
torch::Tensor lut_gemm(torch::Tensor x, torch::Tensor packed, torch::Tensor scales,
                       c10::optional<torch::Tensor> zeros, int64_t bits, int64_t M, int64_t group_size,
                       int64_t act_group_size, int64_t isa) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == torch::kFloat32, "x must be float32 (..., K)");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() && packed.dim() == 3);
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.is_contiguous());
  x = x.contiguous();
  const int64_t K = x.size(-1), N = x.numel() / std::max<int64_t>(K, 1), tiles = packed.size(0);
  Problem p = make_problem(K, group_size, act_group_size, bits);
  TORCH_CHECK(packed.size(1) == K / kStep && packed.size(2) == kTile * bits, "packed weight does not fit x");
  TORCH_CHECK(tiles * kTile >= M && M > (tiles - 1) * kTile, "M does not fit the packed weight");
  const float* zr = nullptr;
  if (zeros.has_value()) {
    TORCH_CHECK(zeros->is_contiguous() && zeros->sizes() == scales.sizes());
    zr = zeros->data_ptr<float>();
  }
  const int64_t groups = K / p.G, act_groups = (K + p.A - 1) / p.A;
  p.tbl_stride = K * 4, p.ls_stride = act_groups, p.gs_stride = groups;
  // scratch: int8 tables, their scales and the per-group activation sums of every row
  std::unique_ptr<int8_t[]> tbl(new int8_t[N * K * 4]);  // no zero fill: every entry is written
  std::vector<float> lut_scale(N * act_groups), gsum(N * groups);
  const float* xp = x.data_ptr<float>();
  int8_t* tblp = tbl.get();
  float* lsp = lut_scale.data();
  float* gsp = gsum.data();
  at::parallel_for(0, N, 4, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      build_tables(xp + n * K, p, tblp + n * K * 4, lsp + n * act_groups, isa);
      for (int64_t g = 0; g < groups; ++g) {
        const float* xg = xp + n * K + g * p.G;
        float s = 0.f;
        for (int64_t k = 0; k < p.G; ++k) s += xg[k];
        gsp[n * groups + g] = s;
      }
    }
  });
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = M;
  auto y = torch::empty(out_shape, torch::kFloat32);
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const float* scp = scales.data_ptr<float>();
  const Kernels kernels = pick_kernels(isa, p.bits);
  const int64_t per_item = kernels.pair ? 2 : 1;  // tiles per work item
  const int64_t items = (tiles + per_item - 1) / per_item;
  const int64_t work_per_item = (K / kStep) * bits * N * per_item;
  // A work unit (one plane of one 32-row tile over 8 activations) is ~1 ns; a thread team costs a few
  // us to start and join, so only hand a thread at least ~8 us of work (small GEMVs stay serial).
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, work_per_item));
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    float out[2 * kTile];
    for (int64_t t = i0 * per_item; t < std::min(tiles, i1 * per_item);) {
      const bool pair = kernels.pair && t + 1 < tiles;
      const int64_t rows = std::min<int64_t>(pair ? 2 * kTile : kTile, M - t * kTile);
      const float* sct = scp + t * groups * kTile;
      const float* zrt = zr ? zr + t * groups * kTile : nullptr;
      for (int64_t n = 0; n < N;) {  // the weight tile stays in L1 across activation rows
        float* yt = yp + n * M + t * kTile;
        if (pair) {  // two tiles, one activation row
          kernels.pair(tblp + n * K * 4, lsp + n * act_groups, gsp + n * groups, wp + t * p.tile_bytes, sct, zrt, p, out);
          std::copy(out, out + rows, yt);
          n += 1;
          continue;
        }
        const int64_t nb = kernels.two_rows && n + 1 < N ? 2 : 1;  // one tile, one or two activation rows
        (nb == 2 ? kernels.two_rows : kernels.one)(tblp + n * K * 4, lsp + n * act_groups, gsp + n * groups,
                                                   wp + t * p.tile_bytes, sct, zrt, p, out);
        for (int64_t r = 0; r < nb; ++r) std::copy(out + r * kTile, out + r * kTile + rows, yt + r * M);
        n += nb;
      }
      t += pair ? 2 : 1;
    }
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lut_gemm", &lut_gemm, "y = x @ W^T for a LUT-packed low-bit weight");
  m.def("quantized_tables", &quantized_tables, "int8 tables and their scales, as lut_gemm builds them");
  m.def("best_isa", &best_isa, "0 = portable scalar, 1 = AVX2, 2 = AVX-512BW");
}
