// R-Sparse batch-1 decode kernel: one token through a sparse-plus-low-rank linear layer.
//
//   active = { i : |x_i * scale_i| > t }
//   z      = sum_{i not active} x_i * down[i, :]            (r values)
//   y      = bias + sum_{i active} x_i * W^T[i, :] + up z    (d_out values)
//
// W^T is stored input-channel-major (d_in x d_out, row i = column i of W), so an active channel
// is one contiguous row and an inactive one is never read: the bytes read are
// c * d_out + (d_in - c) * r + d_out * r floats instead of d_in * d_out. The output is split
// over torch's intra-op threads (each thread owns a slice of y and walks every active row's
// slice of it), so the kernel uses the same threads as the dense path it is compared with.
// Registered as torch.ops.edgesmith.rsparse_matvec.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

at::Tensor rsparse_matvec(const at::Tensor& x, const at::Tensor& weight_t, const at::Tensor& scale,
                          double threshold, const at::Tensor& down, const at::Tensor& up,
                          const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "rsparse_matvec: x must be a contiguous float32 vector");
  const int64_t d_in = x.size(0);
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.size(0) == d_in && weight_t.is_contiguous() &&
                  weight_t.scalar_type() == at::kFloat,
              "rsparse_matvec: weight_t must be a contiguous float32 (d_in, d_out) matrix");
  const int64_t d_out = weight_t.size(1);
  TORCH_CHECK(scale.numel() == d_in && scale.is_contiguous() && scale.scalar_type() == at::kFloat,
              "rsparse_matvec: scale must hold d_in float32 values");
  const int64_t r = down.dim() == 2 ? down.size(1) : 0;
  TORCH_CHECK(down.dim() == 2 && down.size(0) == d_in && down.is_contiguous() && down.scalar_type() == at::kFloat,
              "rsparse_matvec: down must be a contiguous float32 (d_in, r) matrix");
  TORCH_CHECK(up.dim() == 2 && up.size(0) == d_out && up.size(1) == r && up.is_contiguous() &&
                  up.scalar_type() == at::kFloat,
              "rsparse_matvec: up must be a contiguous float32 (d_out, r) matrix");
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == d_out && bias->is_contiguous() && bias->scalar_type() == at::kFloat,
                "rsparse_matvec: bias must hold d_out float32 values");
    b = bias->data_ptr<float>();
  }

  const float* __restrict xp = x.data_ptr<float>();
  const float* __restrict sp = scale.data_ptr<float>();
  const float* __restrict wp = weight_t.data_ptr<float>();
  const float* __restrict dp = down.data_ptr<float>();
  const float* __restrict upp = up.data_ptr<float>();
  const float t = static_cast<float>(threshold);

  // Active channels (index, value); the inactive ones go into z through their row of down.
  std::vector<int64_t> idx;
  std::vector<float> val;
  idx.reserve(d_in);
  val.reserve(d_in);
  std::vector<float> z(static_cast<size_t>(r), 0.0f);
  for (int64_t i = 0; i < d_in; ++i) {
    const float v = xp[i];
    if (std::fabs(v * sp[i]) > t) {
      idx.push_back(i);
      val.push_back(v);
    } else if (r > 0 && v != 0.0f) {
      const float* __restrict row = dp + i * r;
      for (int64_t k = 0; k < r; ++k) z[k] += v * row[k];
    }
  }
  const int64_t c = static_cast<int64_t>(idx.size());

  at::Tensor y = at::empty({d_out}, x.options());
  float* __restrict yp = y.data_ptr<float>();
  const float* __restrict zp = z.data();
  // Slices of at least 64 outputs (256 bytes of each active row) per task.
  at::parallel_for(0, d_out, 64, [&](int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0;
    std::vector<float> acc(static_cast<size_t>(n));
    float* __restrict a = acc.data();
    for (int64_t j = 0; j < n; ++j) a[j] = b ? b[j0 + j] : 0.0f;
    int64_t k = 0;
    for (; k + 4 <= c; k += 4) {  // four active rows per pass over the slice
      const float x0 = val[k], x1 = val[k + 1], x2 = val[k + 2], x3 = val[k + 3];
      const float* __restrict w0 = wp + idx[k] * d_out + j0;
      const float* __restrict w1 = wp + idx[k + 1] * d_out + j0;
      const float* __restrict w2 = wp + idx[k + 2] * d_out + j0;
      const float* __restrict w3 = wp + idx[k + 3] * d_out + j0;
      for (int64_t j = 0; j < n; ++j) a[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j];
    }
    for (; k < c; ++k) {
      const float x0 = val[k];
      const float* __restrict w0 = wp + idx[k] * d_out + j0;
      for (int64_t j = 0; j < n; ++j) a[j] += x0 * w0[j];
    }
    for (int64_t j = 0; j < n; ++j) {
      const float* __restrict u = upp + (j0 + j) * r;
      float s = 0.0f;
      for (int64_t q = 0; q < r; ++q) s += u[q] * zp[q];
      yp[j0 + j] = a[j] + s;
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(edgesmith, m) {
  m.def("rsparse_matvec(Tensor x, Tensor weight_t, Tensor scale, float threshold, Tensor down, Tensor up, "
        "Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(edgesmith, CPU, m) { m.impl("rsparse_matvec", &rsparse_matvec); }
