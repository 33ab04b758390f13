#include "clipdissect/similarity.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <numeric>
#include <random>

#include "clipdissect/error.h"
#include "engine/vector_math.h"
#ifdef CLIPDISSECT_WITH_CUDA
#include "engine/cuda/weighted_pmi.h"
#endif

namespace clipdissect {

namespace {

constexpr std::int64_t kImageChunk = 64;      // image rows of the image-concept matrix at once (WPMI family)
constexpr std::int64_t kConceptBlock = 1024;  // concept columns at once (rank reorder, cos3 at most)
constexpr std::int64_t kTermValues = std::int64_t{8} << 20;  // log terms at once (WPMI family): 32 MB, about L3
// Scores at once (cos3: a block of P's columns over all images). Every block rereads all the activations in the
// product, so blocks are wide: 1024 columns up to 64,000 images.
constexpr std::int64_t kScoreValues = std::int64_t{64} << 20;

struct NamedFunction {
  std::string_view name;
  SimilarityFunction function;
};
constexpr NamedFunction kNames[] = {
    {"soft_wpmi", SimilarityFunction::SoftWpmi},     {"wpmi", SimilarityFunction::Wpmi},
    {"rank_reorder", SimilarityFunction::RankReorder}, {"cos", SimilarityFunction::Cos},
    {"cos3", SimilarityFunction::CosCubed},          {"cos_similarity", SimilarityFunction::Cos},
    {"cos_similarity_cubed", SimilarityFunction::CosCubed},
};

// Rows of x [rows, dim] divided by their L2 norms in float32, as `x /= x.norm(dim=-1, keepdim=True)`.
std::vector<float> normalized_rows(std::span<const float> x, std::int64_t rows, std::int64_t dim) {
  std::vector<float> out(x.begin(), x.end());
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = out.data() + r * dim;
    double sq = 0;
    for (std::int64_t i = 0; i < dim; ++i) sq += double(row[i]) * row[i];
    const float norm = static_cast<float>(std::sqrt(sq));
    for (std::int64_t i = 0; i < dim; ++i) row[i] /= norm;
  }
  return out;
}

// The image-concept matrix P = normalised images @ normalised texts^T (the reference's clip_feats),
// computed a block of rows (and optionally columns) at a time.
class ClipScores {
 public:
  explicit ClipScores(const SimilarityInputs& in)
      : images_(normalized_rows(in.image_embeddings, in.images, in.dim)),
        texts_(normalized_rows(in.text_embeddings, in.concepts, in.dim)),
        dim_(in.dim),
        concepts_(in.concepts) {}

  std::int64_t concepts() const { return concepts_; }
  std::int64_t image_count() const { return static_cast<std::int64_t>(images_.size()) / dim_; }
  std::span<const float> image(std::int32_t row) const { return std::span(images_).subspan(row * dim_, dim_); }
  std::span<const float> images() const { return images_; }
  std::span<const float> texts() const { return texts_; }

  // out[i, k - first] = P[rows[i], k] for k in [first, first + count).
  void rows(std::span<const std::int32_t> rows, std::int64_t first, std::int64_t count, float* out) const {
    std::vector<float> gathered(rows.size() * dim_);
    for (std::size_t i = 0; i < rows.size(); ++i)
      std::copy_n(images_.data() + rows[i] * dim_, dim_, gathered.data() + i * dim_);
    sgemm(false, true, static_cast<std::int64_t>(rows.size()), count, dim_, 1.f, gathered.data(), dim_,
          texts_.data() + first * dim_, dim_, 0.f, out, count);
  }

  // out[n, k - first] = P[n, k] for every image n and k in [first, first + count).
  void columns(std::int64_t first, std::int64_t count, float* out) const {
    sgemm(false, true, image_count(), count, dim_, 1.f, images_.data(), dim_, texts_.data() + first * dim_, dim_,
          0.f, out, count);
  }

