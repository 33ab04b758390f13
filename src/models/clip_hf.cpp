#include "models/clip_hf.h"

#include <map>

#include <nlohmann/json.hpp>

#include "clipdissect/error.h"
#include "io/json_file.h"

namespace clipdissect {
namespace {

bool is_hf_clip(const WeightMap& w) { return w.contains("text_model.embeddings.token_embedding.weight"); }

// Whole-name and prefix renames, tried in order; the first match wins.
constexpr std::pair<std::string_view, std::string_view> kRenames[] = {
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    {"text_model.final_layer_norm.", "ln_final."},
    {"text_model.encoder.layers.", "transformer.resblocks."},
    {"vision_model.embeddings.class_embedding", "visual.class_embedding"},
    {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"},
    {"vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"},
    {"vision_model.pre_layrnorm.", "visual.ln_pre."},
    {"vision_model.post_layernorm.", "visual.ln_post."},
    {"vision_model.encoder.layers.", "visual.transformer.resblocks."},
    {"logit_scale", "logit_scale"},
};
// Inside an encoder layer.
constexpr std::pair<std::string_view, std::string_view> kBlockRenames[] = {
    {".layer_norm1.", ".ln_1."},
    {".layer_norm2.", ".ln_2."},
    {".mlp.fc1.", ".mlp.c_fc."},
    {".mlp.fc2.", ".mlp.c_proj."},
    {".self_attn.out_proj.", ".attn.out_proj."},
};

std::optional<std::string> openai_name(const std::string& name) {
  for (const auto& [from, to] : kRenames) {
    if (name.rfind(from, 0) != 0) continue;
    std::string renamed = std::string(to) + name.substr(from.size());
    for (const auto& [block_from, block_to] : kBlockRenames)
      if (auto at = renamed.find(block_from); at != std::string::npos) renamed.replace(at, block_from.size(), block_to);
    return renamed;
  }
  return std::nullopt;
}

HostTensor f32_tensor(std::string name, Shape shape, std::vector<float> values) {
  auto buffer = std::make_shared<std::vector<float>>(std::move(values));
  HostTensor t;
  t.name = std::move(name);
  t.dtype = DType::F32;
  t.shape = std::move(shape);
  t.bytes = std::as_bytes(std::span<const float>(*buffer));
  t.keepalive = buffer;
  return t;
}

HostTensor transposed(const HostTensor& t, std::string name) {
  const std::int64_t rows = t.shape.at(0), cols = t.shape.at(1);
  const std::vector<float> values = to_f32(t);
  std::vector<float> out(values.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) out[c * rows + r] = values[r * cols + c];
  return f32_tensor(std::move(name), {cols, rows}, std::move(out));
}

// q_proj, k_proj, v_proj of one attention -> in_proj_weight / in_proj_bias.
void add_packed_in_proj(const WeightMap& hf, const std::string& attn, const std::string& block, WeightMap& out) {
  for (const char* part : {"weight", "bias"}) {
    std::vector<float> packed;
    Shape shape;
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      const HostTensor& t = hf.at(attn + "." + proj + "." + part);
      const std::vector<float> values = to_f32(t);
      packed.insert(packed.end(), values.begin(), values.end());
      shape = t.shape;
    }
    shape.at(0) *= 3;
    out.add(f32_tensor(block + ".attn.in_proj_" + part, shape, std::move(packed)));
  }
}

WeightMap rename_hf_clip(const WeightMap& hf) {
  WeightMap out(hf.source(), hf.format() + " (transformers CLIP)");
  for (const HostTensor& t : hf.tensors()) {
    const std::string& name = t.name;
    if (name.ends_with("position_ids")) continue;  // a buffer of 0..L-1
    if (name == "visual_projection.weight") {
      out.add(transposed(t, "visual.proj"));
    } else if (name == "text_projection.weight") {
      out.add(transposed(t, "text_projection"));
    } else if (name.ends_with(".self_attn.q_proj.weight")) {
      const std::string attn = name.substr(0, name.size() - std::string(".q_proj.weight").size());
      const std::string block = *openai_name(attn.substr(0, attn.size() - std::string(".self_attn").size()) + ".");
      add_packed_in_proj(hf, attn, block.substr(0, block.size() - 1), out);
    } else if (name.find(".self_attn.") != std::string::npos && name.find(".out_proj.") == std::string::npos) {
      continue;  // k/v projections and biases: packed with q_proj above
    } else if (auto renamed = openai_name(name)) {
      HostTensor copy = t;
      copy.name = *renamed;
      out.add(std::move(copy));
    } else {
      fail("{}: unexpected tensor '{}' in a transformers CLIP checkpoint", hf.source(), name);
    }
  }
  return out;
}

Activation parse_activation(const nlohmann::json& tower, const std::string& source) {
  const std::string act = tower.value("hidden_act", std::string("quick_gelu"));
  if (act == "quick_gelu") return Activation::QuickGelu;
  if (act == "gelu") return Activation::Gelu;
  fail("{}: unsupported hidden_act '{}' (expected 'quick_gelu' or 'gelu')", source, act);
}

HfClipConfig read_hf_config(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path))
    fail("{}: missing: a transformers CLIP checkpoint needs its config.json beside it", path.string());
  const nlohmann::json json = read_json_object(path);
  return with_json_errors(path, [&] {  // e.g. a text_config that is no object, heads given as a string
    HfClipConfig c;
    c.source = path.string();
    const nlohmann::json text = json.value("text_config", nlohmann::json::object());
    const nlohmann::json vision = json.value("vision_config", nlohmann::json::object());
    c.text_heads = text.value("num_attention_heads", 8);       // CLIPTextConfig's default
    c.vision_heads = vision.value("num_attention_heads", 12);  // CLIPVisionConfig's default
    if (c.text_heads <= 0 || c.vision_heads <= 0)
      fail("{}: num_attention_heads must be positive (text {}, vision {})", c.source, c.text_heads, c.vision_heads);
    c.layer_norm_eps = vision.value("layer_norm_eps", 1e-5f);
    c.activation = parse_activation(vision, c.source);
    if (text.value("layer_norm_eps", 1e-5f) != c.layer_norm_eps || parse_activation(text, c.source) != c.activation)
      fail("{}: text_config and vision_config differ in layer_norm_eps or hidden_act, which is not supported",
           c.source);
    return c;
  });
}

}  // namespace

WeightMap load_clip_weights(const std::filesystem::path& path, std::optional<HfClipConfig>& hf) {
  const bool folder = std::filesystem::is_directory(path);
  WeightMap weights = folder ? load_weights_folder(path) : load_weights(path);
  if (!is_hf_clip(weights)) return weights;
  hf = read_hf_config((folder ? path : path.parent_path()) / "config.json");
  return rename_hf_clip(weights);
}

void apply_hf_config(const HfClipConfig& hf, ClipConfig& config) {
  config.vision_heads = hf.vision_heads;
  config.transformer_heads = hf.text_heads;
  config.layer_norm_eps = hf.layer_norm_eps;
  config.activation = hf.activation;
}

}  // namespace clipdissect
