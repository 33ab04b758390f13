// ONNX targets: a torch.onnx-exported (or any) ONNX graph run node by node on our kernels.
//
// Loading parses the ModelProto with libonnx's protobuf classes, reads initializers (inline or external
// data, memory-mapped), compiles every node into a kernel and evaluates the nodes that depend only on
// constants once. A forward pass runs the remaining nodes in graph order, records the requested tensors
// and frees each value after its last use.
#include <algorithm>
#include <climits>
#include <cmath>
#include <optional>
#include <set>

#include <onnx/shape_inference/implementation.h>

#include <fmt/ranges.h>

#include "models/onnx_graph.h"
#include "models/targets.h"

namespace clipdissect {
namespace {

using onnx_target::ExternalData;
using onnx_target::Kernel;
using onnx_target::OnnxNode;
using onnx_target::Value;
using onnx_target::ValuePtr;

bool is_default_domain(const std::string& domain) { return domain.empty() || domain == "ai.onnx"; }

onnx::ModelProto parse_model(const std::filesystem::path& path) {
  const auto file = io::MappedFile::open(path);
  const std::span<const std::byte> bytes = file->bytes();
  if (bytes.size() > static_cast<std::size_t>(INT_MAX))
    fail("{}: {} bytes; protobuf cannot parse an ONNX file of 2 GB or more: save the weights as external data "
         "(torch.onnx.export does for models over 2 GB; onnx.save_model(..., save_as_external_data=True))",
         path.string(), bytes.size());
  onnx::ModelProto model;
  if (!model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    fail("{}: not a valid ONNX model (the protobuf message is truncated or corrupt)", path.string());
  if (!model.has_graph() || model.graph().node_size() == 0 || model.graph().output_size() == 0)
    fail("{}: the ONNX model has no graph, no nodes or no outputs (truncated file?)", path.string());
  return model;
}

int default_opset(const onnx::ModelProto& model, const std::string& source) {
  for (const onnx::OperatorSetIdProto& opset : model.opset_import())
    if (is_default_domain(opset.domain())) return static_cast<int>(opset.version());
  fail("{}: opset_import names no version of the default ONNX domain", source);
}

std::string model_summary(const onnx::ModelProto& model, const std::string& source) {
  return fmt::format("ONNX graph '{}' ({} nodes, opset {}, from {} {})", model.graph().name(), model.graph().node_size(),
                     default_opset(model, source),
                     model.producer_name().empty() ? "an unnamed producer" : model.producer_name(),
                     model.producer_version());
}

// "/layer4/layer4.2/conv3/Conv" -> {"layer4", "layer4.2", "layer4.2.conv3"}: the PyTorch modules whose
// scopes torch.onnx wrote into the node name, outermost first. A scope names a module inside the enclosing
// one ("conv3"), or a child of the enclosing container by extending its scope ("layer4" -> "layer4.2",
// "block" -> "block.0", as torch.onnx names the items of nn.Sequential).
std::vector<std::string> module_scopes(const std::string& node_name) {
  std::vector<std::string> modules;
  if (node_name.empty() || node_name.front() != '/') return modules;
  std::string parent, scope;  // the module path above the current scope, and that scope
  std::size_t begin = 1;
  for (std::size_t end = node_name.find('/', begin); end != std::string::npos; end = node_name.find('/', begin)) {
    const std::string next = node_name.substr(begin, end - begin);
    begin = end + 1;
    if (next.empty()) continue;
    if (scope.empty() || next.rfind(scope + ".", 0) != 0) parent = modules.empty() ? "" : modules.back();
    scope = next;
    modules.push_back(parent.empty() ? scope : parent + "." + scope);
  }
  return modules;
}

// Layer name -> the tensor it records: every tensor computed from the image, and each PyTorch module
// path recovered from node names, recording the first output of the module's last node. Graph order.
std::vector<std::pair<std::string, std::string>> recordable_layers(const onnx::GraphProto& graph) {
  std::set<std::string> dynamic;
  std::set<std::string> initializers;
  for (const onnx::TensorProto& t : graph.initializer()) initializers.insert(t.name());
  for (const onnx::ValueInfoProto& input : graph.input())
    if (!initializers.count(input.name())) dynamic.insert(input.name());
  std::vector<std::string> module_order;
  std::map<std::string, std::string> module_output;
  std::vector<std::pair<std::string, std::string>> tensors;
  for (const onnx::NodeProto& node : graph.node()) {
    bool depends_on_image = false;
    for (const std::string& input : node.input()) depends_on_image = depends_on_image || dynamic.count(input);
    if (!depends_on_image || node.output_size() == 0) continue;
    for (const std::string& output : node.output())
      if (!output.empty() && dynamic.insert(output).second) tensors.emplace_back(output, output);
    for (const std::string& module : module_scopes(node.name())) {
      if (!module_output.count(module)) module_order.push_back(module);
      module_output[module] = node.output(0);
    }
  }
  std::vector<std::pair<std::string, std::string>> layers;
  for (const std::string& module : module_order)
    if (!dynamic.count(module)) layers.emplace_back(module, module_output[module]);
  layers.insert(layers.end(), tensors.begin(), tensors.end());
  return layers;
}

std::string supported_operators() {
  std::vector<std::string> names;
  for (const auto& [name, _] : onnx_target::kernel_table()) names.push_back(name);
  return fmt::format("{}", fmt::join(names, ", "));
}

// A shape from the graph's type information: numbers, symbolic names, "?" where unknown.
std::string shape_text(const onnx::TypeProto& type) {
  if (!type.has_tensor_type() || !type.tensor_type().has_shape()) return "?";
  std::vector<std::string> dims;
  for (const onnx::TensorShapeProto::Dimension& d : type.tensor_type().shape().dim())
    dims.push_back(d.has_dim_value() ? std::to_string(d.dim_value()) : d.has_dim_param() ? d.dim_param() : "?");
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

class OnnxNetwork final : public Network {
 public:
  OnnxNetwork(Backend& backend, const std::filesystem::path& path)
      : backend_(backend), source_(path.string()), external_(path) {
    const onnx::ModelProto model = parse_model(path);
    const onnx::GraphProto& graph = model.graph();
    const int opset = default_opset(model, source_);
    summary_ = model_summary(model, source_);
    for (const onnx::TensorProto& t : graph.initializer())
      define_constant(t.name(), onnx_target::value_from_proto(t, &external_, source_));
    bind_image_input(graph);
    for (const onnx::NodeProto& node : graph.node())
      for (const std::string& input : node.input()) ++readers_[input];
    for (const onnx::ValueInfoProto& output : graph.output()) ++readers_[output.name()];
    for (int i = 0; i < graph.node_size(); ++i) compile(graph, i, opset);
    const std::string& output = graph.output(0).name();
    if (!slots_.count(output)) fail("{}: graph output '{}' is produced by no node", source_, output);
    output_slot_ = slots_.at(output);
    plan_releases();
    for (const auto& [layer, tensor] : recordable_layers(graph)) {
      layer_names_.push_back(layer);
      records_[slots_.at(tensor)].push_back(layer);
    }
  }

  std::string describe() const override {
    return fmt::format("{}, input '{}' {}", summary_, input_name_, shape_to_string(input_shape_));
  }

  std::vector<std::string> layer_names() const override { return layer_names_; }
  std::vector<std::filesystem::path> extra_weight_files() const override { return external_.files(); }

  // torchvision's ImageNet evaluation transform, cropping to the graph's input size when it is fixed.
  Preprocess preprocess() const override {
    Preprocess preprocess = imagenet_preprocess();
    if (input_shape_[2] > 0 && input_shape_[2] == input_shape_[3]) {
      preprocess.crop = static_cast<int>(input_shape_[2]);
      preprocess.resize = static_cast<int>(std::lround(preprocess.crop * 256.0 / 224.0));
    }
    return preprocess;
  }

  Tensor forward(const Tensor& images, Recorder* recorder) const override {
    check_images(images);
    const std::int64_t batch = input_shape_[0];
    if (batch <= 0 || images.dim(0) == batch) return run(images, recorder);
    if (batch != 1)
      fail("{}: the graph's input '{}' has a fixed batch of {}, got {} images (export with dynamic_axes for the batch)",
           source_, input_name_, batch, images.dim(0));
    // A graph exported for one image runs image by image; the recorder appends each image's rows.
    const std::vector<float> pixels = backend_.download(images);
    const std::int64_t per_image = images.numel() / images.dim(0);
    Shape image_shape = images.shape();
    image_shape[0] = 1;
    std::vector<float> outputs;
    Shape output_shape;
    for (std::int64_t i = 0; i < images.dim(0); ++i) {
      const Tensor out = run(backend_.upload(std::span(pixels).subspan(i * per_image, per_image), image_shape), recorder);
      const std::vector<float> values = backend_.download(out);
      outputs.insert(outputs.end(), values.begin(), values.end());
      output_shape = out.shape();
    }
    output_shape.at(0) = images.dim(0);
    return backend_.upload(outputs, output_shape);
  }

 private:
  // Several consecutive steps computed by one kernel (a convolution with its BatchNorm and ReLU).
  struct Fusion {
    Kernel kernel;  // this step's inputs -> the last fused step's outputs
    std::size_t steps = 0;
  };

  struct Step {
    Kernel kernel;
    std::string where;
    std::vector<int> inputs;  // -1: an omitted optional input
    std::vector<int> outputs;
    std::vector<int> release;  // slots whose last use this is
    std::optional<Fusion> fusion;
  };

  int slot(const std::string& name) {
    auto [it, added] = slots_.emplace(name, static_cast<int>(constants_.size()));
    if (added) constants_.emplace_back();
    return it->second;
  }

  void define_constant(const std::string& name, ValuePtr value) {
    if (slots_.count(name)) fail("{}: tensor '{}' is defined twice", source_, name);
    constants_[slot(name)] = std::move(value);
  }

  void bind_image_input(const onnx::GraphProto& graph) {
    for (const onnx::ValueInfoProto& input : graph.input()) {
      if (slots_.count(input.name())) continue;  // an initializer listed as an input (old exporters)
      if (!input_name_.empty())
        fail("{}: the graph has more than one input ('{}', '{}'); a target takes only the images", source_,
             input_name_, input.name());
      input_name_ = input.name();
      input_slot_ = slot(input.name());
      const auto& type = input.type().tensor_type();
      if (type.elem_type() != onnx::TensorProto::FLOAT || type.shape().dim_size() != 4)
        fail("{}: graph input '{}' must be a float tensor [N, 3, H, W], got {}", source_, input_name_,
             shape_text(input.type()));
      for (const auto& d : type.shape().dim()) input_shape_.push_back(d.has_dim_value() ? d.dim_value() : -1);
      if (input_shape_[1] != 3 && input_shape_[1] != -1)
        fail("{}: graph input '{}' has {} channels, expected 3 (RGB)", source_, input_name_, input_shape_[1]);
    }
    if (input_name_.empty()) fail("{}: the graph has no input for the images", source_);
  }

  void compile(const onnx::GraphProto& graph, int index, int opset) {
    const onnx::NodeProto& proto = graph.node(index);
    const OnnxNode node(proto, source_, opset);
    const auto& table = onnx_target::kernel_table();
    const auto factory = table.find(proto.op_type());
    if (!is_default_domain(proto.domain()) || factory == table.end())
      fail("{}: node '{}' uses operator '{}'{}, which is not supported; supported operators: {}", source_, proto.name(),
           proto.op_type(), is_default_domain(proto.domain()) ? "" : " of domain '" + proto.domain() + "'",
           supported_operators());
    Step step;
    step.where = node.where();
    std::vector<ValuePtr> constants;
    bool constant = true;
    for (const std::string& input : proto.input()) {
      if (input.empty()) {
        step.inputs.push_back(-1);
        constants.emplace_back();
        continue;
      }
      if (!slots_.count(input))
        fail("{}: reads tensor '{}', which is no initializer or graph input and no earlier node produces", node.where(),
             input);
      step.inputs.push_back(slots_.at(input));
      constants.push_back(constants_[slots_.at(input)]);
      constant = constant && constants.back();
    }
    for (const std::string& output : proto.output()) {
      if (!output.empty() && slots_.count(output)) fail("{}: tensor '{}' is produced twice", node.where(), output);
      step.outputs.push_back(output.empty() ? -1 : slot(output));
    }
    step.kernel = run_guarded(node.where(), [&] { return (*factory->second)(node, constants, backend_); });
    if (!constant) {
      if (proto.op_type() == "Conv") step.fusion = plan_fusion(graph, index, opset, constants);
      steps_.push_back(std::move(step));
      return;
    }
    // Depends only on initializers: evaluated once, now.
    const std::vector<ValuePtr> outputs = execute(step.kernel, step, step, constants);
    for (std::size_t i = 0; i < step.outputs.size(); ++i)
      if (step.outputs[i] >= 0) constants_[step.outputs[i]] = outputs[i];
  }

  // The node after `producer` when it has operator `op` and is the only reader of the producer's one output.
  const onnx::NodeProto* sole_reader(const onnx::GraphProto& graph, int producer, const char* op) const {
    const onnx::NodeProto& node = graph.node(producer);
    if (producer + 1 >= graph.node_size() || node.output_size() != 1 || readers_.at(node.output(0)) != 1) return nullptr;
    const onnx::NodeProto& next = graph.node(producer + 1);
    const bool reads = next.input_size() > 0 && next.input(0) == node.output(0);
    return reads && next.op_type() == op && is_default_domain(next.domain()) ? &next : nullptr;
  }

  // Conv, then BatchNormalization and / or Relu, each the only reader of the output before: one backend
  // convolution with the BatchNorm's affine and the ReLU fused, run whenever no tensor in between is recorded.
  std::optional<Fusion> plan_fusion(const onnx::GraphProto& graph, int index, int opset,
                                    const std::vector<ValuePtr>& conv_constants) const {
    const onnx::NodeProto* batch_norm = sole_reader(graph, index, "BatchNormalization");
    const onnx::NodeProto* relu = sole_reader(graph, batch_norm ? index + 1 : index, "Relu");
    if (!batch_norm && !relu) return std::nullopt;
    std::optional<OnnxNode> norm;
    std::vector<ValuePtr> norm_constants;
    if (batch_norm) {
      norm.emplace(*batch_norm, source_, opset);
      for (const std::string& input : batch_norm->input())
        norm_constants.push_back(slots_.count(input) ? constants_[slots_.at(input)] : nullptr);
    }
    const OnnxNode conv(graph.node(index), source_, opset);
    return Fusion{onnx_target::make_fused_conv(conv, conv_constants, norm ? &*norm : nullptr, norm_constants,
                                               relu != nullptr, backend_),
                  1 + (batch_norm ? 1u : 0u) + (relu ? 1u : 0u)};
  }

  // Runs `f`, prefixing an error that does not name the node with `where`.
  template <typename F>
  static auto run_guarded(const std::string& where, F f) -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      if (std::string_view(e.what()).find(where) != std::string_view::npos) throw;
      fail("{}: {}", where, e.what());
    }
  }

  // Runs `kernel` for the steps from `first` to `last` (the same step unless fused).
  std::vector<ValuePtr> execute(const Kernel& kernel, const Step& first, const Step& last,
                                const std::vector<ValuePtr>& inputs) const {
    std::vector<ValuePtr> outputs = run_guarded(first.where, [&] { return kernel(backend_, inputs); });
    if (outputs.size() < last.outputs.size())
      fail("{}: {} outputs requested, the operator gives {}", last.where, last.outputs.size(), outputs.size());
    return outputs;
  }

  void plan_releases() {
    std::vector<int> last_use(constants_.size(), -1);
    for (std::size_t i = 0; i < steps_.size(); ++i)
      for (int id : steps_[i].inputs)
        if (id >= 0) last_use[id] = static_cast<int>(i);
    for (std::size_t id = 0; id < last_use.size(); ++id) {
      if (static_cast<int>(id) == output_slot_) continue;
      if (last_use[id] >= 0 && !constants_[id]) steps_[last_use[id]].release.push_back(static_cast<int>(id));
      // Weights went into the kernels at compile time; only constants a step reads stay.
      if (last_use[id] < 0 && constants_[id] && static_cast<int>(id) != output_slot_) constants_[id].reset();
    }
  }

  void check_images(const Tensor& images) const {
    bool fits = images.rank() == 4;
    for (int i = 1; fits && i < 4; ++i) fits = input_shape_[i] < 0 || input_shape_[i] == images.dim(i);
    if (!fits)
      fail("{}: the graph's input '{}' is {} (-1: any size), got images {}", source_, input_name_,
           shape_to_string(input_shape_), shape_to_string(images.shape()));
  }

  void record(Recorder& recorder, const std::string& layer, const Value& value) const {
    if (!recorder.wants(layer)) return;
    if (!value.is_float() || value.rank() < 2 || value.rank() > 4)
      fail("{}: layer '{}' is {}; only float tensors [N, C, H, W], [N, L, D] and [N, C] can be recorded", source_,
           layer, shape_to_string(value.shape()));
    recorder.record(layer, value.tensor(backend_));
  }

  // Whether a tensor that steps [first, first + count - 1) produce is to be recorded.
  bool records_inside(std::size_t first, std::size_t count, const Recorder* recorder) const {
    if (!recorder) return false;
    for (std::size_t i = first; i + 1 < first + count; ++i)
      for (int id : steps_[i].outputs) {
        const auto layers = records_.find(id);
        if (layers == records_.end()) continue;
        for (const std::string& layer : layers->second)
          if (recorder->wants(layer)) return true;
      }
    return false;
  }

  Tensor run(const Tensor& images, Recorder* recorder) const {
    std::vector<ValuePtr> slots = constants_;
    slots[input_slot_] = Value::device(images);
    for (std::size_t first = 0; first < steps_.size();) {
      const Step& step = steps_[first];
      const bool fused = step.fusion && !records_inside(first, step.fusion->steps, recorder);
      const std::size_t count = fused ? step.fusion->steps : 1;
      const Step& last = steps_[first + count - 1];
      std::vector<ValuePtr> inputs;
      for (int id : step.inputs) inputs.push_back(id >= 0 ? slots[id] : nullptr);
      const std::vector<ValuePtr> outputs = execute(fused ? step.fusion->kernel : step.kernel, step, last, inputs);
      for (std::size_t i = 0; i < last.outputs.size(); ++i) {
        if (last.outputs[i] < 0) continue;
        slots[last.outputs[i]] = outputs[i];
        const auto layers = records_.find(last.outputs[i]);
        if (recorder && layers != records_.end())
          for (const std::string& layer : layers->second) record(*recorder, layer, *outputs[i]);
      }
      for (std::size_t i = first; i < first + count; ++i)
        for (int id : steps_[i].release) slots[id].reset();
      first += count;
    }
    if (!slots[output_slot_]->is_float()) fail("{}: the graph's output is not a float tensor", source_);
    return slots[output_slot_]->tensor(backend_);
  }

  Backend& backend_;
  std::string source_, summary_;
  ExternalData external_;
  std::map<std::string, int> slots_;  // tensor name -> slot
  std::map<std::string, int> readers_;  // tensor name -> how many node inputs and graph outputs read it
  std::vector<ValuePtr> constants_;   // per slot: the value known at load time, else null
  std::vector<Step> steps_;
  std::string input_name_;
  Shape input_shape_;  // -1 for a symbolic dimension
  int input_slot_ = -1, output_slot_ = -1;
  std::vector<std::string> layer_names_;
  std::map<int, std::vector<std::string>> records_;  // slot -> layers recording it
};

}  // namespace

bool is_onnx_model(const std::filesystem::path& path) {
  std::string extension = path.extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(), [](unsigned char c) { return std::tolower(c); });
  return extension == ".onnx";
}

std::unique_ptr<Network> make_onnx_network(Backend& backend, const std::filesystem::path& path) {
  return std::make_unique<OnnxNetwork>(backend, path);
}

std::string describe_onnx(const std::filesystem::path& path) { return model_summary(parse_model(path), path.string()); }

std::vector<std::pair<std::string, std::string>> onnx_layer_shapes(const std::filesystem::path& path) {
  onnx::ModelProto model = parse_model(path);
  const auto layers = recordable_layers(model.graph());
  std::map<std::string, std::string> shapes;
  try {
    onnx::shape_inference::InferShapes(model);
  } catch (const std::exception&) {
    // Shapes stay unknown where libonnx cannot infer them (operators newer than its opsets).
  }
  for (const auto* list : {&model.graph().value_info(), &model.graph().output()})
    for (const onnx::ValueInfoProto& info : *list) shapes[info.name()] = shape_text(info.type());
  std::vector<std::pair<std::string, std::string>> result;
  for (const auto& [layer, tensor] : layers)
    result.emplace_back(layer, shapes.count(tensor) ? shapes[tensor] : "?");
  return result;
}

}  // namespace clipdissect
