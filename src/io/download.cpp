// HTTP(S) downloads with libcurl: resume into "<destination>.part", SHA-256 check with OpenSSL, atomic rename.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <system_error>
#include <vector>

#include <curl/curl.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include "clipdissect/download.h"
#include "clipdissect/error.h"
#include "io/sha256.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;

constexpr long kMaxRedirects = 10;
constexpr long kHttpPartialContent = 206;
constexpr long kHttpRangeNotSatisfiable = 416;

// --- Hashes ---------------------------------------------------------------------------------------------------------

// The expected digest in lower case; it must be 1 to 64 hex digits (a prefix is allowed) or empty.
std::string normalized_sha256(const std::string& expected, const std::string& url) {
  std::string lower = expected;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  const bool hex = std::all_of(lower.begin(), lower.end(), [](unsigned char c) { return std::isxdigit(c); });
  if (!hex || lower.size() > 64) fail("expected SHA-256 '{}' for {} is not 1 to 64 hex digits", expected, url);
  return lower;
}

// --- One HTTP transfer ----------------------------------------------------------------------------------------------

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

// What the callbacks of one transfer share.
struct Transfer {
  CURL* curl;
  fs::path part;
  std::uint64_t requested_offset;  // bytes asked to skip with a Range request
  const DownloadProgress* progress;
  std::unique_ptr<std::FILE, FileCloser> file{};  // opened once the response status is known
  std::uint64_t file_start = 0;                   // bytes already in the file before this response's body
  std::optional<std::uint64_t> content_range_start{};
  long status = 0;
  std::string write_error{};  // why the body could not be stored
  std::exception_ptr callback_error{};  // thrown by the progress callback, rethrown once libcurl returns
};

// Opens the .part file for the body of a successful response: a 206 continues it, any other success (a server that
// ignored the Range header) replaces it. Error pages never reach the file.
bool open_part(Transfer& transfer) {
  curl_easy_getinfo(transfer.curl, CURLINFO_RESPONSE_CODE, &transfer.status);
  if (transfer.status >= 400) return false;
  const bool continues = transfer.status == kHttpPartialContent;
  if (continues && transfer.content_range_start.value_or(0) != transfer.requested_offset) {
    transfer.write_error = fmt::format("the server sent a range starting at byte {} instead of {}",
                                       transfer.content_range_start.value_or(0), transfer.requested_offset);
    return false;
  }
  transfer.file.reset(std::fopen(transfer.part.c_str(), continues ? "ab" : "wb"));
  if (!transfer.file) {
    transfer.write_error = fmt::format("cannot open {}: {}", transfer.part.string(), std::strerror(errno));
    return false;
  }
  transfer.file_start = continues ? transfer.requested_offset : 0;
  return true;
}

// Returning fewer bytes than given makes libcurl abort the transfer.
std::size_t write_body(char* data, std::size_t size, std::size_t count, void* user) {
  auto& transfer = *static_cast<Transfer*>(user);
  if (!transfer.file && !open_part(transfer)) return 0;
  const std::size_t written = std::fwrite(data, 1, size * count, transfer.file.get());
  if (written != size * count)
    transfer.write_error = fmt::format("cannot write {}: {}", transfer.part.string(), std::strerror(errno));
  return written;
}

// Records where a 206 body starts ("Content-Range: bytes START-END/TOTAL"); each response of a redirect chain
// resets it.
std::size_t read_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto& transfer = *static_cast<Transfer*>(user);
  std::string line(data, size * count);
  std::transform(line.begin(), line.end(), line.begin(), [](unsigned char c) { return std::tolower(c); });
  if (line.starts_with("http/")) transfer.content_range_start.reset();
  constexpr std::string_view kContentRange = "content-range: bytes ";
  if (line.starts_with(kContentRange)) {
    const char* digits = line.data() + kContentRange.size();
    std::uint64_t start = 0;
    const auto [end, error] = std::from_chars(digits, line.data() + line.size(), start);
    if (error == std::errc() && end != digits) transfer.content_range_start = start;
  }
  return size * count;
}

int report_progress(void* user, curl_off_t total, curl_off_t now, curl_off_t, curl_off_t) {
  auto& transfer = *static_cast<Transfer*>(user);
  if (!*transfer.progress || !transfer.file) return 0;
  try {
    const std::uint64_t start = transfer.file_start;
    (*transfer.progress)(start + static_cast<std::uint64_t>(now),
                         total > 0 ? start + static_cast<std::uint64_t>(total) : 0);
  } catch (...) {
    transfer.callback_error = std::current_exception();
    return 1;  // aborts the transfer
  }
  return 0;
}

