// MPNet sentence embeddings, the all-mpnet-base-v2 pipeline of sentence-transformers: WordPiece tokens (cut at
// max_seq_length), transformers' MPNetModel, the mean of the last hidden states over the tokens, L2-normalised.
// Loaded from a transformers folder (config.json, model.safetensors or pytorch_model.bin, tokenizer.json or
// vocab.txt) or a sentence-transformers folder around one (modules.json: Transformer, mean Pooling, Normalize).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "clipdissect/backend.h"

namespace clipdissect {

struct MpnetConfig {
  int vocab_size = 0;
  int hidden_size = 0;
  int layers = 0;
  int heads = 0;
  int intermediate_size = 0;
  int max_position_embeddings = 0;
  int pad_token_id = 1;  // also the offset of the position ids
  int relative_attention_num_buckets = 32;
  float layer_norm_eps = 1e-12f;
  std::size_t max_seq_length = 384;  // tokens per text, start and end included
  bool normalize = true;             // L2-normalise the pooled embeddings (the Normalize module)
};

class MpnetModel {
 public:
  static std::unique_ptr<MpnetModel> load(Backend& backend, const std::filesystem::path& folder);
  ~MpnetModel();

  const MpnetConfig& config() const;
  // Input ids of one text: <s> ... </s>, at most max_seq_length.
  std::vector<std::int32_t> tokenize(std::string_view text) const;
  // Sentence embeddings [N, hidden_size], row-major, in input order.
  std::vector<float> encode(const std::vector<std::string>& texts);
  std::vector<float> encode_tokens(const std::vector<std::vector<std::int32_t>>& tokens);

  struct Impl;

 private:
  explicit MpnetModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// transformers' MPNetEncoder.relative_position_bucket (32 buckets, max_distance 128) of key position minus
// query position: the row of the relative attention bias table that the score of that pair gets.
int mpnet_relative_position_bucket(std::int64_t relative_position);

}  // namespace clipdissect