  // Per concept k, the squared norm of P's column over all images: t_k^T G t_k with G = I^T I, summed in double
  // over image chunks so that it keeps float precision however many images there are.
  std::vector<double> column_square_norms() const {
    constexpr std::int64_t kChunk = 256;
    std::vector<double> gram(dim_ * dim_, 0.0);
    std::vector<float> part(dim_ * dim_);
    for (std::int64_t first = 0; first < image_count(); first += kChunk) {
      const std::int64_t rows = std::min(kChunk, image_count() - first);
      const float* chunk = images_.data() + first * dim_;
      sgemm(true, false, dim_, dim_, rows, 1.f, chunk, dim_, chunk, dim_, 0.f, part.data(), dim_);
      for (std::size_t i = 0; i < part.size(); ++i) gram[i] += part[i];
    }
    const std::vector<float> gram_float(gram.begin(), gram.end());
    std::vector<float> texts_gram(concepts_ * dim_);
    sgemm(false, false, concepts_, dim_, dim_, 1.f, texts_.data(), dim_, gram_float.data(), dim_, 0.f,
          texts_gram.data(), dim_);
    std::vector<double> out(concepts_, 0.0);
    for (std::int64_t k = 0; k < concepts_; ++k)
      for (std::int64_t d = 0; d < dim_; ++d) out[k] += double(texts_gram[k * dim_ + d]) * texts_[k * dim_ + d];
    return out;
  }

