// Files clipdissect knows by name (CLIP models, target networks, data sets, concept sets, the BPE vocabulary) and
// an HTTP(S) downloader with resume, SHA-256 verification and atomic completion.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace clipdissect {

enum class NamedFileKind { clip_model, target_model, dataset, concept_set, vocabulary };

// "CLIP model", "target model", ...
std::string_view kind_description(NamedFileKind kind);

// A file users can ask for by name; it is downloaded into the cache folder under file_name.
struct NamedFile {
  std::string_view name;       // what users type, e.g. "ViT-B/16"
  NamedFileKind kind;
  std::string_view url;
  std::string_view file_name;  // in the cache folder
  std::string_view sha256;     // lower-case hex: all 64 digits, a prefix, or empty when the source publishes none
};

// Every named file, in a fixed order (CLIP models first, by OpenAI's list).
std::span<const NamedFile> named_files();

// The entry called exactly `name`, if any.
std::optional<NamedFile> find_named_file(std::string_view name);

// Where the named file lives: default_cache_dir() / file_name.
std::filesystem::path cached_path(const NamedFile& file);

// An existing path is returned as is; a known name gives its cached file, downloaded first when allow_download is
// set and the file is missing. Otherwise throws an Error saying what is missing, where it was looked for, its URL and
// how to supply it (by path, or with `clipdissect download NAME`).
std::filesystem::path resolve_named_or_path(std::string_view name_or_path, bool allow_download);

// Downloads a named file into the cache with a progress bar on stderr (drawn only on a terminal and unless quiet);
// returns its path.
std::filesystem::path download_named_file(const NamedFile& file, bool quiet = false);

// Bytes of the file present so far (resumed bytes included) and the full size (0 while unknown).
using DownloadProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct DownloadOptions {
  std::string sha256;  // expected hex digest of the whole file, or a prefix of it; empty: not checked
  DownloadProgress progress;
  long connect_timeout_s = 30;
  // A transfer slower than low_speed_bytes_per_s for low_speed_time_s seconds is abandoned (stalled server).
  long low_speed_bytes_per_s = 1024;
  long low_speed_time_s = 60;
};

// Downloads url (http or https, redirects followed) to destination. Data goes to "<destination>.part"; an existing
// .part is resumed with a Range request (started over when the server ignores the range). The complete file is
// checked against options.sha256 (a mismatching .part is deleted), flushed to disk and only then renamed to
// destination. Throws Error on HTTP errors, network failures, stalls and hash mismatches; an interrupted transfer
// keeps its .part so that the next call resumes it.
void download_file(const std::string& url, const std::filesystem::path& destination, const DownloadOptions& options);

}  // namespace clipdissect
