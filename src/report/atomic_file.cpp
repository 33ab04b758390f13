#include "report/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "clipdissect/error.h"

namespace clipdissect {

void write_file_atomically(const std::filesystem::path& path, std::string_view content, bool sync) {
  const std::filesystem::path temp = path.string() + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot write: {}", path.string(), std::strerror(errno));
  std::size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      fail("{}: write failed: {}", path.string(), std::strerror(error));
    }
    written += static_cast<std::size_t>(n);
  }
  const bool synced = !sync || ::fsync(fd) == 0;
  const int error = errno;
  if (::close(fd) != 0 || !synced || ::rename(temp.c_str(), path.c_str()) != 0) {
    ::unlink(temp.c_str());
    fail("{}: cannot complete the write: {}", path.string(), std::strerror(synced ? errno : error));
  }
}

}  // namespace clipdissect