 private:
  std::vector<float> images_, texts_;
  std::int64_t dim_, concepts_;
};

void check_inputs(const SimilarityInputs& in) {
  if (in.images <= 0 || in.dim <= 0 || in.concepts <= 0 || in.neurons <= 0)
    fail("similarity: empty input ({} images, {} concepts, {} neurons, dimension {})", in.images, in.concepts,
         in.neurons, in.dim);
  if (static_cast<std::int64_t>(in.image_embeddings.size()) != in.images * in.dim ||
      static_cast<std::int64_t>(in.text_embeddings.size()) != in.concepts * in.dim ||
      static_cast<std::int64_t>(in.activations.size()) != in.images * in.neurons)
    fail("similarity: input sizes do not match {} images x {} dims, {} concepts, {} neurons", in.images, in.dim,
         in.concepts, in.neurons);
}

std::vector<std::vector<std::int32_t>> neuron_top_images(const SimilarityInputs& in, int k) {
  if (!in.top_images) return top_images(in.activations, in.images, in.neurons, k);
  if (static_cast<std::int64_t>(in.top_images->size()) != in.neurons)
    fail("similarity: top images given for {} neurons, expected {}", in.top_images->size(), in.neurons);
  std::vector<std::vector<std::int32_t>> tops;
  for (const auto& list : *in.top_images) {
    if (static_cast<int>(list.size()) < k) fail("similarity: {} top images given, {} needed", list.size(), k);
    for (std::int32_t image : list)
      if (image < 0 || image >= in.images) fail("similarity: top image {} outside {} images", image, in.images);
    tops.emplace_back(list.begin(), list.begin() + k);
  }
  return tops;
}

#ifdef CLIPDISSECT_WITH_CUDA
// weighted_pmi on CUDA GPU `device`, over the rows of the images in some top set (`needed`).
std::vector<float> weighted_pmi_on_gpu(const SimilarityInputs& in, const ClipScores& scores,
                                       const std::vector<std::vector<std::int32_t>>& tops,
                                       const std::vector<std::int32_t>& needed, int top_k, float a, float lambda,
                                       float min_prob, const std::vector<float>* membership, int device) {
  std::vector<float> images;
  std::vector<std::int32_t> row_of(in.images, -1), members;
  for (std::size_t i = 0; i < needed.size(); ++i) {
    const std::span<const float> image = scores.image(needed[i]);
    images.insert(images.end(), image.begin(), image.end());
    row_of[needed[i]] = static_cast<std::int32_t>(i);
  }
  for (const auto& list : tops)
    for (std::int32_t image : list) members.push_back(row_of[image]);
  cuda::WeightedPmiProblem problem{images, scores.texts(), static_cast<std::int64_t>(needed.size()), in.dim,
                                   in.concepts, in.neurons, top_k, members, {}, a, lambda, min_prob};
  if (membership) problem.membership = *membership;
  return cuda::weighted_pmi(problem, device);
}
#endif

// Per neuron: its (row in the image chunk, rank) pairs.
using ChunkMembers = std::vector<std::vector<std::pair<std::int32_t, std::int32_t>>>;

// log_p[c] += log(term) summed over neuron c's pairs in the chunk, for neurons [first, last): one row of K terms
// per pair, laid out neuron by neuron, then one vectorised log over all of them. The sums run in the same order
// whatever the grouping.
void add_log_terms(const float* chunk, std::int64_t k_count, const ChunkMembers& by_neuron, std::int64_t first,
                   std::int64_t last, const std::vector<float>* membership, float min_prob, std::vector<float>& terms,
                   std::vector<double>& log_p) {
  std::vector<std::int64_t> first_term(last - first + 1, 0);
  for (std::int64_t c = first; c < last; ++c)
    first_term[c - first + 1] = first_term[c - first] + static_cast<std::int64_t>(by_neuron[c].size());
  terms.resize(static_cast<std::size_t>(first_term.back() * k_count));
#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t c = first; c < last; ++c)
    for (std::size_t m = 0; m < by_neuron[c].size(); ++m) {
      const auto [row, j] = by_neuron[c][m];
      const float* s = chunk + static_cast<std::int64_t>(row) * k_count;
      float* t = terms.data() + (first_term[c - first] + static_cast<std::int64_t>(m)) * k_count;
      if (membership) {
        // 1 + p * (s - 1), then + min_prob: the reference's float32 operations in its order.
        const float p = (*membership)[j];
        for (std::int64_t k = 0; k < k_count; ++k) t[k] = 1.0f + p * (s[k] - 1.0f) + min_prob;
      } else {
        for (std::int64_t k = 0; k < k_count; ++k) t[k] = s[k] + min_prob;
      }
    }
  log_inplace(terms.data(), terms.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t c = first; c < last; ++c) {
    double* acc = log_p.data() + c * k_count;
    for (std::int64_t m = first_term[c - first]; m < first_term[c - first + 1]; ++m) {
      const float* t = terms.data() + m * k_count;
      for (std::int64_t k = 0; k < k_count; ++k) acc[k] += t[k];
    }
  }
}

// SoftWPMI and WPMI: log p(concept | top images of neuron) summed over the top images (weighted by
// rank membership p_j for SoftWPMI), minus lambda * log p(concept), where p(concept) averages over
// the layer's neurons (logsumexp).
std::vector<float> weighted_pmi(const SimilarityInputs& in, const ClipScores& scores, int top_k, float a,
                                float lambda, float min_prob, const std::vector<float>* membership,
                                const Device& device) {
  const std::int64_t c_count = in.neurons, k_count = in.concepts;
  const auto tops = neuron_top_images(in, top_k);

  // For every image in some neuron's top set: which neurons, at which rank.
  std::vector<std::vector<std::pair<std::int32_t, std::int32_t>>> members(in.images);
  for (std::int64_t c = 0; c < c_count; ++c)
    for (int j = 0; j < top_k; ++j) members[tops[c][j]].emplace_back(static_cast<std::int32_t>(c), j);
  std::vector<std::int32_t> needed;
  for (std::int64_t u = 0; u < in.images; ++u)
    if (!members[u].empty()) needed.push_back(static_cast<std::int32_t>(u));
  if (device.cuda) {
#ifdef CLIPDISSECT_WITH_CUDA
    return weighted_pmi_on_gpu(in, scores, tops, needed, top_k, a, lambda, min_prob, membership, device.index);
#else
    make_cuda_backend(device.index, Precision::F32);  // throws: this build has no CUDA
#endif
  }

  std::vector<double> log_p(c_count * k_count, 0.0);
  std::vector<float> chunk(kImageChunk * k_count), terms;
  ChunkMembers by_neuron(c_count);
  for (std::size_t start = 0; start < needed.size(); start += kImageChunk) {
    const auto rows = std::span<const std::int32_t>(needed).subspan(start, std::min<std::size_t>(kImageChunk, needed.size() - start));
    scores.rows(rows, 0, k_count, chunk.data());
    scaled_softmax_rows(chunk.data(), static_cast<std::int64_t>(rows.size()), k_count, a);
    for (auto& list : by_neuron) list.clear();
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (const auto& [c, j] : members[rows[i]]) by_neuron[c].emplace_back(static_cast<std::int32_t>(i), j);
    // Neurons in groups whose term rows fit the budget (a neuron has at most one row per image of the chunk).
    const std::int64_t group_rows = std::max(kImageChunk, kTermValues / std::max<std::int64_t>(k_count, 1));
    for (std::int64_t first = 0; first < c_count;) {
      std::int64_t last = first, group_size = 0;
      while (last < c_count && group_size + static_cast<std::int64_t>(by_neuron[last].size()) <= group_rows)
        group_size += static_cast<std::int64_t>(by_neuron[last++].size());
      add_log_terms(chunk.data(), k_count, by_neuron, first, last, membership, min_prob, terms, log_p);
      first = last;
    }
  }

  // log p(concept) = logsumexp over neurons - log C
  std::vector<double> log_prior(k_count);
  for (std::int64_t k = 0; k < k_count; ++k) {
    double max = -INFINITY;
    for (std::int64_t c = 0; c < c_count; ++c) max = std::max(max, log_p[c * k_count + k]);
    double sum = 0;
    for (std::int64_t c = 0; c < c_count; ++c) sum += std::exp(log_p[c * k_count + k] - max);
    log_prior[k] = max + std::log(sum) - std::log(static_cast<double>(c_count));
  }
  std::vector<float> out(c_count * k_count);
  for (std::int64_t c = 0; c < c_count; ++c)
    for (std::int64_t k = 0; k < k_count; ++k)
      out[c * k_count + k] = static_cast<float>(log_p[c * k_count + k] - lambda * log_prior[k]);
  return out;
}

// p_j = p_start - j / top_k * (p_start - p_end), in float32 as the reference's tensor arithmetic.
std::vector<float> membership_weights(int top_k, float p_start, float p_end) {
  const auto span = static_cast<float>(static_cast<double>(p_start) - static_cast<double>(p_end));
  std::vector<float> p(top_k);
  for (int j = 0; j < top_k; ++j) p[j] = p_start - static_cast<float>(j) / static_cast<float>(top_k) * span;
  return p;
}

// rows x columns at `x` (row stride `stride`): column j divided by divisor[j].
void divide_columns(float* x, std::int64_t rows, std::int64_t columns, std::int64_t stride,
                    std::span<const float> divisor) {
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < columns; ++j) x[i * stride + j] /= divisor[j];
}

