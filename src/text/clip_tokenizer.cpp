#include "clipdissect/tokenizer.h"

#include <array>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <zlib.h>

#include "clipdissect/error.h"
#include "clipdissect/paths.h"
#include "text/clip_pretokenize.h"
#include "text/text_normalize.h"

namespace clipdissect {
namespace {

// SimpleTokenizer keeps merges = lines[1:49152-256-2+1] (line 0 is a version header).
constexpr std::size_t kMergeCount = 49152 - 256 - 2;
// The real file is 1.3 MB once decompressed; anything far larger is not a BPE vocabulary.
constexpr std::size_t kMaxVocabularyBytes = std::size_t{64} << 20;
constexpr std::u32string_view kEndOfWord = U"</w>";
constexpr std::u32string_view kStartPiece = U"<|startoftext|>";
constexpr std::u32string_view kEndPiece = U"<|endoftext|>";
constexpr std::size_t kMaxQuotedCodePoints = 80;

using ByteSymbols = std::array<char32_t, 256>;

// bytes_to_unicode(): the character each byte stands for in BPE symbols. Printable Latin-1 bytes stand for
// themselves; the others, in byte order, for U+0100 onwards.
bool is_printable_latin1(int byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
}

ByteSymbols byte_symbols() {
  ByteSymbols symbols{};
  char32_t next_substitute = 0x100;
  for (int byte = 0; byte < 256; ++byte) {
    symbols[byte] = is_printable_latin1(byte) ? static_cast<char32_t>(byte) : next_substitute++;
  }
  return symbols;
}

// The bytes in the order of bytes_to_unicode()'s dict, which is the order of the first 256 vocabulary ids:
// printable bytes first, then the substituted ones.
std::array<std::uint8_t, 256> bytes_in_vocabulary_order() {
  std::array<std::uint8_t, 256> order{};
  std::size_t next = 0;
  for (bool printable : {true, false}) {
    for (int byte = 0; byte < 256; ++byte) {
      if (is_printable_latin1(byte) == printable) order[next++] = static_cast<std::uint8_t>(byte);
    }
  }
  return order;
}

std::string read_gzip_file(const std::filesystem::path& path) {
  std::unique_ptr<gzFile_s, decltype(&gzclose)> file(gzopen(path.c_str(), "rb"), &gzclose);
  if (!file) fail("cannot open the BPE vocabulary {}", path.string());
  std::string contents;
  std::array<char, 1 << 16> buffer{};
  int bytes_read = 0;
  while ((bytes_read = gzread(file.get(), buffer.data(), static_cast<unsigned>(buffer.size()))) > 0) {
    contents.append(buffer.data(), static_cast<std::size_t>(bytes_read));
    if (contents.size() > kMaxVocabularyBytes) {
      fail("BPE vocabulary {} decompresses to more than {} bytes; expected bpe_simple_vocab_16e6.txt.gz (1.3 MB)",
           path.string(), kMaxVocabularyBytes);
    }
  }
  int error_code = Z_OK;
  const char* message = gzerror(file.get(), &error_code);
  if (bytes_read < 0 || error_code != Z_OK) {
    fail("cannot read the BPE vocabulary {}: {} (a corrupt or truncated gzip file?)", path.string(), message);
  }
  return contents;
}

std::vector<std::u32string_view> split_on(std::u32string_view text, bool (*is_separator)(char32_t),
                                          bool keep_empty) {
  std::vector<std::u32string_view> parts;
  std::size_t start = 0;
  for (std::size_t pos = 0; pos <= text.size(); ++pos) {
    if (pos < text.size() && !is_separator(text[pos])) continue;
    if (keep_empty || pos > start) parts.push_back(text.substr(start, pos - start));
    start = pos + 1;
  }
  return parts;
}

bool is_line_feed(char32_t c) { return c == U'\n'; }

using MergePair = std::pair<std::u32string_view, std::u32string_view>;

// The merges as SimpleTokenizer reads them: split('\n'), lines[1 : kMergeCount + 1], each str.split() in two.
std::vector<MergePair> parse_merges(const std::filesystem::path& path, std::u32string_view contents) {
  const std::vector<std::u32string_view> lines = split_on(contents, is_line_feed, /*keep_empty=*/true);
  if (lines.size() < kMergeCount + 1) {
    fail("BPE vocabulary {}: {} lines, expected a header line then at least {} merge lines", path.string(),
         lines.size(), kMergeCount);
  }
  std::vector<MergePair> merges;
  merges.reserve(kMergeCount);
  for (std::size_t line = 1; line <= kMergeCount; ++line) {
    const std::vector<std::u32string_view> fields = split_on(lines[line], text::is_python_space, false);
    if (fields.size() != 2) {
      fail("BPE vocabulary {}: line {} has {} fields, expected two symbols separated by a space", path.string(),
           line + 1, fields.size());
    }
    merges.emplace_back(fields[0], fields[1]);
  }
  return merges;
}

std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

// Keeps the first kMaxQuotedCodePoints code points of a valid UTF-8 text, for error messages.
std::string shorten_for_message(std::string_view utf8) {
  const std::u32string code_points = text::utf8_to_utf32(utf8);
  if (code_points.size() <= kMaxQuotedCodePoints) return std::string(utf8);
  return text::utf32_to_utf8(std::u32string_view(code_points).substr(0, kMaxQuotedCodePoints)) + "...";
}

struct MergeRule {
  std::int32_t rank;
  std::int32_t merged_id;
};

}  // namespace

struct ClipTokenizer::Impl {
  std::array<std::int32_t, 256> byte_ids{};        // a byte that is not the last of its piece
  std::array<std::int32_t, 256> final_byte_ids{};  // the last byte of a piece: its symbol carries </w>
  std::unordered_map<std::uint64_t, MergeRule> merges;  // pair_key(left id, right id) -> rule
  std::int32_t start_id = 0;
  std::int32_t end_id = 0;
  // SimpleTokenizer.cache: BPE ids per piece, which makes repeated words cheap.
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::u32string, std::vector<std::int32_t>> cache;

