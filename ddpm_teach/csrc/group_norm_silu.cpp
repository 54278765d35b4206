// GroupNorm (optionally followed by SiLU) for channels_last tensors on the CPU, forward and
// backward, optionally of x plus a per-(sample, channel) shift (the ResBlock's time embedding).
// Built on first use by ddpm_teach/fused.py, which explains why it exists; the math is
// nn.GroupNorm's (Wu & He 2018) then F.silu. The autograd wrapper is here too, at the end: in
// C++ a call costs about 40 us less than through a Python autograd.Function (41 calls a step).
//
// Layout: x is (N, C, H, W) with channels_last strides, i.e. memory (N, P = H*W, C) with the
// channels innermost. Every loop over one pixel's C channels is contiguous, so the compiler
// vectorises it; statistics are float32 whatever the input (float32 or bfloat16), as in torch.
//
// Forward, for sample n and group g (channels c in g, Cg = C / G of them, M = P * Cg values):
//   mean_g, var_g over the group's M values;  r_g = 1 / sqrt(var_g + eps)
//   z = (x - mean_g) * r_g * gamma_c + beta_c = x * a_c + b_c;  y = silu(z) = z * sigmoid(z)
// With a shift s (N, C) the input is u = x + s_nc: the same formulas with u for x. u is never
// stored: the channel's mean moves by s_nc and b_c absorbs it; ds_nc = sum over pixels of du.
// Backward, with dz = dy * silu'(z) (= dy without SiLU), xhat = (x - mean_g) * r_g:
//   dbeta_c = sum dz;  dgamma_c = sum dz * xhat
//   dx = r_g * (gamma_c dz - mean(gamma dz) - xhat * mean(gamma dz xhat))   (means over the group)
//      = (r_g gamma_c) dz + B_g x + C_g, with B_g, C_g from two per-channel sums.
// Two passes over x each way: statistics, then the elementwise result. The backward keeps one
// sample's dz (float32) between its passes rather than computing the sigmoid twice.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// bfloat16 is the top half of a float32: widen by a shift, narrow with round-to-nearest-even.
// Written on uint16_t so that the channel loops vectorise.
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  const uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  // NaN stays a (quiet) NaN; tested on the bits, as -ffast-math drops std::isnan.
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  p[i] = static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}

// exp(x) for float32, written out so that it inlines into the channel loops: g++'s vectorised
// std::exp is a libmvec call per 16 lanes, and this made the cpu budget's whole training step
// 1.07x faster (docs/benchmarks.md). The classic range reduction: x = n ln2 + f with n an
// integer and |f| <= ln2 / 2 (ln2 split in two, Cody & Waite, so that n ln2 is nearly exact),
// exp(f) from a degree-7 polynomial (Cephes' expf coefficients; relative error ~1e-7) and 2^n
// put straight into the exponent bits. x is clamped to [-87, 88], where 2^n stays a normal float.
inline float exp_approx(float x) {
  x = std::max(std::min(x, 88.f), -87.f);
  const float n = std::floor(x * 1.44269504f + 0.5f);   // round(x / ln2)
  const float f = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 = 0.693359375 - 2.1219e-4
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.f;  // 1 + f + f^2 (1/2 + f/6 + ...)
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // the float 2^n
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// exp's argument is capped at 80: sigmoid(-80) = 1.8e-35 is 0 for every purpose here, and the
// division (under -ffast-math a reciprocal estimate, which turns 1 / inf into NaN) stays finite.
inline float sigmoid(float z) { return 1.f / (1.f + exp_approx(std::min(-z, 80.f))); }

template <typename T, bool kSiLU>
void forward_kernel(const T* x, const float* shift, const float* gamma, const float* beta, T* y,
                    float* mean, float* rstd, int64_t N, int64_t C, int64_t P, int64_t G,
                    double eps) {
  const int64_t Cg = C / G;
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    // Per-channel sums of d = x - k_c, shifted by the channel's first value k_c so that the
    // variance does not cancel catastrophically when |mean| >> std.
    std::vector<float> k(C), s(C), q(C), a(C), b(C), sh(C, 0.f);
    for (int64_t n = n0; n < n1; ++n) {
      const T* xn = x + n * P * C;
      for (int64_t c = 0; c < C; ++c) k[c] = load(xn, c), s[c] = 0.f, q[c] = 0.f;
      if (shift) std::copy(shift + n * C, shift + (n + 1) * C, sh.begin());
      float* __restrict__ ps = s.data();
      float* __restrict__ pq = q.data();
      const float* __restrict__ pk = k.data();
      for (int64_t p = 0; p < P; ++p) {
        const T* xp = xn + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = load(xp, c) - pk[c];
          ps[c] += d;
          pq[c] += d * d;
        }
      }
      // Combine the channels of each group (Chan et al.'s pairwise update, in double).
      for (int64_t g = 0; g < G; ++g) {
        double m = 0.0, m2 = 0.0;
        // The channel means of u = x + s: a shift moves them, not the sums of squares about them.
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) m += k[c] + double(sh[c]) + double(s[c]) / P;
        m /= Cg;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const double mc = k[c] + double(sh[c]) + double(s[c]) / P;
          m2 += double(q[c]) - double(s[c]) * s[c] / P + P * (mc - m) * (mc - m);
        }
        const float r = static_cast<float>(1.0 / std::sqrt(std::max(m2 / (P * Cg), 0.0) + eps));
        mean[n * G + g] = static_cast<float>(m);
        rstd[n * G + g] = r;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          a[c] = r * gamma[c];
          b[c] = beta[c] + static_cast<float>(sh[c] - m) * a[c];  // z = (x + s - mean) a + beta
        }
      }
      const float* __restrict__ pa = a.data();
      const float* __restrict__ pb = b.data();
      T* yn = y + n * P * C;
      for (int64_t p = 0; p < P; ++p) {
        const T* xp = xn + p * C;
        T* yp = yn + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float z = load(xp, c) * pa[c] + pb[c];
          store(yp, c, kSiLU ? z * sigmoid(z) : z);
        }
      }
    }
  });
}