// Activations [N, C] with each column transformed by `f` then divided by max(norm, min_norm); returns [N, C].
// Row by row (a column is a strided walk through memory); each column's sums still run over images in order.
template <typename Transform>
std::vector<float> normalized_columns(const SimilarityInputs& in, Transform f, float min_norm) {
  const std::int64_t n = in.images, c_count = in.neurons;
  std::vector<float> out(in.activations.begin(), in.activations.end());
  std::vector<double> sum(c_count, 0.0), sq(c_count, 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t c = 0; c < c_count; ++c) sum[c] += out[i * c_count + c];
  std::vector<float> mean(c_count);
  for (std::int64_t c = 0; c < c_count; ++c) mean[c] = static_cast<float>(sum[c] / n);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t c = 0; c < c_count; ++c) {
      float& v = out[i * c_count + c];
      v = f(v, mean[c]);
      sq[c] += double(v) * v;
    }
  std::vector<float> norm(c_count);
  for (std::int64_t c = 0; c < c_count; ++c) norm[c] = std::max(static_cast<float>(std::sqrt(sq[c])), min_norm);
  divide_columns(out.data(), n, c_count, c_count, norm);
  return out;
}

// cos: columns of P and of the activations normalised over images, then their dot products. P = I T^T (images
// times texts), so target^T P = (target^T I) T^T: N x C x D + C x D x K multiply-adds instead of N x K x (C + D),
// and P's column norms come from the Gram matrix I^T I without P ever being formed.
std::vector<float> cosine(const SimilarityInputs& in, const ClipScores& scores) {
  const std::int64_t c_count = in.neurons, k_count = in.concepts, dim = in.dim;
  const std::vector<float> target = normalized_columns(in, [](float v, float) { return v; }, 0.f);
  std::vector<float> target_images(c_count * dim);
  sgemm(true, false, c_count, dim, in.images, 1.f, target.data(), c_count, scores.images().data(), dim, 0.f,
        target_images.data(), dim);
  std::vector<float> dots(c_count * k_count);
  sgemm(false, true, c_count, k_count, dim, 1.f, target_images.data(), dim, scores.texts().data(), dim, 0.f,
        dots.data(), k_count);
  const std::vector<double> column_sq = scores.column_square_norms();
  std::vector<float> norm(k_count);
  for (std::int64_t k = 0; k < k_count; ++k) norm[k] = static_cast<float>(std::sqrt(column_sq[k]));
  divide_columns(dots.data(), c_count, k_count, k_count, norm);
  return dots;
}

