// Dequantisation of packed low-bit rows (petkit/quant/formats.py) to float32 or bfloat16.
//
// Layout: each row's codes are one little-endian bit stream (b = 1, 2, 4: 8/b codes per byte, the
// first code in the lowest bits; b = 8: one byte per code). Groups of G (a multiple of 8) codes along
// a row share a statistic, so every group starts on a byte and 8 codes take exactly b bytes.
//   int:  w = zero + q * scale          (fp16 statistics)
//   nf4:  w = NF4[q] * absmax            (fp32 absmax)
// The float operations are those of formats.dequantize_codes: q * scale is exact in float32 (q < 2^8
// times an 11-bit mantissa), so the only rounding is the add, as in torch.addcmul; for bfloat16 the
// statistics (and the NF4 levels) are first rounded to bfloat16, the value computed in float and
// rounded to bfloat16 once, as PyTorch's bfloat16 ops do. Built with -ffp-contract=off so the
// compiler adds and multiplies exactly as written.
//
// The AVX2 and AVX-512 kernels carry their own target attributes and run only after a runtime CPU check; the
// scalar path runs anywhere.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PETKIT_X86 1
#endif

namespace {

struct Spec {
  int bits;
  int64_t cols, G, groups;
  bool nf4;
  float levels[16];  // NF4 levels, rounded to the output dtype
};

inline float to_out_precision(float v, bool bf16) { return bf16 ? static_cast<float>(c10::BFloat16(v)) : v; }

inline uint32_t read_bits(const uint8_t* p, int nbytes) {  // little-endian, nbytes <= 4
  uint32_t u = 0;
  std::memcpy(&u, p, nbytes);
  return u;
}

// A NaN zero point: PyTorch's zero + q * scale returns the zero's NaN even where q * scale is a NaN
// too (0 * inf), while the compiler may put either operand of a commutative add first (x86 returns
// the first NaN operand). So such a group is filled with the zero's NaN, quieted by the add as in PyTorch.
inline bool nan_zero_group(float zg, int64_t G, float* out) {
  if (!std::isnan(zg)) return false;
  const float q = zg + 0.f;
  std::fill(out, out + G, q);
  return true;
}

// One row of floats from its packed codes and per-group statistics s (and z, int scheme).
void row_scalar(const uint8_t* p, const float* s, const float* z, const Spec& sp, float* out) {
  const int b = sp.bits;
  const uint32_t mask = (1u << b) - 1u;
  for (int64_t g = 0; g < sp.groups; ++g) {
    const float sg = s[g], zg = sp.nf4 ? 0.f : z[g];
    if (nan_zero_group(zg, sp.G, out + g * sp.G)) {
      p += sp.G * b / 8;
      continue;
    }
    for (int64_t k = 0; k < sp.G; k += 8, p += b) {
      float* o = out + g * sp.G + k;
      if (b == 8) {
        for (int i = 0; i < 8; ++i) o[i] = zg + static_cast<float>(p[i]) * sg;
        continue;
      }
      const uint32_t u = read_bits(p, b);
      for (int i = 0; i < 8; ++i) {
        const uint32_t q = (u >> (i * b)) & mask;
        o[i] = sp.nf4 ? sp.levels[q] * sg : zg + static_cast<float>(q) * sg;
      }
    }
  }
}

void to_bf16_scalar(const float* in, int64_t n, c10::BFloat16* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = c10::BFloat16(in[i]);
}

#ifdef PETKIT_X86
template <int BITS, bool NF4>
__attribute__((target("avx2"))) void row_avx2(const uint8_t* p, const float* s, const float* z, const Spec& sp,
                                              float* out) {
  const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  const __m256i mask = _mm256_set1_epi32((1 << (BITS == 8 ? 0 : BITS)) - 1);
  const __m256 lo = _mm256_loadu_ps(sp.levels), hi = _mm256_loadu_ps(sp.levels + 8);
  for (int64_t g = 0; g < sp.groups; ++g) {
    const __m256 vs = _mm256_set1_ps(s[g]);
    const __m256 vz = _mm256_set1_ps(NF4 ? 0.f : z[g]);
    float* o = out + g * sp.G;
    if (!NF4 && nan_zero_group(z[g], sp.G, o)) {
      p += sp.G * BITS / 8;
      continue;
    }
    for (int64_t k = 0; k < sp.G; k += 8, p += BITS) {
      __m256i q;
      if (BITS == 8) {
        q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      } else {
        q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(read_bits(p, BITS))), shifts), mask);
      }
      __m256 v;
      if (NF4) {  // 16-entry lookup: two 8-entry permutes, bit 3 (moved to the sign) picks the half
        const __m256 l = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, q), _mm256_permutevar8x32_ps(hi, q),
                                          _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
        v = _mm256_mul_ps(l, vs);
      } else {
        v = _mm256_add_ps(vz, _mm256_mul_ps(_mm256_cvtepi32_ps(q), vs));
      }
      _mm256_storeu_ps(o + k, v);
    }
  }
}

