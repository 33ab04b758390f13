// OpenAI CLIP's byte-level BPE tokenizer, exactly as clip/simple_tokenizer.py and clip.tokenize.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace clipdissect {

inline constexpr std::int32_t kClipStartToken = 49406;
inline constexpr std::int32_t kClipEndToken = 49407;
inline constexpr int kClipContextLength = 77;

class ClipTokenizer {
 public:
  // Reads bpe_simple_vocab_16e6.txt.gz.
  static ClipTokenizer from_file(const std::filesystem::path& bpe_path);

  // BPE ids of the cleaned, lower-cased text, without start/end tokens.
  std::vector<std::int32_t> encode(std::string_view text) const;

  // [start] + encode(text) + [end], not padded. Longer than context_length: with truncate, the first
  // context_length ids with the last set to the end token; without, throws Error naming the text.
  std::vector<std::int32_t> tokenize(std::string_view text, bool truncate = false,
                                     int context_length = kClipContextLength) const;

  // tokenize() of every text (not truncated); an over-long text is an Error prefixed with item_name(index).
  std::vector<std::vector<std::int32_t>> tokenize_all(const std::vector<std::string>& texts,
                                                      const std::function<std::string(std::size_t)>& item_name) const;

  ~ClipTokenizer();
  ClipTokenizer(ClipTokenizer&&) noexcept;
  ClipTokenizer& operator=(ClipTokenizer&&) noexcept;

 private:
  struct Impl;
  explicit ClipTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The BPE vocabulary path: the explicit flag if given, else $CLIPDISSECT_BPE, else
// bpe_simple_vocab_16e6.txt.gz in the cache folder. Throws an Error that says how to get the file.
std::filesystem::path resolve_bpe_path(const std::optional<std::filesystem::path>& flag);

}  // namespace clipdissect
