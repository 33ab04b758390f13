// CLIP's text tower: token_embedding + positional_embedding -> causal transformer -> ln_final
//   -> the end token's features @ text_projection.
//
// The causal mask makes the end token's output depend only on the tokens before it, so each batch is
// computed only up to its longest sequence (sequences sorted by length), not all 77 positions: the
// result is the reference's, at a fraction of the work.
#include <algorithm>
#include <numeric>

#include "clipdissect/error.h"
#include "clipdissect/tokenizer.h"
#include "models/clip_towers.h"

namespace clipdissect {
namespace {
constexpr std::size_t kTextBatch = 64;
}

ClipTextTransformer::ClipTextTransformer(WeightBinder& w, Backend& backend, const ClipConfig& c)
    : backend_(backend),
      config_(c),
      token_embedding_(backend.upload(w.take("token_embedding.weight", {c.vocab_size, c.transformer_width}),
                                      {c.vocab_size, c.transformer_width})),
      positional_embedding_(backend.upload(w.take("positional_embedding", {c.context_length, c.transformer_width}),
                                           {c.context_length, c.transformer_width})),
      transformer_(w, backend, numbered_names("transformer.resblocks", c.transformer_layers), kClipBlockNames,
                   c.transformer_width, c.transformer_heads, c.layer_norm_eps, c.activation),
      ln_final_(w, backend, "ln_final", c.transformer_width, c.layer_norm_eps),
      text_projection_(projection_linear(w, backend, "text_projection", c.transformer_width, c.embed_dim)) {}

std::vector<float> ClipTextTransformer::encode(const std::vector<std::vector<std::int32_t>>& tokens) const {
  std::vector<std::size_t> order(tokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return tokens[a].size() < tokens[b].size(); });
  std::vector<float> out(tokens.size() * config_.embed_dim);
  for (std::size_t start = 0; start < order.size(); start += kTextBatch) {
    std::vector<const std::vector<std::int32_t>*> batch;
    for (std::size_t i = start; i < std::min(order.size(), start + kTextBatch); ++i) batch.push_back(&tokens[order[i]]);
    const std::vector<float> features = backend_.download(encode_batch(batch));
    for (std::size_t i = 0; i < batch.size(); ++i)
      std::copy_n(features.begin() + i * config_.embed_dim, config_.embed_dim,
                  out.begin() + order[start + i] * config_.embed_dim);
  }
  return out;
}

Tensor ClipTextTransformer::encode_batch(const std::vector<const std::vector<std::int32_t>*>& batch) const {
  std::size_t length = 0;
  for (const auto* sequence : batch) length = std::max(length, sequence->size());
  if (length == 0 || length > static_cast<std::size_t>(config_.context_length))
    fail("text of {} tokens does not fit the context length {}", length, config_.context_length);
  std::vector<std::int32_t> ids(batch.size() * length, 0);
  std::vector<std::int64_t> end_positions;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    std::copy(batch[i]->begin(), batch[i]->end(), ids.begin() + i * length);
    // encode_text reads text.argmax(-1): the first occurrence of the largest id (the end token).
    const auto end = std::max_element(batch[i]->begin(), batch[i]->end());
    end_positions.push_back(end - batch[i]->begin());
  }
  const auto n = static_cast<std::int64_t>(batch.size()), l = static_cast<std::int64_t>(length);
  Tensor x = backend_.add_positional(backend_.embedding(token_embedding_, ids, n, l), positional_embedding_);
  x = transformer_.forward(x, true, nullptr);
  // LayerNorm is per token, so normalising only the end tokens gives the reference's values.
  return text_projection_.forward(ln_final_.forward(backend_.select_tokens(x, end_positions)));
}

}  // namespace clipdissect
