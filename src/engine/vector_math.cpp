#include "engine/vector_math.h"

#include <oneapi/dnnl/dnnl.hpp>

#include "clipdissect/error.h"

namespace clipdissect {

namespace {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

}  // namespace

void log_inplace(float* data, std::size_t n) {
  if (n == 0) return;
  const dnnl::memory::desc md({static_cast<dnnl::memory::dim>(n)}, dnnl::memory::data_type::f32,
                              dnnl::memory::format_tag::a);
  dnnl::memory mem(md, cpu_engine(), data);
  const dnnl::eltwise_forward::primitive_desc pd(
      dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_log, md, 0.f, 0.f),
      cpu_engine());
  dnnl::stream stream(cpu_engine());
  dnnl::eltwise_forward(pd).execute(stream, {{DNNL_ARG_SRC, mem}, {DNNL_ARG_DST, mem}});
  stream.wait();
}

void scaled_softmax_rows(float* data, std::int64_t rows, std::int64_t cols, float scale) {
  if (rows == 0) return;
  const std::int64_t n = rows * cols;
#pragma omp parallel for
  for (std::int64_t i = 0; i < n; ++i) data[i] *= scale;  // a * clip_feats, a float32 product as in the reference
  const dnnl::memory::desc md({rows, cols}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab);
  dnnl::memory mem(md, cpu_engine(), data);
  const dnnl::softmax_forward::primitive_desc pd(
      dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, md, 1), cpu_engine());
  dnnl::stream stream(cpu_engine());
  dnnl::softmax_forward(pd).execute(stream, {{DNNL_ARG_SRC, mem}, {DNNL_ARG_DST, mem}});
  stream.wait();
}

void sgemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
           std::int64_t ldc) {
  const dnnl_status_t status = dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, alpha, a, lda,
                                          b, ldb, beta, c, ldc);
  if (status != dnnl_success)
    fail("sgemm of [{}, {}] x [{}, {}] failed: oneDNN status {}", m, k, k, n, static_cast<int>(status));
}

}  // namespace clipdissect