// The backward's second pass over one sample: dx = a_c dz + b_c x + c_c, and with kSumDx also
// ds_c = sum over the pixels of dx (the gradient of a shift that feeds every pixel).
template <typename T, bool kSumDx>
inline void dx_pass(const T* __restrict__ xn, const float* __restrict__ dz,
                    const float* __restrict__ pa, const float* __restrict__ qb,
                    const float* __restrict__ qc, T* __restrict__ dxn, float* __restrict__ ds,
                    int64_t P, int64_t C) {
  if (kSumDx) std::fill(ds, ds + C, 0.f);
  for (int64_t p = 0; p < P; ++p) {
    const T* xp = xn + p * C;
    T* dxp = dxn + p * C;
    const float* dzp = dz + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float v = pa[c] * dzp[c] + qb[c] * load(xp, c) + qc[c];
      store(dxp, c, v);
      if (kSumDx) ds[c] += v;
    }
  }
}

// Ask for the row of C channels kPrefetchAhead pixels on while this one is computed. The
// backward's first pass reads x, saved by the forward long before and so out of cache, and per
// value works out a sigmoid and its derivative; without the hint the loads and the arithmetic did
// not overlap: one call at 64 x 32 x 28 x 28 (float32, caches flushed) took 1.73-1.76 ms, with it
// 0.93-1.02 ms, and a whole training step of the digits U-Net at batch 64 ran 1.03-1.06x faster
// (2026-11-28, docs/benchmarks.md).
constexpr int64_t kPrefetchAhead = 16;
template <typename T>
inline void prefetch_row(const T* row, int64_t C) {
#if defined(__GNUC__) || defined(__clang__)
  const int64_t bytes = C * static_cast<int64_t>(sizeof(T));
  for (int64_t off = 0; off < bytes; off += 64) {  // one hint per 64-byte cache line
    __builtin_prefetch(reinterpret_cast<const char*>(row) + off);
  }
#else
  (void)row;
  (void)C;
#endif
}

