// The BERT-style WordPiece tokenizer of Hugging Face folders (MPNet, BERT), as the `tokenizers` library runs
// it for all-mpnet-base-v2: special tokens split out of the raw text, BertNormalizer (control characters
// dropped, whitespace to spaces, CJK ideographs spaced, accents stripped, lower-cased), BertPreTokenizer
// (whitespace and punctuation), greedy longest-match-first WordPiece, then [start] ... [end].
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace clipdissect {

class WordPieceTokenizer {
 public:
  struct Normalizer {
    bool clean_text = true, handle_chinese_chars = true, lowercase = true;
    std::optional<bool> strip_accents;  // unset: strip when lower-casing, as BertNormalizer does
  };
  // A token matched in the raw text before normalisation (the `normalized: false` kind, which every MPNet and BERT
  // special token is); lstrip/rstrip swallow the whitespace beside it.
  struct AddedToken {
    std::u32string content;
    std::int32_t id = 0;
    bool lstrip = false, rstrip = false;
  };
  struct Settings {
    std::string source;  // the file the settings came from, for error messages
    std::unordered_map<std::string, std::int32_t> vocab;
    Normalizer normalizer;
    std::vector<AddedToken> added_tokens;
    std::string continuation_prefix = "##";
    std::size_t max_word_chars = 100;  // longer words become the unknown token
    std::int32_t unk_id = 0, start_id = 0, end_id = 0;
  };

  explicit WordPieceTokenizer(Settings settings) : s_(std::move(settings)) {}
  // tokenizer.json when the folder has one, else vocab.txt with tokenizer_config.json's settings.
  static WordPieceTokenizer from_folder(const std::filesystem::path& folder);

  // [start] + ids + [end], the ids cut first so that the whole fits `max_length` (truncation of one text).
  std::vector<std::int32_t> tokenize(std::string_view text, std::size_t max_length) const;

 private:
  void append_text_ids(std::u32string_view text, std::vector<std::int32_t>& ids) const;
  void append_word_pieces(std::u32string_view word, std::vector<std::int32_t>& ids) const;
  std::optional<std::int32_t> lookup(std::u32string_view piece, bool continuation) const;
  const AddedToken* added_token_at(std::u32string_view text, std::size_t pos) const;

  Settings s_;
};

}  // namespace clipdissect
