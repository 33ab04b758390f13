#include <algorithm>

#include <fmt/ranges.h>

#include "clipdissect/error.h"
#include "clipdissect/network.h"

namespace clipdissect {

Recorder::Recorder(Backend& backend, PoolMode mode, std::vector<std::string> layers)
    : backend_(backend), mode_(mode), layers_(std::move(layers)), wanted_(layers_.begin(), layers_.end()) {}

void Recorder::record(std::string_view layer, const Tensor& output) {
  LayerSummary& summary = summaries_[std::string(layer)];
  const std::vector<float> rows = backend_.summarize(output, mode_);
  const std::int64_t channels = static_cast<std::int64_t>(rows.size()) / output.dim(0);
  if (summary.channels != 0 && summary.channels != channels)
    fail("layer '{}' changed width from {} to {} between batches", layer, summary.channels, channels);
  summary.channels = channels;
  summary.values.insert(summary.values.end(), rows.begin(), rows.end());
}

const LayerSummary& Recorder::summary(const std::string& layer) const {
  auto it = summaries_.find(layer);
  if (it == summaries_.end()) fail("layer '{}' was not recorded during the forward pass", layer);
  return it->second;
}

std::string normalize_layer_name(std::string_view name) {
  // "layer2[0].conv1" -> "layer2.0.conv1": each "[digits]" becomes ".digits".
  std::string dotted;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const std::size_t close = name[i] == '[' ? name.find(']', i) : std::string_view::npos;
    const std::string_view inside = close == std::string_view::npos ? "" : name.substr(i + 1, close - i - 1);
    if (!inside.empty() && inside.find_first_not_of("0123456789") == std::string_view::npos) {
      dotted += '.';
      dotted += inside;
      i = close;
    } else {
      dotted += name[i];
    }
  }
  return dotted;
}

namespace {
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}
}  // namespace

void check_layer_names(const Network& network, const std::vector<std::string>& layers, const std::string& source) {
  const std::vector<std::string> valid = network.layer_names();
  for (const std::string& layer : layers) {
    if (std::find(valid.begin(), valid.end(), layer) != valid.end()) continue;
    std::vector<std::string> closest = valid;
    std::stable_sort(closest.begin(), closest.end(), [&](const std::string& a, const std::string& b) {
      return edit_distance(layer, a) < edit_distance(layer, b);
    });
    closest.resize(std::min<std::size_t>(closest.size(), 5));
    fail("{}: no layer named '{}'; closest valid names: {} (`clipdissect inspect {}` lists all {})", source, layer,
         fmt::join(closest, ", "), source, valid.size());
  }
}

}  // namespace clipdissect