// The same with 16 codes per step: the first 8 codes' bytes broadcast to lanes 0-7, the next 8 codes'
// to lanes 8-15; NF4 is one 16-entry permute.
template <int BITS, bool NF4>
__attribute__((target("avx512f,avx2"))) void row_avx512(const uint8_t* p, const float* s, const float* z,
                                                        const Spec& sp, float* out) {
  const __m512i shifts = _mm512_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS, 0, BITS,
                                           2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  const __m512i mask = _mm512_set1_epi32((1 << (BITS == 8 ? 0 : BITS)) - 1);
  const __m512 table = _mm512_loadu_ps(sp.levels);
  for (int64_t g = 0; g < sp.groups; ++g) {
    const __m512 vs = _mm512_set1_ps(s[g]);
    const __m512 vz = _mm512_set1_ps(NF4 ? 0.f : z[g]);
    float* o = out + g * sp.G;
    if (!NF4 && nan_zero_group(z[g], sp.G, o)) {
      p += sp.G * BITS / 8;
      continue;
    }
    int64_t k = 0;
    for (; k + 16 <= sp.G; k += 16, p += 2 * BITS) {
      __m512i q;
      if (BITS == 8) {
        q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      } else {
        const __m512i both = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(static_cast<int>(read_bits(p, BITS))),
                                                     _mm512_set1_epi32(static_cast<int>(read_bits(p + BITS, BITS))));
        q = _mm512_and_si512(_mm512_srlv_epi32(both, shifts), mask);
      }
      const __m512 v = NF4 ? _mm512_mul_ps(_mm512_permutexvar_ps(q, table), vs)
                           : _mm512_add_ps(vz, _mm512_mul_ps(_mm512_cvtepi32_ps(q), vs));
      _mm512_storeu_ps(o + k, v);
    }
    if (k < sp.G) {  // a group of 8 (G = 8, 24, ...): the last 8 codes
      const __m512i q8 = BITS == 8 ? _mm512_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))
                                   : _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(read_bits(p, BITS))), shifts), mask);
      const __m512 v = NF4 ? _mm512_mul_ps(_mm512_permutexvar_ps(q8, table), vs)
                           : _mm512_add_ps(vz, _mm512_mul_ps(_mm512_cvtepi32_ps(q8), vs));
      _mm512_mask_storeu_ps(o + k, 0x00FF, v);
      p += BITS;
    }
  }
}

// float -> bfloat16, round to nearest even, NaN -> 0x7FC0: c10::BFloat16(float), 8 at a time.
__attribute__((target("avx2"))) void to_bf16_avx2(const float* in, int64_t n, c10::BFloat16* out) {
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF), nan = _mm256_set1_epi32(0x7FC0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(in + i);
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), lsb), 16);
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
  }
  to_bf16_scalar(in + i, n - i, out + i);
}
#endif

using RowFn = void (*)(const uint8_t*, const float*, const float*, const Spec&, float*);
using Bf16Fn = void (*)(const float*, int64_t, c10::BFloat16*);

int64_t best_isa() {  // 0 = scalar, 1 = AVX2, 2 = AVX-512F
#ifdef PETKIT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2")) return 1;
#endif
  return 0;
}

RowFn pick_row(int64_t isa, int bits, bool nf4) {
#ifdef PETKIT_X86
  if (std::min(isa, best_isa()) >= 2) {
    if (nf4) return row_avx512<4, true>;
    switch (bits) {
      case 1: return row_avx512<1, false>;
      case 2: return row_avx512<2, false>;
      case 4: return row_avx512<4, false>;
      case 8: return row_avx512<8, false>;
    }
  }
  if (std::min(isa, best_isa()) >= 1) {
    if (nf4) return row_avx2<4, true>;
    switch (bits) {
      case 1: return row_avx2<1, false>;
      case 2: return row_avx2<2, false>;
      case 4: return row_avx2<4, false>;
      case 8: return row_avx2<8, false>;
    }
  }
#endif
  return row_scalar;
}

Bf16Fn pick_bf16(int64_t isa) {
#ifdef PETKIT_X86
  if (std::min(isa, best_isa()) >= 1) return to_bf16_avx2;
#endif
  return to_bf16_scalar;
}

template <typename T>
void load_stats(const torch::Tensor& t, int64_t row, int64_t groups, bool bf16, float* dst) {
  const T* src = t.data_ptr<T>() + row * groups;
  for (int64_t g = 0; g < groups; ++g) dst[g] = to_out_precision(static_cast<float>(src[g]), bf16);
}

