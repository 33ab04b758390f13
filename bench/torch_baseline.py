#!/usr/bin/python3
"""PyTorch side of the benchmarks (Debian's python3-torch / torchvision; never used by clipdissect itself).

  torch_baseline.py make-models OUT_DIR       random-weight resnet50.pth (torchvision) and clip_vit_b16.pt
                                              (OpenAI CLIP ViT-B/16 state dict names and shapes)
  torch_baseline.py forward --threads 2 --batch 32 --seconds 10 [--clip FILE --tokens FILE]
                                              images/s of torchvision resnet50 (plain, channels_last and
                                              mkldnn) and vit_b_16; with --clip, CLIP ViT-B/16's image tower
                                              and concepts/s of its text tower on all 77 positions, for a
                                              sample of the token rows in --tokens (its cost per concept does
                                              not depend on the concept); printed as JSON
"""
import argparse
import json
import sys
import time

import torch
import torch.utils.mkldnn
import torchvision

from torch_describe_baseline import Clip


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


def items_per_second(run, items, seconds, warm_up=None, min_runs=2):
    with torch.inference_mode():
        (warm_up or run)()
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < seconds:
            run()
            runs += 1
        return items * runs / (time.perf_counter() - start)


def images_per_second(model, batch, seconds, layout="plain"):
    x = torch.randn(batch, 3, 224, 224)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    elif layout == "mkldnn":
        model = torch.utils.mkldnn.to_mkldnn(model)
        x = x.to_mkldnn()
    return items_per_second(lambda: model(x), batch, seconds)


def clip_rates(args):
    clip = Clip().eval()
    clip.load_state_dict({k: v.float() for k, v in torch.load(args.clip).items()})
    images = torch.randn(args.batch, 3, 224, 224)
    with open(args.tokens) as f:
        rows = [[int(t) for t in line.split()] for line in f if line.strip()][: args.text_sample]
    tokens = torch.zeros(len(rows), 77, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    text_batch = 256  # as the end-to-end baseline encodes
    return {
        "clip_vit_b16_image": items_per_second(lambda: clip.encode_image(images), args.batch, args.seconds),
        "clip_text_concepts": items_per_second(
            lambda: [clip.encode_text(tokens[i : i + text_batch]) for i in range(0, len(tokens), text_batch)],
            len(tokens), 0, warm_up=lambda: clip.encode_text(tokens[:text_batch]), min_runs=1),
    }


def forward(args):
    torch.set_num_threads(args.threads)
    resnet = torchvision.models.resnet50().eval()
    vit = torchvision.models.vit_b_16().eval()
    result = {
        "torch": torch.__version__,
        "resnet50": images_per_second(resnet, args.batch, args.seconds),
        "resnet50_channels_last": images_per_second(resnet, args.batch, args.seconds, "channels_last"),
        "resnet50_mkldnn": images_per_second(resnet, args.batch, args.seconds, "mkldnn"),
        "vit_b_16": images_per_second(vit, args.batch, args.seconds),
    }
    if args.clip:
        result.update(clip_rates(args))
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
    fwd.add_argument("--clip", help="a clip_vit_b16.pt made by make-models")
    fwd.add_argument("--tokens", help="token ids of the concepts, a line each (clipdissect tokenize)")
    fwd.add_argument("--text-sample", type=int, default=512, help="concepts of --tokens to encode")
    args = parser.parse_args()
    make_models(args.out_dir) if args.command == "make-models" else forward(args)


if __name__ == "__main__":
    main()
