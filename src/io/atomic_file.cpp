#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "clipdissect/error.h"

namespace clipdissect {

namespace {

// Writes all of `bytes`, retrying short writes.
void write_all(int fd, std::span<const std::byte> bytes, const std::string& path) {
  while (!bytes.empty()) {
    const ssize_t written = ::write(fd, bytes.data(), bytes.size());
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) fail("{}: write failed: {}", path, std::strerror(errno));
    bytes = bytes.subspan(static_cast<std::size_t>(written));
  }
}

// Makes a just-renamed file's directory entry durable.
void sync_directory(const std::filesystem::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the data itself is already synced
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_file_atomically(const std::filesystem::path& path, std::span<const std::span<const std::byte>> parts,
                           bool sync) {
  const std::string name = path.string();
  std::string temporary = (path.parent_path() / fmt::format(".{}.tmp-XXXXXX", path.filename().string())).string();
  const int fd = ::mkstemp(temporary.data());
  if (fd < 0) fail("{}: cannot create a temporary file next to it: {}", name, std::strerror(errno));
  try {
    ::fchmod(fd, 0644);  // mkstemp creates 0600; these are ordinary files
    for (std::span<const std::byte> part : parts) write_all(fd, part, name);
    if (sync && ::fsync(fd) != 0) fail("{}: fsync failed: {}", name, std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(temporary.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(temporary.c_str());
    fail("{}: close failed: {}", name, std::strerror(error));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temporary.c_str());
    fail("{}: cannot move the temporary file into place: {}", name, std::strerror(error));
  }
  if (sync) sync_directory(path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path());
}

void write_file_atomically(const std::filesystem::path& path, std::string_view content, bool sync) {
  const std::span<const std::byte> bytes = std::as_bytes(std::span(content));
  write_file_atomically(path, std::span(&bytes, 1), sync);
}

void check_writable_folder(const std::filesystem::path& folder, std::string_view role) {
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  if (error) fail("{} {}: cannot create the folder: {}", role, folder.string(), error.message());
  std::string probe = (folder / ".clipdissect-write-check-XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) fail("{} {}: cannot write in the folder: {}", role, folder.string(), std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace clipdissect
