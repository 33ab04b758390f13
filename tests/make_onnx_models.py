#!/usr/bin/python3
"""Exports the ONNX test models with random weights and their PyTorch reference outputs.

    /usr/bin/python3 tests/make_onnx_models.py OUT_DIR

For each model: OUT_DIR/<name>.onnx and OUT_DIR/<name>.reference.safetensors holding the input batch
("images"), the final output ("output") and, per recorded module, the forward hook's output summarised as
clipdissect's Recorder does ("avg/<module>", "max/<module>"); metadata "layers" lists the modules.
Also: resnet18.pth (the same weights for the native ResNet), resnet18_external.onnx with its weights in
resnet18_external.onnx.data, and small hand-made graphs for the error cases.
"""
import json
import os
import sys

import numpy as np
import onnx
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

BATCH = 2


def summaries(output):
    """Recorder's per-image summary: [N,C,H,W] -> mean / max over H, W; [N,L,D] -> token 0; [N,C] as is."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3)), output.amax(dim=(2, 3))
    if output.dim() == 3:
        return output[:, 0], output[:, 0]
    return output, output


def randomize_batch_norms(model):
    # Default running statistics (0, 1) would make every BatchNorm nearly an identity.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)


def export(model, name, out_dir, size, layers, opset=17, dynamic_batch=True, keep_batch_norm=False, **kwargs):
    torch.manual_seed(len(name))
    model.eval()
    randomize_batch_norms(model)
    images = torch.randn(BATCH, 3, size, size)
    modules = dict(model.named_modules())
    # Cloned: a later in-place activation (nn.Hardswish(inplace=True)) would overwrite the hooked tensor.
    recorded = {}
    hooks = [modules[layer].register_forward_hook(lambda _m, _i, out, layer=layer: recorded.__setitem__(layer, out.clone()))
             for layer in layers]
    with torch.no_grad():
        output = model(images)
    for hook in hooks:
        hook.remove()
    tensors = {"images": images, "output": output}
    for layer in layers:
        avg, top = summaries(recorded[layer])
        tensors["avg/" + layer] = avg
        tensors["max/" + layer] = top
    save_reference(os.path.join(out_dir, name + ".reference.safetensors"), tensors, {"layers": json.dumps(layers)})
    axes = {"images": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    training = torch.onnx.TrainingMode.PRESERVE if keep_batch_norm else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(model, images[:1], os.path.join(out_dir, name + ".onnx"), opset_version=opset,
                      input_names=["images"], output_names=["output"], dynamic_axes=axes, training=training,
                      **kwargs)
    return model


def save_reference(path, tensors, metadata):
    # safetensors by hand: an 8-byte header length, a JSON header, then the little-endian data.
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


class OpsZoo(torch.nn.Module):
    """Operators the torchvision models do not export: each line becomes one or a few ONNX nodes."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(3, 4, kernel_size=3, stride=2, padding=1, output_padding=1)
        self.conv = torch.nn.Conv2d(4, 6, kernel_size=3, padding=1)

    def forward(self, x):
        x = self.up(x)
        x = torch.nn.functional.leaky_relu(x, 0.1) + torch.tanh(x) * torch.clamp(x, -0.5, 0.7)
        x = torch.nn.functional.pad(x, (1, 2, 0, 1), value=0.25)
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        x = torch.nn.functional.interpolate(x, size=(20, 18), mode="bilinear", align_corners=False)
        x = self.conv(x)
        a, b = torch.split(x, [2, 4], dim=1)
        x = torch.cat([torch.where(a > 0, a, a * a), b.abs().sqrt() ** 2], dim=1)
        x = torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        x = torch.nn.functional.max_pool2d(x, 2, stride=2)
        return x.softmax(dim=1) - torch.erf(x).mean(dim=(2, 3), keepdim=True)