// cos3: the same after centring each column and cubing it, norms clipped at min_norm. The cube is not linear, so
// P is formed, a block of concept columns over all images at a time (one pass: a block has its columns' means).
std::vector<float> cosine_cubed(const SimilarityInputs& in, const ClipScores& scores, float min_norm) {
  const std::int64_t n = in.images, c_count = in.neurons, k_count = in.concepts;
  const std::vector<float> target = normalized_columns(
      in, [](float v, float mean) { const float d = v - mean; return d * d * d; }, min_norm);
  const std::int64_t block = std::clamp<std::int64_t>(kScoreValues / n, 1, kConceptBlock);
  std::vector<float> x(n * block);
  std::vector<float> dots(c_count * k_count);
  for (std::int64_t first = 0; first < k_count; first += block) {
    const std::int64_t count = std::min(block, k_count - first);
    scores.columns(first, count, x.data());
    std::vector<double> mean(count, 0.0), sq(count, 0.0);
    std::vector<float> norm(count);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < count; ++k) mean[k] += x[i * count + k];
    for (double& m : mean) m /= static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < count; ++k) {
        float& v = x[i * count + k];
        const float d = v - static_cast<float>(mean[k]);
        v = d * d * d;
        sq[k] += double(v) * v;
      }
    // dots[:, first:first+count] = target^T @ x
    sgemm(true, false, c_count, count, n, 1.f, target.data(), c_count, x.data(), count, 0.f, dots.data() + first,
          k_count);
    for (std::int64_t k = 0; k < count; ++k) norm[k] = std::max(static_cast<float>(std::sqrt(sq[k])), min_norm);
    divide_columns(dots.data() + first, c_count, count, k_count, norm);
  }
  return dots;
}

// |x|^p, by multiplication for the integer powers (p = 3 by default): std::pow took a quarter of rank reorder.
double abs_power(double x, double p) {
  const double a = std::abs(x);
  if (p == 1) return a;
  if (p == 2) return a * a;
  if (p == 3) return a * a * a;
  return std::pow(a, p);
}

