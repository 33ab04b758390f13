#include "text/wordpiece_tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <fstream>

#include "clipdissect/error.h"
#include "io/json_file.h"
#include "text/text_normalize.h"

namespace clipdissect {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The character classes of the `tokenizers` library's BERT normaliser and pre-tokeniser.
bool in_categories(char32_t c, std::uint32_t mask) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & mask) != 0; }
// Rust's char::is_whitespace: the White_Space property (tab, newline and carriage return included).
bool is_whitespace(char32_t c) { return text::is_regex_space(c); }
// Category C (control, format, unassigned, private use, surrogate), except the whitespace controls.
bool is_control(char32_t c) { return c != U'\t' && c != U'\n' && c != U'\r' && in_categories(c, U_GC_C_MASK); }
bool is_ascii_punctuation(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
}
bool is_punctuation(char32_t c) { return is_ascii_punctuation(c) || in_categories(c, U_GC_P_MASK); }
// The CJK ideograph blocks BertNormalizer surrounds with spaces.
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::u32string clean_and_space(std::u32string_view text, const WordPieceTokenizer::Normalizer& n) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (n.clean_text) {
      if (c == 0 || c == 0xFFFD || is_control(c)) continue;
      if (is_whitespace(c)) c = U' ';
    }
    if (n.handle_chinese_chars && is_chinese_char(c)) {
      out += U' ';
      out += c;
      out += U' ';
    } else {
      out += c;
    }
  }
  return out;
}

// NFD, then every non-spacing mark (Mn) removed.
std::u32string strip_accents(std::u32string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfd = icu::Normalizer2::getNFDInstance(status);
  const icu::UnicodeString decomposed =
      U_SUCCESS(status) ? nfd->normalize(icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(text.data()),
                                                                       static_cast<std::int32_t>(text.size())),
                                         status)
                        : icu::UnicodeString();
  if (U_FAILURE(status)) fail("tokenizer: Unicode decomposition failed ({})", u_errorName(status));
  std::u32string out;
  for (std::int32_t i = 0; i < decomposed.length(); i = decomposed.moveIndex32(i, 1)) {
    const char32_t c = static_cast<char32_t>(decomposed.char32At(i));
    if (!in_categories(c, U_GC_MN_MASK)) out += c;
  }
  return out;
}

// Character by character, as Rust's char::to_lowercase (full mappings, no final-sigma context).
std::u32string lowercase_each(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] < 0x80)
      out += text[i] >= U'A' && text[i] <= U'Z' ? text[i] + (U'a' - U'A') : text[i];
    else
      out += text::python_lower(text.substr(i, 1));
  }
  return out;
}

// BertNormalizer: clean_text, handle_chinese_chars, strip_accents, lowercase, in that order.
std::u32string normalize(std::u32string_view text, const WordPieceTokenizer::Normalizer& n) {
  std::u32string out = clean_and_space(text, n);
  if (n.strip_accents.value_or(n.lowercase)) out = strip_accents(out);
  if (n.lowercase) out = lowercase_each(out);
  return out;
}

// ---- loading -------------------------------------------------------------------------------------------

// Highest max_input_chars_per_word accepted from a tokenizer.json: one word of 1000 characters took 7 s and
// of 2000 characters 30 s (Release, 2-core machine), so a hostile file plus one long line would hang a run.
constexpr std::size_t kMaxWordCharsLimit = 256;

std::int32_t vocab_id(const WordPieceTokenizer::Settings& s, const std::string& token, const char* role) {
  const auto it = s.vocab.find(token);
  if (it == s.vocab.end()) fail("{}: the {} token '{}' is not in the vocabulary", s.source, role, token);
  return it->second;
}

// The id of the first entry of a post-processor pair such as "cls": ["<s>", 0].
std::int32_t pair_id(const json& processor, const char* key, const std::string& source) {
  const json& pair = processor.at(key);
  if (!pair.is_array() || pair.size() != 2) fail("{}: post_processor.{} must be [token, id]", source, key);
  return pair[1].get<std::int32_t>();
}

// TemplateProcessing whose single-sequence template is [special, $A, special].
void read_template(const json& processor, WordPieceTokenizer::Settings& s) {
  const json& single = processor.at("single");
  if (!single.is_array() || single.size() != 3 || !single[0].contains("SpecialToken") ||
      !single[1].contains("Sequence") || !single[2].contains("SpecialToken"))
    fail("{}: post_processor template '{}' is not [start token, text, end token]", s.source, single.dump());
  const auto special_id = [&](const json& item) {
    const std::string name = item.at("SpecialToken").at("id").get<std::string>();
    const json& ids = processor.at("special_tokens").at(name).at("ids");
    if (!ids.is_array() || ids.size() != 1) fail("{}: special token '{}' must map to one id", s.source, name);
    return ids[0].get<std::int32_t>();
  };
  s.start_id = special_id(single[0]);
  s.end_id = special_id(single[2]);
}