void stats_of_row(const torch::Tensor& t, int64_t row, int64_t groups, bool bf16, float* dst) {
  switch (t.scalar_type()) {
    case torch::kHalf: return load_stats<at::Half>(t, row, groups, bf16, dst);
    case torch::kBFloat16: return load_stats<at::BFloat16>(t, row, groups, bf16, dst);
    default: return load_stats<float>(t, row, groups, bf16, dst);
  }
}

// packed (R, bytes) uint8, scales/zeros (R, cols/G) fp16/bf16/fp32, levels (16,) fp32 for nf4.
// index (n,) int64: dequantise rows index[i] (negative counts from the end); else all R rows.
// Writes into out (n, cols) when given (contiguous, float32 or bfloat16), else returns a new tensor.
torch::Tensor dequantize(torch::Tensor packed, torch::Tensor scales, c10::optional<torch::Tensor> zeros,
                         c10::optional<torch::Tensor> levels, c10::optional<torch::Tensor> index, int64_t bits,
                         int64_t cols, bool bf16, c10::optional<torch::Tensor> out, int64_t isa) {
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, "bits must be 1, 2, 4 or 8");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 2, "packed codes must be uint8 (rows, bytes)");
  packed = packed.contiguous();
  scales = scales.contiguous();
  const bool nf4 = levels.has_value();
  TORCH_CHECK(nf4 != zeros.has_value(), "give zeros (int scheme) or levels (nf4), not both");
  TORCH_CHECK(!nf4 || bits == 4, "nf4 is 4-bit");
  const int64_t R = packed.size(0), groups = scales.size(1);
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == R && groups > 0 && cols % groups == 0, "scales must be (rows, cols/G)");
  const int64_t G = cols / groups;
  TORCH_CHECK(G % 8 == 0, "group_size must be a multiple of 8");
  TORCH_CHECK(packed.size(1) == cols * bits / 8, "packed rows do not hold cols codes of this width");
  torch::Tensor zr;
  if (zeros.has_value()) {
    zr = zeros->contiguous();
    TORCH_CHECK(zr.sizes() == scales.sizes(), "zeros must have the scales' shape");
  }
  Spec sp{static_cast<int>(bits), cols, G, groups, nf4, {}};
  if (nf4) {
    TORCH_CHECK(levels->numel() == 16 && levels->scalar_type() == torch::kFloat32, "levels must be 16 float32");
    const float* lv = levels->contiguous().data_ptr<float>();
    for (int i = 0; i < 16; ++i) sp.levels[i] = to_out_precision(lv[i], bf16);
  }
  torch::Tensor idx;
  int64_t n = R;
  if (index.has_value()) {
    idx = index->to(torch::kLong).contiguous();
    n = idx.numel();
    const int64_t* ip = idx.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK_INDEX(ip[i] >= -R && ip[i] < R, "index ", ip[i], " is out of bounds for ", R, " rows");
  }
  const auto out_dtype = bf16 ? torch::kBFloat16 : torch::kFloat32;
  torch::Tensor y;
  if (out.has_value()) {
    y = *out;
    TORCH_CHECK(y.scalar_type() == out_dtype && y.is_contiguous() && y.dim() == 2 && y.size(0) == n &&
                    y.size(1) == cols, "out must be a contiguous (rows, cols) tensor of the output dtype");
  } else {
    y = torch::empty({n, cols}, out_dtype);
  }
  if (n == 0 || cols == 0) return y;
  const RowFn row_fn = pick_row(isa, sp.bits, nf4);
  const Bf16Fn bf16_fn = pick_bf16(isa);
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  const int64_t row_bytes = packed.size(1);
  const int64_t* ip = index.has_value() ? idx.data_ptr<int64_t>() : nullptr;
  float* yf = bf16 ? nullptr : y.data_ptr<float>();
  c10::BFloat16* yb = bf16 ? y.data_ptr<c10::BFloat16>() : nullptr;
  // ~0.1-0.3 ns per weight: hand a thread at least 64K weights (~10 us), so a small layer or an
  // embedding lookup of a few rows stays on the calling thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> s(groups), z(nf4 ? 0 : groups), buf(bf16 ? cols : 0);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t src = ip ? ip[r] : r;
      if (src < 0) src += R;
      stats_of_row(scales, src, groups, bf16, s.data());
      if (!nf4) stats_of_row(zr, src, groups, bf16, z.data());
      float* dst = bf16 ? buf.data() : yf + r * cols;
      row_fn(pp + src * row_bytes, s.data(), z.data(), sp, dst);
      if (bf16) bf16_fn(buf.data(), cols, yb + r * cols);
    }
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dequantize", &dequantize, "float32/bfloat16 rows of a packed low-bit matrix",
        py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("levels"), py::arg("index"), py::arg("bits"),
        py::arg("cols"), py::arg("bf16"), py::arg("out"), py::arg("isa"));
  m.def("best_isa", &best_isa, "0 = portable scalar, 1 = AVX2, 2 = AVX-512F");
}
