// The fuzz targets: one function per parser, each fed raw bytes. A clipdissect::Error is a clean rejection;
// anything else (another exception, a crash, a sanitizer report, a hang) is a finding. Each function lives in
// fuzz/targets/<name>.cpp; fuzz/fuzz_main.cpp turns one into a libFuzzer program, and
// tests/test_fuzz_regressions.cpp replays the inputs kept in tests/data/fuzz_regressions/<name>/.
#pragma once

#include <string_view>

#include "fuzz_support.h"

namespace clipdissect::fuzz {

void unpickler(Bytes data);        // the restricted unpickler, storages stubbed
void zip_archive(Bytes data);      // the zip reader: directory, then every entry (CRC, inflate)
void torch_zip(Bytes data);        // torch.save / torch.jit.save zip checkpoints
void torch_legacy(Bytes data);     // pre-1.6 torch.save files (Places365 .pth.tar)
void safetensors(Bytes data);      // safetensors header and data offsets
void clip_bpe_text(Bytes data);    // CLIP's BPE tokenizer on arbitrary text (the real vocabulary)
void clip_bpe_vocab(Bytes data);   // the BPE vocabulary file (.txt.gz) reader
void wordpiece_text(Bytes data);   // the WordPiece tokenizer on arbitrary text (the fixture MPNet vocabulary)
void wordpiece_files(Bytes data);  // tokenizer.json, and vocab.txt, readers
void image(Bytes data);            // JPEG/PNG decoding, PIL mode conversion, resize and crop
void label_files(Bytes data);      // descriptions CSV, ground-truth labels, concept lists, Broden index, image lists
void config_json(Bytes data);      // transformers CLIP config.json and the torchvision ViT sidecar (--target-config)

struct Target {
  std::string_view name;
  void (*run)(Bytes data);
};

inline constexpr Target kTargets[] = {
    {"unpickler", unpickler},           {"zip_archive", zip_archive},     {"torch_zip", torch_zip},
    {"torch_legacy", torch_legacy},     {"safetensors", safetensors},     {"clip_bpe_text", clip_bpe_text},
    {"clip_bpe_vocab", clip_bpe_vocab}, {"wordpiece_text", wordpiece_text}, {"wordpiece_files", wordpiece_files},
    {"image", image},                   {"label_files", label_files},     {"config_json", config_json},
};

}  // namespace clipdissect::fuzz