template <typename T, bool kSiLU>
void backward_kernel(const T* dy, const T* x, const float* shift, const float* mean,
                     const float* rstd, const float* gamma, const float* beta, T* dx,
                     float* dgamma_n, float* dbeta_n, float* dshift, int64_t N, int64_t C,
                     int64_t P, int64_t G) {
  const int64_t Cg = C / G;
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> a(C), b(C), sum_dz(C), sum_dz_x(C), cb(C), cc(C), sh(C, 0.f);
    std::vector<float> dz_sample(P * C);  // this sample's dz, from the first pass to the second
    for (int64_t n = n0; n < n1; ++n) {
      const T* xn = x + n * P * C;
      const T* dyn = dy + n * P * C;
      if (shift) std::copy(shift + n * C, shift + (n + 1) * C, sh.begin());
      for (int64_t c = 0; c < C; ++c) {
        const int64_t g = c / Cg;
        a[c] = rstd[n * G + g] * gamma[c];
        b[c] = beta[c] + (sh[c] - mean[n * G + g]) * a[c];
        sum_dz[c] = 0.f;
        sum_dz_x[c] = 0.f;
      }
      const float* __restrict__ pa = a.data();
      const float* __restrict__ pb = b.data();
      float* __restrict__ s1 = sum_dz.data();
      float* __restrict__ s2 = sum_dz_x.data();
      for (int64_t p = 0; p < P; ++p) {
        const T* xp = xn + p * C;
        const T* dyp = dyn + p * C;
        if (p + kPrefetchAhead < P) {
          prefetch_row(xp + kPrefetchAhead * C, C);
          prefetch_row(dyp + kPrefetchAhead * C, C);
        }
        float* __restrict__ dzp = dz_sample.data() + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xv = load(xp, c);
          float dz = load(dyp, c);
          if (kSiLU) {  // silu'(z) = s (1 + z (1 - s)), s = sigmoid(z), z recomputed from x
            const float z = xv * pa[c] + pb[c];
            const float sg = sigmoid(z);
            dz *= sg * (1.f + z * (1.f - sg));
          }
          dzp[c] = dz;
          s1[c] += dz;
          s2[c] += dz * xv;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const double m = mean[n * G + g], r = rstd[n * G + g];
        double sum_gdz = 0.0, sum_gdz_xhat = 0.0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          // sum dz * xhat, with xhat = (x + s - mean) r
          const double dz_xhat = r * (double(sum_dz_x[c]) + (double(sh[c]) - m) * sum_dz[c]);
          dbeta_n[n * C + c] = sum_dz[c];
          dgamma_n[n * C + c] = static_cast<float>(dz_xhat);
          sum_gdz += double(gamma[c]) * sum_dz[c];
          sum_gdz_xhat += double(gamma[c]) * dz_xhat;
        }
        const double count = double(P) * Cg;
        const double B = -r * r * sum_gdz_xhat / count;
        const double Cst = -r * sum_gdz / count - B * m;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          cb[c] = static_cast<float>(B);
          cc[c] = static_cast<float>(Cst + B * sh[c]);  // B u + C = B x + (C + B s)
        }
      }
      const float* __restrict__ qb = cb.data();
      const float* __restrict__ qc = cc.data();
      T* dxn = dx + n * P * C;  // pa = r_g gamma_c
      if (dshift)
        dx_pass<T, true>(xn, dz_sample.data(), pa, qb, qc, dxn, dshift + n * C, P, C);
      else
        dx_pass<T, false>(xn, dz_sample.data(), pa, qb, qc, dxn, nullptr, P, C);
    }
  });
}

void check_input(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                 int64_t groups) {
  TORCH_CHECK(x.device().is_cpu(), "group_norm_silu: x must be on the CPU");
  TORCH_CHECK(x.dim() == 4, "group_norm_silu: x must be (N, C, H, W), got ", x.dim(), " dims");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group_norm_silu: x must be channels_last");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "group_norm_silu: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "group_norm_silu: groups (", groups,
              ") must divide the ", x.size(1), " channels");
  TORCH_CHECK(weight.numel() == x.size(1) && bias.numel() == x.size(1),
              "group_norm_silu: weight and bias must have one value per channel");
  TORCH_CHECK(weight.device().is_cpu() && bias.device().is_cpu(),
              "group_norm_silu: weight and bias must be on the CPU");
}

// The optional shift as contiguous float32 (N, C), or an undefined tensor for none.
at::Tensor shift_as_float(const at::Tensor& x, const c10::optional<at::Tensor>& shift) {
  if (!shift.has_value() || !shift->defined()) return at::Tensor();
  TORCH_CHECK(shift->device().is_cpu(), "group_norm_silu: shift must be on the CPU");
  TORCH_CHECK(shift->dim() == 2 && shift->size(0) == x.size(0) && shift->size(1) == x.size(1),
              "group_norm_silu: shift must be (N, C) = (", x.size(0), ", ", x.size(1),
              "), got ", shift->sizes());
  return shift->to(at::kFloat).contiguous();
}