void initialize_curl_once() {
  static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (code != CURLE_OK) fail("libcurl cannot start: {}", curl_easy_strerror(code));
}

void configure(CURL* curl, const std::string& url, Transfer& transfer, const DownloadOptions& options,
               char* error_buffer) {
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, kMaxRedirects);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM, safe in threads
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, options.connect_timeout_s);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, options.low_speed_bytes_per_s);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, options.low_speed_time_s);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "clipdissect/" CLIPDISSECT_VERSION);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, read_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, report_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &transfer);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
}

void flush_to_disk(std::FILE* file, const fs::path& path) {
  if (std::fflush(file) != 0 || ::fsync(::fileno(file)) != 0)
    fail("cannot write {} to disk: {}", path.string(), std::strerror(errno));
}

enum class FetchResult { complete, range_not_satisfiable };

// Fetches url into part, continuing from the part's current size; on success the part is on disk.
FetchResult fetch(const std::string& url, const fs::path& part, const DownloadOptions& options) {
  std::error_code size_error;
  const std::uint64_t offset = fs::exists(part, size_error) ? fs::file_size(part, size_error) : 0;
  if (size_error) fail("cannot read the size of {}: {}", part.string(), size_error.message());

  initialize_curl_once();
  const std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
  if (!curl) fail("libcurl cannot create a transfer for {}", url);
  Transfer transfer{.curl = curl.get(), .part = part, .requested_offset = offset, .progress = &options.progress};
  char error_buffer[CURL_ERROR_SIZE] = {};
  configure(curl.get(), url, transfer, options, error_buffer);
  const std::string range = fmt::format("{}-", offset);
  if (offset > 0) curl_easy_setopt(curl.get(), CURLOPT_RANGE, range.c_str());

  const CURLcode code = curl_easy_perform(curl.get());
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &transfer.status);
  if (transfer.callback_error) std::rethrow_exception(transfer.callback_error);
  // The whole .part already arrived in an earlier call.
  if (transfer.status == kHttpRangeNotSatisfiable && offset > 0) return FetchResult::range_not_satisfiable;
  if (transfer.status >= 400) fail("download of {} failed: the server answered HTTP {}", url, transfer.status);
  if (!transfer.write_error.empty()) fail("download of {} failed: {}", url, transfer.write_error);
  if (code != CURLE_OK) {
    const std::string reason = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(code);
    const std::string stalled = code == CURLE_OPERATION_TIMEDOUT ? " (the server stalled)" : "";
    const std::string kept = transfer.file ? fmt::format("; {} keeps what arrived, run again to resume", part.string())
                                           : "";
    fail("download of {} failed: {}{}{}", url, reason, stalled, kept);
  }
  // An empty body never opened the file.
  if (!transfer.file && !open_part(transfer)) fail("download of {} failed: {}", url, transfer.write_error);
  flush_to_disk(transfer.file.get(), part);
  return FetchResult::complete;
}

void check_sha256(const fs::path& part, const fs::path& destination, const std::string& url,
                  const std::string& expected) {
  if (expected.empty()) return;
  const std::string actual = sha256_file(part);
  if (actual.starts_with(expected)) return;
  std::error_code ignored;
  fs::remove(part, ignored);
  fail("download of {} from {} is corrupt: SHA-256 {}, expected {}{}; the downloaded data was deleted, run again "
       "to retry",
       destination.string(), url, actual, expected, expected.size() < 64 ? " (prefix)" : "");
}

// Makes a completed rename survive a crash.
void flush_folder(const fs::path& folder) {
  const int descriptor = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (descriptor < 0) return;  // best effort: the file itself is already on disk
  ::fsync(descriptor);
  ::close(descriptor);
}

}  // namespace

void download_file(const std::string& url, const fs::path& destination, const DownloadOptions& options) {
  const std::string expected = normalized_sha256(options.sha256, url);
  const fs::path part = fs::path(destination) += ".part";
  std::error_code error;
  if (destination.has_parent_path()) fs::create_directories(destination.parent_path(), error);
  if (error) fail("cannot create the folder {}: {}", destination.parent_path().string(), error.message());

  if (fetch(url, part, options) == FetchResult::range_not_satisfiable) {
    // The server has no bytes past the .part: it is complete if its hash says so, else start over.
    const bool complete_part = !expected.empty() && sha256_file(part).starts_with(expected);
    if (!complete_part) {
      fs::remove(part, error);
      fetch(url, part, options);
    }
  }
  check_sha256(part, destination, url, expected);
  fs::rename(part, destination, error);
  if (error) fail("cannot rename {} to {}: {}", part.string(), destination.string(), error.message());
  flush_folder(destination.parent_path());
}

}  // namespace clipdissect