// A score as an unsigned integer with the same order (-0 counts as +0).
std::uint32_t sortable(float score) {
  const auto bits = std::bit_cast<std::uint32_t>(score + 0.0f);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// Positions 0..n-1 in ascending order of their keys, ties in position order: what std::stable_sort of the
// positions by key gives, from a least-significant-digit radix sort (stable by construction), a byte per pass;
// a byte every key shares (scores in a narrow range share the top ones) takes no pass.
void stable_order(std::span<const std::uint32_t> keys, std::vector<std::int32_t>& order,
                  std::vector<std::int32_t>& scratch) {
  const auto n = static_cast<std::int32_t>(keys.size());
  order.resize(n);
  scratch.resize(n);
  std::iota(order.begin(), order.end(), 0);
  for (int shift = 0; shift < 32; shift += 8) {
    std::array<std::int32_t, 257> start{};
    for (std::uint32_t key : keys) ++start[((key >> shift) & 0xff) + 1];
    if (std::find(start.begin() + 1, start.end(), n) != start.end()) continue;  // one byte value for all
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (std::int32_t position : order) scratch[start[(keys[position] >> shift) & 0xff]++] = position;
    order.swap(scratch);
  }
}

// rank reorder: how far reordering a neuron's top images by each concept's score moves their
// activations, relative to a random reordering and scaled by the concept's mean score; negated.
std::vector<float> rank_reorder(const SimilarityInputs& in, const ClipScores& scores, const SimilarityParams& params) {
  const std::int64_t c_count = in.neurons, k_count = in.concepts;
  const int top_n = static_cast<int>(static_cast<double>(in.images) * params.rank_top_fraction);
  if (top_n < 1) fail("rank_reorder: {} images give no top images at top_fraction {}", in.images, params.rank_top_fraction);
  const auto tops = neuron_top_images(in, top_n);
  std::vector<std::int32_t> needed;
  for (const auto& list : tops) needed.insert(needed.end(), list.begin(), list.end());
  std::sort(needed.begin(), needed.end());
  needed.erase(std::unique(needed.begin(), needed.end()), needed.end());
  std::vector<std::int32_t> row_of(in.images, -1);
  for (std::size_t i = 0; i < needed.size(); ++i) row_of[needed[i]] = static_cast<std::int32_t>(i);

  // Each neuron's top activations (descending), and the random baseline error.
  const double p = params.rank_p;
  std::vector<std::vector<double>> target(c_count);
  std::vector<double> baseline(c_count);
  std::mt19937 rng(params.rank_seed);
  for (std::int64_t c = 0; c < c_count; ++c) {
    for (std::int32_t image : tops[c]) target[c].push_back(in.activations[image * c_count + c]);
    std::vector<double> ascending(target[c].rbegin(), target[c].rend());
    double sum = 0;
    for (int round = 0; round < 5; ++round) {
      std::vector<double> shuffled = ascending;
      std::shuffle(shuffled.begin(), shuffled.end(), rng);
      for (int j = 0; j < top_n; ++j) sum += abs_power(ascending[j] - shuffled[j], p);
    }
    baseline[c] = sum / (5.0 * top_n);
  }

  std::vector<float> out(c_count * k_count);
  std::vector<float> block(needed.size() * kConceptBlock);
  // Concepts 16 at a time per neuron: one cache line of the block per top image, not one per image and concept.
  constexpr std::int64_t kConceptGroup = 16;
  for (std::int64_t first = 0; first < k_count; first += kConceptBlock) {
    const std::int64_t count = std::min(kConceptBlock, k_count - first);
    scores.rows(needed, first, count, block.data());
#pragma omp parallel for schedule(dynamic, 4)
    for (std::int64_t c = 0; c < c_count; ++c) {
      std::vector<float> group(top_n * kConceptGroup);
      std::vector<std::uint32_t> keys(top_n);
      std::vector<std::int32_t> order, scratch;
      for (std::int64_t k0 = 0; k0 < count; k0 += kConceptGroup) {
        const std::int64_t width = std::min(kConceptGroup, count - k0);
        for (int j = 0; j < top_n; ++j)
          std::copy_n(block.data() + row_of[tops[c][j]] * count + k0, width, group.data() + j * kConceptGroup);
        for (std::int64_t k = 0; k < width; ++k) {
          double mean_score = 0;
          for (int j = 0; j < top_n; ++j) {
            const float score = group[j * kConceptGroup + k];
            mean_score += score;
            keys[j] = sortable(score);
          }
          mean_score /= top_n;
          // Image j has score rank r (ascending); it is paired with the r-th smallest activation.
          stable_order(keys, order, scratch);
          double error = 0;
          for (int r = 0; r < top_n; ++r) error += abs_power(target[c][order[r]] - target[c][top_n - 1 - r], p);
          error /= top_n;
          out[c * k_count + first + k0 + k] =
              static_cast<float>(-(error / baseline[c]) / std::pow(mean_score, static_cast<double>(params.rank_scale_p)));
        }
      }
    }
  }
  return out;
}

}  // namespace

std::optional<SimilarityFunction> parse_similarity_function(std::string_view name) {
  for (const auto& entry : kNames)
    if (entry.name == name) return entry.function;
  return std::nullopt;
}

std::string_view similarity_function_name(SimilarityFunction function) {
  for (const auto& entry : kNames)
    if (entry.function == function) return entry.name;
  return "unknown";
}