inline const float* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// Dispatch on (dtype, silu) to the four instantiations; raw pointers because the kernels read
// bfloat16 as uint16_t.
#define DDPM_DISPATCH(x, silu, KERNEL, ...)                                        \
  if ((x).scalar_type() == at::kFloat) {                                           \
    using T = float;                                                               \
    if (silu) KERNEL<T, true>(__VA_ARGS__); else KERNEL<T, false>(__VA_ARGS__);    \
  } else {                                                                         \
    using T = uint16_t;                                                            \
    if (silu) KERNEL<T, true>(__VA_ARGS__); else KERNEL<T, false>(__VA_ARGS__);    \
  }

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
    double eps, bool silu, const c10::optional<at::Tensor>& shift_in) {
  check_input(x, weight, bias, groups);
  const auto shift = shift_as_float(x, shift_in);
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  TORCH_CHECK(P > 0 || N == 0, "group_norm_silu: x has no pixels to normalise over");
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto mean = at::empty({N, groups}, x.options().dtype(at::kFloat));
  auto rstd = at::empty({N, groups}, x.options().dtype(at::kFloat));
  const auto w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  DDPM_DISPATCH(x, silu, forward_kernel, static_cast<const T*>(x.data_ptr()),
                ptr_or_null(shift), w.data_ptr<float>(), b.data_ptr<float>(),
                static_cast<T*>(y.data_ptr()), mean.data_ptr<float>(),
                rstd.data_ptr<float>(), N, C, P, groups, eps)
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, const at::Tensor& bias, int64_t groups, bool silu,
    const c10::optional<at::Tensor>& shift_in) {
  check_input(x, weight, bias, groups);
  const auto shift = shift_as_float(x, shift_in);
  TORCH_CHECK(dy_in.sizes() == x.sizes(), "group_norm_silu_backward: dy must have x's shape ",
              x.sizes(), ", got ", dy_in.sizes());
  TORCH_CHECK(mean.numel() == x.size(0) * groups && rstd.numel() == x.size(0) * groups &&
                  mean.scalar_type() == at::kFloat && rstd.scalar_type() == at::kFloat,
              "group_norm_silu_backward: mean and rstd must be float32 (N, groups), as the "
              "forward returns them");
  const auto dy = dy_in.to(x.device(), x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto dgamma = at::empty({N, C}, x.options().dtype(at::kFloat));  // per sample, summed below
  auto dbeta = at::empty({N, C}, x.options().dtype(at::kFloat));
  // The shift's gradient, (N, C) float32; an empty tensor when there is no shift.
  auto dshift = at::empty({shift.defined() ? N : 0, C}, x.options().dtype(at::kFloat));
  const auto w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  const auto m = mean.contiguous(), r = rstd.contiguous();
  DDPM_DISPATCH(x, silu, backward_kernel, static_cast<const T*>(dy.data_ptr()),
                static_cast<const T*>(x.data_ptr()), ptr_or_null(shift), m.data_ptr<float>(),
                r.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(),
                static_cast<T*>(dx.data_ptr()), dgamma.data_ptr<float>(),
                dbeta.data_ptr<float>(), shift.defined() ? dshift.data_ptr<float>() : nullptr,
                N, C, P, groups)
  return {dx, dgamma.sum(0), dbeta.sum(0), dshift};
}

// The two kernels as registered ops, called through the dispatcher below autograd: profilers
// and op counters see them as the single ops they are, not as the allocations inside them.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}
using ForwardOp = decltype(forward);
using BackwardOp = decltype(backward);

// y = silu(group_norm(x + shift)) as one autograd node: backward runs the kernel's backward once
// for dx, dgamma, dbeta and dshift.
class GroupNormSiLU : public torch::autograd::Function<GroupNormSiLU> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                            double eps, bool silu, const c10::optional<at::Tensor>& shift) {
    static const auto kernel = op<ForwardOp>("ddpm_teach::group_norm_silu");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = kernel.call(x, weight, bias, groups, eps, silu, shift);
    ctx->save_for_backward({x, mean, rstd, weight, bias, shift.value_or(at::Tensor())});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The backward is the kernel, not differentiable ops: a second derivative would silently
    // miss its part, so refuse to build one.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "group_norm_silu: the fused kernel has no second derivative (backward with "
                "create_graph=True); use NCHW tensors, where torch's ops run, for that");
    static const auto kernel = op<BackwardOp>("ddpm_teach::group_norm_silu_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[3], &bias = saved[4], &shift = saved[5];
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dx, dw, db, ds] = kernel.call(
        grads[0], x, saved[1], saved[2], weight, bias, ctx->saved_data["groups"].toInt(),
        ctx->saved_data["silu"].toBool(),
        shift.defined() ? c10::optional<at::Tensor>(shift) : c10::nullopt);
    return {dx,
            dw.to(weight.scalar_type()),
            db.to(bias.scalar_type()),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            shift.defined() ? ds.to(shift.scalar_type()) : at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            int64_t groups, double eps, bool silu,
                            const c10::optional<at::Tensor>& shift) {
  return GroupNormSiLU::apply(x, weight, bias, groups, eps, silu, shift);
}

}  // namespace

TORCH_LIBRARY(ddpm_teach, m) {
  m.def(
      "group_norm_silu(Tensor x, Tensor weight, Tensor bias, int groups, float eps, bool silu,"
      " Tensor? shift=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_silu_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor weight,"
      " Tensor bias, int groups, bool silu, Tensor? shift=None)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // The differentiable op the U-Net calls: y only; mean and rstd stay in the autograd node.
  m.def(
      "group_norm_silu_autograd(Tensor x, Tensor weight, Tensor bias, int groups, float eps,"
      " bool silu, Tensor? shift=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(ddpm_teach, CPU, m) {
  m.impl("group_norm_silu", &forward);
  m.impl("group_norm_silu_backward", &backward);
  m.impl("group_norm_silu_autograd", &forward_autograd);  // without autograd (inference mode)
}

TORCH_LIBRARY_IMPL(ddpm_teach, Autograd, m) {
  m.impl("group_norm_silu_autograd", &forward_autograd);
}
