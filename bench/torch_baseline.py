#!/usr/bin/python3
"""PyTorch side of the benchmarks (Debian's python3-torch / torchvision; never used by clipdissect itself).

  torch_baseline.py make-models OUT_DIR       random-weight resnet50.pth (torchvision) and clip_vit_b16.pt
                                              (OpenAI CLIP ViT-B/16 state dict names and shapes)
  torch_baseline.py forward --threads 2 --batch 32 --seconds 10
                                              images/s of torchvision resnet50 (plain and channels_last)
                                              and vit_b_16, printed as JSON
"""
import argparse
import json
import sys
import time

import torch
import torchvision


def make_models(out_dir):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), f"{out_dir}/resnet50.pth")
    sd = {}
    width, layers, patch, grid, embed = 768, 12, 16, 14, 512
    text_width, text_layers, vocab, context = 512, 12, 49408, 77

    def block(prefix, w):
        sd[f"{prefix}.attn.in_proj_weight"] = torch.randn(3 * w, w) * w ** -0.5
        sd[f"{prefix}.attn.in_proj_bias"] = torch.zeros(3 * w)
        sd[f"{prefix}.attn.out_proj.weight"] = torch.randn(w, w) * w ** -0.5
        sd[f"{prefix}.attn.out_proj.bias"] = torch.zeros(w)
        for ln in ("ln_1", "ln_2"):
            sd[f"{prefix}.{ln}.weight"] = torch.ones(w)
            sd[f"{prefix}.{ln}.bias"] = torch.zeros(w)
        sd[f"{prefix}.mlp.c_fc.weight"] = torch.randn(4 * w, w) * w ** -0.5
        sd[f"{prefix}.mlp.c_fc.bias"] = torch.zeros(4 * w)
        sd[f"{prefix}.mlp.c_proj.weight"] = torch.randn(w, 4 * w) * (4 * w) ** -0.5
        sd[f"{prefix}.mlp.c_proj.bias"] = torch.zeros(w)

    sd["visual.class_embedding"] = torch.randn(width) * 0.02
    sd["visual.positional_embedding"] = torch.randn(grid * grid + 1, width) * 0.01
    sd["visual.proj"] = torch.randn(width, embed) * width ** -0.5
    sd["visual.conv1.weight"] = torch.randn(width, 3, patch, patch) * 0.02
    for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        w = text_width if ln == "ln_final" else width
        sd[f"{ln}.weight"] = torch.ones(w)
        sd[f"{ln}.bias"] = torch.zeros(w)
    for i in range(layers):
        block(f"visual.transformer.resblocks.{i}", width)
    sd["positional_embedding"] = torch.randn(context, text_width) * 0.01
    sd["text_projection"] = torch.randn(text_width, embed) * text_width ** -0.5
    sd["logit_scale"] = torch.tensor(4.6052)
    sd["token_embedding.weight"] = torch.randn(vocab, text_width) * 0.02
    for i in range(text_layers):
        block(f"transformer.resblocks.{i}", text_width)
    # OpenAI ships matrices in float16 (clip.model.convert_weights); norms and embeddings stay float32.
    for k, v in sd.items():
        if v.dim() >= 2 and "positional" not in k and "class_embedding" not in k:
            sd[k] = v.half()
    torch.save(sd, f"{out_dir}/clip_vit_b16.pt")


def images_per_second(model, batch, seconds, channels_last=False):
    x = torch.randn(batch, 3, 224, 224)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            model(x)
            runs += 1
        return batch * runs / (time.perf_counter() - start)


def forward(args):
    torch.set_num_threads(args.threads)
    resnet = torchvision.models.resnet50().eval()
    vit = torchvision.models.vit_b_16().eval()
    result = {
        "torch": torch.__version__,
        "resnet50": images_per_second(resnet, args.batch, args.seconds),
        "resnet50_channels_last": images_per_second(resnet, args.batch, args.seconds, channels_last=True),
        "vit_b_16": images_per_second(vit, args.batch, args.seconds),
    }
    json.dump(result, sys.stdout)
    print()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-models")
    make.add_argument("out_dir")
    fwd = sub.add_parser("forward")
    fwd.add_argument("--threads", type=int, default=2)
    fwd.add_argument("--batch", type=int, default=32)
    fwd.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    make_models(args.out_dir) if args.command == "make-models" else forward(args)


if __name__ == "__main__":
    main()
