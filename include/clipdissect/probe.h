// Probe sets: the images a dissection runs on, in the reference's order, loaded on demand.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "clipdissect/host_buffer.h"
#include "clipdissect/image.h"

namespace clipdissect {

// One kind of probe source (a folder of files, a CIFAR archive, ...).
class ProbeSource {
 public:
  virtual ~ProbeSource() = default;
  virtual std::size_t size() const = 0;
  // A name that identifies the image for people: its path, or "<archive>#<index>".
  virtual std::string name(std::size_t index) const = 0;
  // Decoded RGB (PIL's convert('RGB')); throws Error naming the image.
  virtual RgbImage load(std::size_t index) const = 0;
  // Text that changes whenever the images may have changed (paths, sizes, modification times).
  virtual std::string fingerprint() const = 0;
};

class ProbeSet {
 public:
  // One PATH of --probe: a folder with class sub-folders (torchvision ImageFolder order: classes sorted
  // byte-wise, each walked as sorted(os.walk())), a flat folder of images (sorted), a text file listing
  // image paths, a Broden folder (broden1_224: the images of its index.csv), or a CIFAR-100 split
  // (python release file `train`/`test`, binary release `train.bin`/`test.bin`, or a release folder
  // followed by ":train" or ":test").
  static ProbeSet open(const std::filesystem::path& path);
  // Several sets one after another (e.g. ImageNet val then Broden).
  static ProbeSet join(const std::vector<ProbeSet>& sets);

  std::size_t size() const { return offsets_.empty() ? 0 : offsets_.back(); }
  std::string name(std::size_t index) const;
  RgbImage load(std::size_t index) const;
  std::string fingerprint() const;

 private:
  std::pair<const ProbeSource*, std::size_t> locate(std::size_t index) const;

  std::vector<std::shared_ptr<const ProbeSource>> sources_;
  std::vector<std::size_t> offsets_;  // cumulative sizes
};

// Image files of a folder or list file in the order described for ProbeSet::open.
std::vector<std::filesystem::path> list_images(const std::filesystem::path& folder_or_list);

// True for the extensions torchvision's ImageFolder accepts (case-insensitive).
bool has_image_extension(const std::filesystem::path& path);

struct PreprocessedBatch {
  std::vector<HostBuffer> pixels;   // per preprocessing: [images.size(), 3, S, S]
  std::vector<std::size_t> images;  // probe indices of the images that decoded, in order
  std::vector<std::pair<std::size_t, std::string>> failures;  // probe index, error message
};

// Decodes images [first, first + count) of `probe` in parallel, each once, and applies every
// preprocessing to it, writing straight into buffers from `make_buffer` (Backend::host_buffer for a batch
// on its way to a backend). Images that fail to decode are reported in `failures`, not thrown.
PreprocessedBatch preprocess_batch(const ProbeSet& probe, std::size_t first, std::size_t count,
                                   std::span<const Preprocess> preprocesses,
                                   const MakeHostBuffer& make_buffer = HostBuffer::on_heap);

}  // namespace clipdissect