def export_models(out_dir):
    tv = torchvision.models
    resnet = export(tv.resnet18(), "resnet18", out_dir, 64,
                    ["relu", "maxpool", "layer1.0", "layer1", "layer2.1", "layer3", "layer4", "avgpool", "fc"])
    torch.save(resnet.state_dict(), os.path.join(out_dir, "resnet18.pth"))
    vit = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                               num_classes=10)
    export(vit, "vit", out_dir, 32, ["conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
                                     "encoder.ln", "encoder", "heads"])
    # Batch 1 fixed in the graph and BatchNorm kept as its own node: module names as in PyTorch.
    export(tv.mobilenet_v3_small(), "mobilenet_v3_small", out_dir, 64,
           ["features.0.0", "features.0.1", "features.1.block.1", "features.4", "features.12", "avgpool",
            "classifier.0", "classifier"], dynamic_batch=False, keep_batch_norm=True)
    export(tv.efficientnet_b0(), "efficientnet_b0", out_dir, 64,
           ["features.0", "features.1.0.block.1", "features.3.1", "features.6", "features.8", "avgpool",
            "classifier"])
    # Opset 13: LayerNorm as ReduceMean/Sub/Pow/Sqrt/Div, GELU as Erf arithmetic.
    export(tv.convnext_tiny(), "convnext_tiny", out_dir, 64,
           ["features.0", "features.1.0", "features.1.2.block", "features.4", "features.7.2", "avgpool",
            "classifier.0", "classifier"], opset=13)
    export(tv.densenet121(), "densenet121", out_dir, 64,
           ["features.relu0", "features.pool0", "features.denseblock1.denselayer1", "features.transition1",
            "features.denseblock4", "features.norm5", "classifier"])
    export(OpsZoo(), "ops_zoo", out_dir, 9, ["up", "conv"])
    model = onnx.load(os.path.join(out_dir, "resnet18.onnx"))
    onnx.save_model(model, os.path.join(out_dir, "resnet18_external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="resnet18_external.onnx.data", size_threshold=0)


def tiny_graph(nodes, initializers=()):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "tiny", [images], [output], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external_weight_graph(out_dir, name, location, offset, length):
    weight = numpy_helper.from_array(np.zeros((3, 1, 1, 1), np.float32), "weight")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    conv = helper.make_node("Conv", ["images", "weight"], ["output"], name="/conv/Conv", group=3)
    onnx.save(tiny_graph([conv], [weight]), os.path.join(out_dir, name + ".onnx"))


def export_broken_graphs(out_dir):
    relu = helper.make_node("Relu", ["images"], ["hidden"], name="/act/Relu")
    odd = helper.make_node("Celu", ["hidden"], ["output"], name="/block/odd/Celu")
    onnx.save(tiny_graph([relu, odd]), os.path.join(out_dir, "unsupported_op.onnx"))
    add = helper.make_node("Add", ["images", "nowhere"], ["output"], name="/block/Add")
    onnx.save(tiny_graph([add]), os.path.join(out_dir, "missing_input.onnx"))
    # Shapes computed from the image that the runtime must refuse: 48 values into [5, -1]; a negative dimension.
    target = numpy_helper.from_array(np.array([5, -1], np.int64), "target")
    reshape = helper.make_node("Reshape", ["images", "target"], ["output"], name="/head/Reshape")
    onnx.save(tiny_graph([reshape], [target]), os.path.join(out_dir, "bad_reshape.onnx"))
    ten = numpy_helper.from_array(np.array(10, np.int64), "ten")
    nodes = [helper.make_node("Shape", ["images"], ["shape"], name="/Shape"),
             helper.make_node("Sub", ["shape", "ten"], ["negative"], name="/Sub"),
             helper.make_node("ConstantOfShape", ["negative"], ["output"], name="/fill/ConstantOfShape")]
    onnx.save(tiny_graph(nodes, [ten]), os.path.join(out_dir, "negative_shape.onnx"))
    with open(os.path.join(out_dir, "weights.bin"), "wb") as f:
        f.write(np.array([1.0, 2.0, 3.0], np.float32).tobytes())
    external_weight_graph(out_dir, "external_ok", "weights.bin", 0, 12)
    external_weight_graph(out_dir, "external_past_end", "weights.bin", 4, 12)
    external_weight_graph(out_dir, "external_escape", "../weights.bin", 0, 12)


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(2)
    export_broken_graphs(out_dir)
    export_models(out_dir)


if __name__ == "__main__":
    main()