void read_post_processor(const json& processor, WordPieceTokenizer::Settings& s) {
  const std::string type = processor.is_object() ? processor.value("type", "") : "";
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    s.start_id = pair_id(processor, "cls", s.source);
    s.end_id = pair_id(processor, "sep", s.source);
  } else if (type == "TemplateProcessing") {
    read_template(processor, s);
  } else {
    fail("{}: unsupported post_processor '{}' (expected RobertaProcessing, BertProcessing or TemplateProcessing)",
         s.source, processor.is_object() ? type : processor.dump());
  }
}

void read_normalizer(const json& normalizer, WordPieceTokenizer::Settings& s) {
  if (!normalizer.is_object() || normalizer.value("type", "") != "BertNormalizer")
    fail("{}: unsupported normalizer {} (expected BertNormalizer)", s.source, normalizer.dump());
  WordPieceTokenizer::Normalizer& n = s.normalizer;
  n.clean_text = normalizer.value("clean_text", true);
  n.handle_chinese_chars = normalizer.value("handle_chinese_chars", true);
  n.lowercase = normalizer.value("lowercase", true);
  if (const auto it = normalizer.find("strip_accents"); it != normalizer.end() && !it->is_null())
    n.strip_accents = it->get<bool>();
}

WordPieceTokenizer::Settings read_tokenizer_json(const fs::path& path) {
  const json root = read_json_object(path);
  return with_json_errors(path, [&] {
    WordPieceTokenizer::Settings s;
    s.source = path.string();
    const json& model = root.at("model");
    if (model.value("type", "") != "WordPiece")
      fail("{}: model type '{}' is not WordPiece", s.source, model.value("type", ""));
    for (const auto& [token, id] : model.at("vocab").items()) s.vocab.emplace(token, id.get<std::int32_t>());
    s.continuation_prefix = model.value("continuing_subword_prefix", "##");
    s.max_word_chars = model.value("max_input_chars_per_word", std::size_t{100});
    if (s.max_word_chars > kMaxWordCharsLimit)
      fail("{}: model.max_input_chars_per_word is {}, above the {} this tokenizer accepts (BERT and MPNet use 100; "
           "the longest-match search costs the cube of a word's length)",
           s.source, s.max_word_chars, kMaxWordCharsLimit);
    s.unk_id = vocab_id(s, model.at("unk_token").get<std::string>(), "unknown");
    read_normalizer(root.at("normalizer"), s);
    const json& pre = root.at("pre_tokenizer");
    if (!pre.is_object() || pre.value("type", "") != "BertPreTokenizer")
      fail("{}: unsupported pre_tokenizer {} (expected BertPreTokenizer)", s.source, pre.dump());
    read_post_processor(root.at("post_processor"), s);
    for (const json& token : root.value("added_tokens", json::array())) {
      const std::string content = token.at("content").get<std::string>();
      if (content.empty()) continue;
      s.added_tokens.push_back({text::utf8_to_utf32(content), token.at("id").get<std::int32_t>(),
                                token.value("lstrip", false), token.value("rstrip", false)});
    }
    return s;
  });
}

// A special token of tokenizer_config.json: a string, or {"content": ..., "lstrip": ..., "rstrip": ...}.
struct SpecialToken {
  std::string content;
  bool lstrip = false, rstrip = false;
};
SpecialToken special_token(const json& config, const char* key, SpecialToken fallback) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (it->is_string()) return {it->get<std::string>(), fallback.lstrip, fallback.rstrip};
  return {it->at("content").get<std::string>(), it->value("lstrip", false), it->value("rstrip", false)};
}

// vocab.txt (one token per line, the line number its id) with MPNetTokenizer's settings and defaults.
WordPieceTokenizer::Settings read_vocab_txt(const fs::path& folder) {
  WordPieceTokenizer::Settings s;
  const fs::path vocab_path = folder / "vocab.txt";
  s.source = vocab_path.string();
  std::ifstream in(vocab_path, std::ios::binary);
  if (!in) fail("{}: no tokenizer.json or vocab.txt in this folder", folder.string());
  std::string line;
  for (std::int32_t id = 0; std::getline(in, line); ++id)
    s.vocab[line] = id;  // a repeated line: the last id, as BERT's load_vocab
  const fs::path config_path = folder / "tokenizer_config.json";
  const json config = fs::exists(config_path) ? read_json_object(config_path) : json::object();
  with_json_errors(config_path, [&] {
    s.normalizer.lowercase = config.value("do_lower_case", true);
    s.normalizer.handle_chinese_chars = config.value("tokenize_chinese_chars", true);
    if (const auto it = config.find("strip_accents"); it != config.end() && !it->is_null())
      s.normalizer.strip_accents = it->get<bool>();
    const SpecialToken unk = special_token(config, "unk_token", {"[UNK]"});
    const SpecialToken start = special_token(config, "cls_token", {"<s>"});
    const SpecialToken end = special_token(config, "sep_token", {"</s>"});
    s.unk_id = vocab_id(s, unk.content, "unknown");
    s.start_id = vocab_id(s, start.content, "start (cls_token)");
    s.end_id = vocab_id(s, end.content, "end (sep_token)");
    const SpecialToken others[] = {special_token(config, "bos_token", {"<s>"}),
                                   special_token(config, "eos_token", {"</s>"}),
                                   special_token(config, "pad_token", {"<pad>"}),
                                   special_token(config, "mask_token", {"<mask>", true, false}),
                                   unk,
                                   start,
                                   end};
    for (const SpecialToken& token : others)
      if (const auto it = s.vocab.find(token.content); it != s.vocab.end() && !token.content.empty())
        s.added_tokens.push_back({text::utf8_to_utf32(token.content), it->second, token.lstrip, token.rstrip});
  });
  return s;
}

}  // namespace

