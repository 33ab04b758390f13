#include "fuzz_targets.h"
#include "io/zip_archive.h"

namespace clipdissect::fuzz {

// Reads every entry, each on its own, so that a corrupt entry does not hide the others.
void zip_archive(Bytes data) {
  const io::ZipArchive zip(as_file("fuzz.zip", data));
  for (const io::ZipEntry& entry : zip.entries()) {
    if (zip.find(entry.name) != &entry) throw std::logic_error("zip index does not find entry " + entry.name);
    try_reader([&] {
      const io::EntryData contents = zip.read(entry);
      if (contents.bytes.size() != entry.uncompressed_size)
        throw std::logic_error("zip entry " + entry.name + " read with a size other than its declared one");
    });
  }
}

}  // namespace clipdissect::fuzz