  Impl(const std::filesystem::path& path, std::u32string_view contents);
  std::vector<std::int32_t> bpe(std::string_view piece_bytes) const;
  void merge_everywhere(std::vector<std::int32_t>& word, std::uint64_t key, std::int32_t merged_id) const;
  void append_piece_ids(std::u32string_view piece, std::vector<std::int32_t>& ids) const;
};

// The vocabulary is built as SimpleTokenizer does (byte symbols, the same with </w>, every merge joined, the two
// special pieces; a repeated string keeps its last id, as dict() does) and BPE then runs on ids: every symbol
// that can occur in a word is in the vocabulary, so merge pairs are looked up by the ids of their two halves.
ClipTokenizer::Impl::Impl(const std::filesystem::path& path, std::u32string_view contents) {
  const std::vector<MergePair> merge_pairs = parse_merges(path, contents);
  const ByteSymbols symbols = byte_symbols();
  const std::array<std::uint8_t, 256> byte_order = bytes_in_vocabulary_order();

  std::unordered_map<std::u32string, std::int32_t> encoder;
  std::int32_t next_id = 0;
  auto add = [&](std::u32string symbol) { encoder.insert_or_assign(std::move(symbol), next_id++); };
  for (std::uint8_t byte : byte_order) add(std::u32string(1, symbols[byte]));
  for (std::uint8_t byte : byte_order) add(symbols[byte] + std::u32string(kEndOfWord));
  for (const auto& [left, right] : merge_pairs) add(std::u32string(left) + std::u32string(right));
  add(std::u32string(kStartPiece));
  add(std::u32string(kEndPiece));

  for (int byte = 0; byte < 256; ++byte) {
    byte_ids[byte] = encoder.at(std::u32string(1, symbols[byte]));
    final_byte_ids[byte] = encoder.at(symbols[byte] + std::u32string(kEndOfWord));
  }
  for (std::size_t rank = 0; rank < merge_pairs.size(); ++rank) {
    const auto& [left, right] = merge_pairs[rank];
    const auto left_id = encoder.find(std::u32string(left));
    const auto right_id = encoder.find(std::u32string(right));
    if (left_id == encoder.end() || right_id == encoder.end()) continue;  // a pair that can never occur
    merges.insert_or_assign(pair_key(left_id->second, right_id->second),
                            MergeRule{static_cast<std::int32_t>(rank),
                                      encoder.at(std::u32string(left) + std::u32string(right))});
  }
  start_id = encoder.at(std::u32string(kStartPiece));
  end_id = encoder.at(std::u32string(kEndPiece));
}

// Replaces every non-overlapping occurrence of the pair, left to right, by the merged symbol.
void ClipTokenizer::Impl::merge_everywhere(std::vector<std::int32_t>& word, std::uint64_t key,
                                           std::int32_t merged_id) const {
  std::size_t out = 0;
  for (std::size_t in = 0; in < word.size(); ++out) {
    if (in + 1 < word.size() && pair_key(word[in], word[in + 1]) == key) {
      word[out] = merged_id;
      in += 2;
    } else {
      word[out] = word[in];
      in += 1;
    }
  }
  word.resize(out);
}

// SimpleTokenizer.bpe: repeatedly merge the adjacent pair with the lowest rank until none has one.
std::vector<std::int32_t> ClipTokenizer::Impl::bpe(std::string_view piece_bytes) const {
  std::vector<std::int32_t> word;
  word.reserve(piece_bytes.size());
  for (std::size_t i = 0; i < piece_bytes.size(); ++i) {
    const auto byte = static_cast<std::uint8_t>(piece_bytes[i]);
    word.push_back(i + 1 == piece_bytes.size() ? final_byte_ids[byte] : byte_ids[byte]);
  }
  while (word.size() > 1) {
    const MergeRule* best = nullptr;
    std::uint64_t best_key = 0;
    for (std::size_t i = 0; i + 1 < word.size(); ++i) {
      const std::uint64_t key = pair_key(word[i], word[i + 1]);
      const auto rule = merges.find(key);
      if (rule != merges.end() && (best == nullptr || rule->second.rank < best->rank)) {
        best = &rule->second;
        best_key = key;
      }
    }
    if (best == nullptr) break;
    merge_everywhere(word, best_key, best->merged_id);
  }
  return word;
}

void ClipTokenizer::Impl::append_piece_ids(std::u32string_view piece, std::vector<std::int32_t>& ids) const {
  // The reference seeds its cache with the two special pieces, so they map to their own ids.
  if (piece == kStartPiece) {
    ids.push_back(start_id);
    return;
  }
  if (piece == kEndPiece) {
    ids.push_back(end_id);
    return;
  }
  const std::u32string key(piece);
  {
    const std::lock_guard lock(cache_mutex);
    if (const auto cached = cache.find(key); cached != cache.end()) {
      ids.insert(ids.end(), cached->second.begin(), cached->second.end());
      return;
    }
  }
  std::vector<std::int32_t> piece_ids = bpe(text::utf32_to_utf8(piece));
  ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  const std::lock_guard lock(cache_mutex);
  cache.emplace(key, std::move(piece_ids));
}

ClipTokenizer ClipTokenizer::from_file(const std::filesystem::path& bpe_path) {
  const std::string bytes = read_gzip_file(bpe_path);
  std::u32string contents;
  try {
    contents = text::utf8_to_utf32(bytes);
  } catch (const Error& error) {
    fail("BPE vocabulary {}: {}", bpe_path.string(), error.what());
  }
  return ClipTokenizer(std::make_unique<Impl>(bpe_path, contents));
}

std::vector<std::int32_t> ClipTokenizer::encode(std::string_view text) const {
  const std::u32string cleaned = text::clip_clean_text(text);
  std::vector<std::int32_t> ids;
  for (std::u32string_view piece : text::clip_pre_tokenize(cleaned)) impl_->append_piece_ids(piece, ids);
  return ids;
}

std::vector<std::vector<std::int32_t>> ClipTokenizer::tokenize_all(
    const std::vector<std::string>& texts, const std::function<std::string(std::size_t)>& item_name) const {
  std::vector<std::vector<std::int32_t>> tokens;
  tokens.reserve(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    try {
      tokens.push_back(tokenize(texts[i]));
    } catch (const Error& e) {
      fail("{}: {}", item_name(i), e.what());
    }
  }
  return tokens;
}

std::vector<std::int32_t> ClipTokenizer::tokenize(std::string_view text, bool truncate, int context_length) const {
  if (context_length < 1) fail("context length {} for tokenizing: expected at least 1", context_length);
  std::vector<std::int32_t> ids{impl_->start_id};
  const std::vector<std::int32_t> body = encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(impl_->end_id);
  const auto limit = static_cast<std::size_t>(context_length);
  if (ids.size() <= limit) return ids;
  if (!truncate) {
    fail("Input \"{}\" is too long for context length {}: it has {} tokens with start and end; request "
         "truncation to keep the first {}",
         shorten_for_message(text), context_length, ids.size(), context_length);
  }
  ids.resize(limit);
  ids.back() = impl_->end_id;
  return ids;
}

ClipTokenizer::ClipTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClipTokenizer::~ClipTokenizer() = default;
ClipTokenizer::ClipTokenizer(ClipTokenizer&&) noexcept = default;
ClipTokenizer& ClipTokenizer::operator=(ClipTokenizer&&) noexcept = default;

namespace {

constexpr std::string_view kBpeFileName = "bpe_simple_vocab_16e6.txt.gz";
constexpr std::string_view kHowToGetBpe =
    "it ships in OpenAI's CLIP repository as clip/bpe_simple_vocab_16e6.txt.gz (`clipdissect download "
    "bpe_simple_vocab_16e6.txt.gz` fetches it into the cache); pass --bpe FILE or set "
    "CLIPDISSECT_BPE";

bool is_existing_file(const std::filesystem::path& path) {
  std::error_code error;
  return std::filesystem::is_regular_file(path, error);
}

}  // namespace

std::filesystem::path resolve_bpe_path(const std::optional<std::filesystem::path>& flag) {
  if (flag) {
    if (!is_existing_file(*flag)) fail("BPE vocabulary {} (given with --bpe) is not a file", flag->string());
    return *flag;
  }
  if (const char* env = std::getenv("CLIPDISSECT_BPE"); env != nullptr && *env != '\0') {
    if (!is_existing_file(env)) fail("BPE vocabulary {} (from $CLIPDISSECT_BPE) is not a file", env);
    return env;
  }
  std::filesystem::path cached;
  try {
    cached = default_cache_dir() / kBpeFileName;
  } catch (const Error& error) {
    fail("no BPE vocabulary: --bpe not given, CLIPDISSECT_BPE not set, and {}; {}", error.what(), kHowToGetBpe);
  }
  if (!is_existing_file(cached)) {
    fail("no BPE vocabulary: --bpe not given, CLIPDISSECT_BPE not set, and {} does not exist; {}", cached.string(),
         kHowToGetBpe);
  }
  return cached;
}

}  // namespace clipdissect
