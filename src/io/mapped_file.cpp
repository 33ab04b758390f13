#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "clipdissect/error.h"

namespace clipdissect::io {

namespace {
// Closes the descriptor on every path out of open(); the mapping outlives it.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() { ::close(fd); }
};
}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& path) {
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->name_ = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", file->name_, std::strerror(errno));
  FileDescriptor guard{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) fail("{}: cannot stat: {}", file->name_, std::strerror(errno));
  if (!S_ISREG(info.st_mode)) fail("{}: not a regular file", file->name_);
  const auto size = static_cast<std::size_t>(info.st_size);
  if (size == 0) return file;  // mmap rejects empty mappings; an empty span is what we want
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (mapping == MAP_FAILED) fail("{}: cannot memory-map {} bytes: {}", file->name_, size, std::strerror(errno));
  file->mapping_ = mapping;
  file->bytes_ = {static_cast<const std::byte*>(mapping), size};
  return file;
}

std::shared_ptr<const MappedFile> MappedFile::from_bytes(std::string name, std::vector<std::byte> bytes) {
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->name_ = std::move(name);
  file->owned_ = std::move(bytes);
  file->bytes_ = file->owned_;
  return file;
}

MappedFile::~MappedFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, bytes_.size());
}

}  // namespace clipdissect::io