WordPieceTokenizer WordPieceTokenizer::from_folder(const fs::path& folder) {
  if (!fs::is_directory(folder)) fail("{}: not a folder (expected a tokenizer folder)", folder.string());
  const fs::path json_path = folder / "tokenizer.json";
  return WordPieceTokenizer(fs::exists(json_path) ? read_tokenizer_json(json_path) : read_vocab_txt(folder));
}

std::optional<std::int32_t> WordPieceTokenizer::lookup(std::u32string_view piece, bool continuation) const {
  const std::string key = (continuation ? s_.continuation_prefix : std::string()) + text::utf32_to_utf8(piece);
  const auto it = s_.vocab.find(key);
  return it == s_.vocab.end() ? std::nullopt : std::optional(it->second);
}

// Greedy longest-match-first; a word with a part that matches nothing becomes one unknown token.
void WordPieceTokenizer::append_word_pieces(std::u32string_view word, std::vector<std::int32_t>& ids) const {
  if (word.size() > s_.max_word_chars) {
    ids.push_back(s_.unk_id);
    return;
  }
  std::vector<std::int32_t> pieces;
  for (std::size_t start = 0; start < word.size();) {
    std::size_t end = word.size();
    std::optional<std::int32_t> id;
    for (; end > start; --end)
      if ((id = lookup(word.substr(start, end - start), start > 0))) break;
    if (!id) {
      ids.push_back(s_.unk_id);
      return;
    }
    pieces.push_back(*id);
    start = end;
  }
  ids.insert(ids.end(), pieces.begin(), pieces.end());
}

// Normalised, split on whitespace (dropped) and punctuation (kept as one-character words), then WordPiece.
void WordPieceTokenizer::append_text_ids(std::u32string_view text, std::vector<std::int32_t>& ids) const {
  const std::u32string normalized = normalize(text, s_.normalizer);
  std::size_t word_start = 0;
  for (std::size_t i = 0; i <= normalized.size(); ++i) {
    const bool end = i == normalized.size();
    if (!end && !is_whitespace(normalized[i]) && !is_punctuation(normalized[i])) continue;
    if (i > word_start) append_word_pieces(std::u32string_view(normalized).substr(word_start, i - word_start), ids);
    if (!end && is_punctuation(normalized[i])) append_word_pieces(std::u32string_view(normalized).substr(i, 1), ids);
    word_start = i + 1;
  }
}

// The longest added token that starts at `pos`, if any (leftmost-longest matching).
const WordPieceTokenizer::AddedToken* WordPieceTokenizer::added_token_at(std::u32string_view text,
                                                                         std::size_t pos) const {
  const AddedToken* best = nullptr;
  for (const AddedToken& token : s_.added_tokens)
    if (text.substr(pos).starts_with(token.content) && (!best || token.content.size() > best->content.size()))
      best = &token;
  return best;
}

std::vector<std::int32_t> WordPieceTokenizer::tokenize(std::string_view utf8, std::size_t max_length) const {
  if (max_length < 2) fail("tokenizer: a maximum length of {} leaves no room for the start and end tokens", max_length);
  const std::u32string text = text::utf8_to_utf32(utf8);
  const std::u32string_view view(text);
  std::vector<std::int32_t> ids{s_.start_id};
  std::size_t segment = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    const AddedToken* token = added_token_at(view, pos);
    if (!token) {
      ++pos;
      continue;
    }
    std::size_t segment_end = pos;
    if (token->lstrip)
      while (segment_end > segment && is_whitespace(text[segment_end - 1])) --segment_end;
    append_text_ids(view.substr(segment, segment_end - segment), ids);
    ids.push_back(token->id);
    pos += token->content.size();
    if (token->rstrip)
      while (pos < text.size() && is_whitespace(text[pos])) ++pos;
    segment = pos;
  }
  append_text_ids(view.substr(segment), ids);
  if (ids.size() > max_length - 1) ids.resize(max_length - 1);
  ids.push_back(s_.end_id);
  return ids;
}

}  // namespace clipdissect