std::vector<std::vector<std::int32_t>> top_images(std::span<const float> activations, std::int64_t images,
                                                  std::int64_t neurons, int k) {
  if (k > images) fail("similarity: top {} images requested but the probe set has only {}", k, images);
  if (k <= 0) return std::vector<std::vector<std::int32_t>>(neurons);
  // torch.topk's CPU selection (ATen's topk_impl_loop in torch 1.x): (value, index) pairs in image order,
  // std::partial_sort when k * 64 <= N, else std::nth_element then std::sort of the first k - 1; NaN counts
  // as the largest. Running the same standard algorithms on the same sequence reproduces its order of
  // tied activations, which SoftWPMI's rank weights and the layer-wide log p(concept) depend on.
  using Entry = std::pair<double, std::int64_t>;
  const auto above = [](const Entry& x, const Entry& y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
  };
  // Neurons go in blocks of a cache line of activations: one pass over the [images, neurons] rows copies a
  // block's columns out, instead of every neuron reading a whole cache line per image for one value.
  constexpr std::int64_t kNeuronBlock = 16;
  std::vector<std::vector<std::int32_t>> tops(neurons);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t first = 0; first < neurons; first += kNeuronBlock) {
    const std::int64_t width = std::min(kNeuronBlock, neurons - first);
    std::vector<float> columns(static_cast<std::size_t>(width * images));
    for (std::int64_t i = 0; i < images; ++i)
      for (std::int64_t j = 0; j < width; ++j) columns[j * images + i] = activations[i * neurons + first + j];
    std::vector<Entry> queue(images);
    for (std::int64_t j = 0; j < width; ++j) {
      for (std::int64_t i = 0; i < images; ++i) queue[i] = {columns[j * images + i], i};
      if (std::int64_t{k} * 64 <= images) {
        std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), above);
      } else {
        std::nth_element(queue.begin(), queue.begin() + k - 1, queue.end(), above);
        std::sort(queue.begin(), queue.begin() + k - 1, above);
      }
      for (int r = 0; r < k; ++r) tops[first + j].push_back(static_cast<std::int32_t>(queue[r].second));
    }
  }
  return tops;
}

int required_top_images(SimilarityFunction function, std::int64_t images, const SimilarityParams& params) {
  switch (function) {
    case SimilarityFunction::SoftWpmi: return params.soft_wpmi_top_k;
    case SimilarityFunction::Wpmi: return params.wpmi_top_k;
    case SimilarityFunction::RankReorder:
      return std::max(1, static_cast<int>(static_cast<double>(images) * params.rank_top_fraction));
    case SimilarityFunction::Cos:
    case SimilarityFunction::CosCubed: return 0;
  }
  return 0;
}

std::vector<float> compute_similarity(SimilarityFunction function, const SimilarityInputs& inputs,
                                      const SimilarityParams& params) {
  return compute_similarity(function, inputs, params, Device{});
}

std::vector<float> compute_similarity(SimilarityFunction function, const SimilarityInputs& inputs,
                                      const SimilarityParams& params, const Device& device) {
  check_inputs(inputs);
  const ClipScores scores(inputs);
  switch (function) {
    case SimilarityFunction::SoftWpmi: {
      const std::vector<float> p = membership_weights(params.soft_wpmi_top_k, params.p_start, params.p_end);
      return weighted_pmi(inputs, scores, params.soft_wpmi_top_k, params.soft_wpmi_a, params.soft_wpmi_lambda,
                          params.min_prob, &p, device);
    }
    case SimilarityFunction::Wpmi:
      return weighted_pmi(inputs, scores, params.wpmi_top_k, params.wpmi_a, params.wpmi_lambda, params.min_prob,
                          nullptr, device);
    case SimilarityFunction::RankReorder: return rank_reorder(inputs, scores, params);
    case SimilarityFunction::Cos: return cosine(inputs, scores);
    case SimilarityFunction::CosCubed: return cosine_cubed(inputs, scores, params.cos_cubed_min_norm);
  }
  fail("similarity: unknown function");
}

}  // namespace clipdissect
