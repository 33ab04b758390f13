// The files users can name instead of giving a path, and where each comes from.
#include <algorithm>
#include <array>
#include <system_error>

#include <fmt/format.h>

#include "clipdissect/download.h"
#include "clipdissect/error.h"
#include "clipdissect/paths.h"
#include "clipdissect/progress.h"

namespace clipdissect {
namespace {

using enum NamedFileKind;

// CLIP: OpenAI's clip/clip.py _MODELS; the folder before the file name is the file's SHA-256, which clip.py checks.
// torchvision: the file name carries the first 8 hex digits of the SHA-256, which torch.hub checks.
// The BPE vocabulary's SHA-256 is that of OpenAI's file; 20k.txt's is that of the reference's data/20k.txt.
// The Places365 network and Broden publish no hash.
constexpr std::array kNamedFiles{
    NamedFile{"RN50", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
              "RN50.pt", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"},
    NamedFile{"RN101", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
              "RN101.pt", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"},
    NamedFile{"RN50x4", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
              "RN50x4.pt", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"},
    NamedFile{"RN50x16", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
              "RN50x16.pt", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"},
    NamedFile{"RN50x64", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
              "RN50x64.pt", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"},
    NamedFile{"ViT-B/32", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
              "ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"},
    NamedFile{"ViT-B/16", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
              "ViT-B-16.pt", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"},
    NamedFile{"ViT-L/14", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
              "ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"},
    NamedFile{"ViT-L/14@336px", clip_model,
              "https://openaipublic.azureedge.net/clip/models/"
              "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
              "ViT-L-14-336px.pt", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"},
    NamedFile{"resnet50", target_model, "https://download.pytorch.org/models/resnet50-0676ba61.pth",
              "resnet50-0676ba61.pth", "0676ba61"},
    NamedFile{"resnet18_places365", target_model,
              "http://places2.csail.mit.edu/models_places365/resnet18_places365.pth.tar", "resnet18_places365.pth.tar",
              ""},
    NamedFile{"broden1_224", dataset, "http://netdissect.csail.mit.edu/data/broden1_224.zip", "broden1_224.zip", ""},
    NamedFile{"20k", concept_set, "https://raw.githubusercontent.com/Trustworthy-ML-Lab/CLIP-dissect/main/data/20k.txt",
              "20k.txt", "4ed6e5336d7760d281f7e72df31827da880c861363e820d8c65666b0f10d9ac0"},
    NamedFile{"bpe_simple_vocab_16e6.txt.gz", vocabulary,
              "https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz",
              "bpe_simple_vocab_16e6.txt.gz", "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"},
};

// The command-line option that takes such a file by path; empty when there is none.
std::string_view path_option(NamedFileKind kind) {
  switch (kind) {
    case clip_model: return "--clip";
    case target_model: return "--target";
    case concept_set: return "--concepts";
    case vocabulary: return "--bpe";
    case dataset: return "";
  }
  return "";
}

std::string known_names() {
  std::string names;
  for (const NamedFile& file : kNamedFiles) names += fmt::format("{}{}", names.empty() ? "" : ", ", file.name);
  return names;
}

[[noreturn]] void fail_missing(const NamedFile& file, const std::filesystem::path& path) {
  const std::string_view option = path_option(file.kind);
  const std::string by_path = option.empty() ? "pass the path of your own copy instead"
                                             : fmt::format("pass your own copy by path (e.g. `{} /path/to/{}`)",
                                                           option, file.file_name);
  fail("{} {} is not in the cache: {} does not exist (the cache folder is $CLIPDISSECT_CACHE, else "
       "$XDG_CACHE_HOME/clipdissect, else ~/.cache/clipdissect). Fetch it with `clipdissect download {}` (from {}), "
       "or {}",
       kind_description(file.kind), file.name, path.string(), file.name, file.url, by_path);
}

}  // namespace

std::string_view kind_description(NamedFileKind kind) {
  switch (kind) {
    case clip_model: return "CLIP model";
    case target_model: return "target model";
    case dataset: return "data set";
    case concept_set: return "concept set";
    case vocabulary: return "BPE vocabulary";
  }
  return "file";
}

std::span<const NamedFile> named_files() { return kNamedFiles; }

std::optional<NamedFile> find_named_file(std::string_view name) {
  const auto found = std::find_if(kNamedFiles.begin(), kNamedFiles.end(),
                                  [&](const NamedFile& file) { return file.name == name; });
  if (found == kNamedFiles.end()) return std::nullopt;
  return *found;
}

std::filesystem::path cached_path(const NamedFile& file) { return default_cache_dir() / file.file_name; }

std::filesystem::path resolve_named_or_path(std::string_view name_or_path, bool allow_download) {
  const std::filesystem::path as_path(name_or_path);
  std::error_code error;
  if (std::filesystem::exists(as_path, error)) return as_path;
  const std::optional<NamedFile> file = find_named_file(name_or_path);
  if (!file) fail("{} is neither an existing path nor a known name ({})", name_or_path, known_names());
  const std::filesystem::path cached = cached_path(*file);
  if (std::filesystem::is_regular_file(cached, error)) return cached;
  if (!allow_download) fail_missing(*file, cached);
  return download_named_file(*file);
}

std::filesystem::path download_named_file(const NamedFile& file, bool quiet) {
  const std::filesystem::path destination = cached_path(file);
  ProgressBar bar(fmt::format("{} {}", kind_description(file.kind), file.name), 0, ProgressUnit::bytes, quiet);
  DownloadOptions options;
  options.sha256 = file.sha256;
  options.progress = [&bar](std::uint64_t done, std::uint64_t total) {
    bar.set_total(total);
    bar.update(done);
  };
  download_file(std::string(file.url), destination, options);
  bar.finish();
  return destination;
}

}  // namespace clipdissect
