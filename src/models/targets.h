// The architectures load_target recognises, each implemented in its own file.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "clipdissect/network.h"
#include "clipdissect/weights.h"

namespace clipdissect {

bool is_torchvision_resnet(const WeightMap& weights);
std::unique_ptr<Network> make_torchvision_resnet(const WeightMap& weights, Backend& backend);
std::string describe_torchvision_resnet(const WeightMap& weights);

bool is_torchvision_vit(const WeightMap& weights);
// `config`: the constructor's arguments (num_heads, ...) from a sidecar, or null.
std::unique_ptr<Network> make_torchvision_vit(const WeightMap& weights, Backend& backend, const nlohmann::json& config,
                                              const std::string& config_source);
std::string describe_torchvision_vit(const WeightMap& weights, const nlohmann::json& config);

// A graph exported to ONNX (models/onnx_network.cpp).
std::unique_ptr<Network> make_onnx_network(Backend& backend, const std::filesystem::path& path);
std::string describe_onnx(const std::filesystem::path& path);

}  // namespace clipdissect
