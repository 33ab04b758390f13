#!/usr/bin/python3
"""The PyTorch baseline of a whole dissection, stage by stage, as the original CLIP-Dissect code computes it
(written for this benchmark; Debian's python3-torch and torchvision, never used by clipdissect itself).

  torch_describe_baseline.py make-inputs DIR --images N --concepts K --concept-list 20k.txt
      synthetic 500x375 JPEGs in DIR/probe/<class>/, the first K concepts in DIR/concepts.txt
  torch_describe_baseline.py run DIR --threads 2 --tokens DIR/tokens.txt [--device cuda]
      decode+preprocess, CLIP ViT-B/16 image and text towers (all 77 positions), torchvision resnet50 with
      forward hooks on conv1, layer1..layer4 (spatial mean), materialised N x K SoftWPMI; prints JSON seconds.
      On cuda: CLIP in fp16 and the target in fp32 (as clipdissect's defaults there), batches of 256, images
      decoded by a DataLoader with --threads workers.
  torch_describe_baseline.py similarity --images N --concepts K --neurons C [--device cuda]
      SoftWPMI alone on random inputs; prints JSON seconds
  torch_describe_baseline.py preprocess DIR [--images 200]
      one core: PIL decode, each pipeline's transforms on decoded images, and both pipelines from the file as
      the reference runs them (the image decoded once per model); prints JSON images/s
"""
import argparse
import json
import math
import multiprocessing
import os
import random
import sys
import time

import torch
import torchvision
from PIL import Image

LAYERS = ["conv1", "layer1", "layer2", "layer3", "layer4"]


def make_image(job):
    directory, i, colour = job
    torch.set_num_threads(1)
    folder = os.path.join(directory, "probe", f"class_{i % 10}")
    os.makedirs(folder, exist_ok=True)
    # Smooth gradients with a few shapes: JPEG sizes like photos', deterministic.
    base = torch.linspace(0, 1, 500).view(1, 1, 500) * torch.linspace(0, 1, 375).view(1, 375, 1)
    noise = torch.rand(3, 375, 500, generator=torch.Generator().manual_seed(i)) * 0.2
    pixels = ((base * torch.tensor(colour).view(3, 1, 1) + noise).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(os.path.join(folder, f"img_{i:05d}.jpg"), quality=90)


def make_inputs(args):
    rng = random.Random(0)
    jobs = [(args.dir, i, [rng.random(), rng.random(), rng.random()]) for i in range(args.images)]
    with multiprocessing.Pool() as pool:
        pool.map(make_image, jobs, chunksize=64)
    with open(args.concept_list) as f:
        words = [w for w in f.read().split("\n") if w][: args.concepts]
    with open(os.path.join(args.dir, "concepts.txt"), "w") as f:
        f.write("\n".join(words) + "\n")


class ResidualAttentionBlock(torch.nn.Module):
    def __init__(self, width, heads, mask=None):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_1 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential()
        self.mlp.add_module("c_fc", torch.nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", torch.nn.Linear(4 * width, width))
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mask = mask

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.mask)[0]
        return x + self.mlp(self.ln_2(x))


class QuickGELU(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Clip(torch.nn.Module):
    """OpenAI CLIP ViT-B/16 (clip/model.py's computation), state-dict compatible."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        v = self.visual
        v.conv1 = torch.nn.Conv2d(3, 768, 16, 16, bias=False)
        v.class_embedding = torch.nn.Parameter(torch.zeros(768))
        v.positional_embedding = torch.nn.Parameter(torch.zeros(197, 768))
        v.ln_pre = torch.nn.LayerNorm(768)
        v.transformer = torch.nn.Module()
        v.transformer.resblocks = torch.nn.Sequential(*[ResidualAttentionBlock(768, 12) for _ in range(12)])
        v.ln_post = torch.nn.LayerNorm(768)
        v.proj = torch.nn.Parameter(torch.zeros(768, 512))
        mask = torch.full((77, 77), float("-inf")).triu_(1)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(*[ResidualAttentionBlock(512, 8, mask) for _ in range(12)])
        self.token_embedding = torch.nn.Embedding(49408, 512)
        self.positional_embedding = torch.nn.Parameter(torch.zeros(77, 512))
        self.ln_final = torch.nn.LayerNorm(512)
        self.text_projection = torch.nn.Parameter(torch.zeros(512, 512))
        self.logit_scale = torch.nn.Parameter(torch.zeros([]))

    def encode_image(self, x):
        v = self.visual
        x = v.conv1(x).flatten(2).permute(0, 2, 1)
        cls = v.class_embedding.expand(x.shape[0], 1, -1)
        x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)
        x = v.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        return v.ln_post(x[:, 0]) @ v.proj

    def encode_text(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def soft_wpmi(clip_feats, target_feats, top_k=100, a=10, lam=1, min_prob=1e-7, p_start=0.998, p_end=0.97):
    """similarity.soft_wpmi's computation: softmax over concepts of the full N x K matrix."""
    clip_feats = torch.nn.functional.softmax(a * clip_feats, dim=1)
    inds = torch.topk(target_feats, dim=0, k=top_k)[1]
    p_in = p_start - (torch.arange(0, top_k, device=clip_feats.device) / top_k * (p_start - p_end)).unsqueeze(1)
    rows = []
    for n in range(target_feats.shape[1]):
        feats = clip_feats.gather(0, inds[:, n : n + 1].expand(-1, clip_feats.shape[1]))
        rows.append(torch.sum(torch.log(1 + p_in * (feats - 1) + min_prob), dim=0, keepdim=True))
    prob = torch.cat(rows, dim=0)
    prior = torch.logsumexp(prob, dim=0, keepdim=True) - math.log(prob.shape[0])
    return prob - lam * prior


class ProbeImages(torch.utils.data.Dataset):
    """Each image decoded once per model, as the reference does."""

    def __init__(self, paths):
        self.paths = paths
        self.clip_transform = torchvision.transforms.Compose([
            torchvision.transforms.Resize(224, interpolation=torchvision.transforms.InterpolationMode.BICUBIC),
            torchvision.transforms.CenterCrop(224), torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                                             (0.26862954, 0.26130258, 0.27577711))])
        self.target_transform = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return (self.clip_transform(Image.open(self.paths[i]).convert("RGB")),
                self.target_transform(Image.open(self.paths[i]).convert("RGB")))


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run(args):
    torch.set_num_threads(args.threads)
    device, batch = args.device, 256 if args.device == "cuda" else 32
    timings = {}
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(args.dir, "probe")) for f in fs)
    clip = Clip().eval()
    clip.load_state_dict({k: v.float() for k, v in torch.load(os.path.join(args.dir, "clip_vit_b16.pt")).items()})
    resnet = torchvision.models.resnet50().eval()
    resnet.load_state_dict(torch.load(os.path.join(args.dir, "resnet50.pth")))
    if device == "cuda":
        clip = clip.half()
    clip, resnet = clip.to(device), resnet.to(device)
    clip_dtype = torch.float16 if device == "cuda" else torch.float32

    start = time.perf_counter()
    if device == "cuda":
        loader = torch.utils.data.DataLoader(ProbeImages(paths), batch_size=batch, num_workers=args.threads,
                                             pin_memory=True)
        batches = list(loader)
    else:
        dataset = ProbeImages(paths)
        items = [dataset[i] for i in range(len(paths))]
        batches = [[torch.stack([c for c, _ in items[i : i + batch]]), torch.stack([t for _, t in items[i : i + batch]])]
                   for i in range(0, len(items), batch)]
    timings["decode_and_preprocess"] = time.perf_counter() - start

    with torch.no_grad():
        start = time.perf_counter()
        image_features = torch.cat([clip.encode_image(c.to(device, non_blocking=True).to(clip_dtype)).float()
                                    for c, _ in batches])
        synchronize(device)
        timings["clip_image"] = time.perf_counter() - start

        with open(args.tokens) as f:
            token_rows = [[int(t) for t in line.split()] for line in f if line.strip()]
        tokens = torch.zeros(len(token_rows), 77, dtype=torch.long)
        for i, row in enumerate(token_rows):
            tokens[i, : len(row)] = torch.tensor(row)
        tokens = tokens.to(device)
        start = time.perf_counter()
        text_features = torch.cat([clip.encode_text(tokens[i : i + 256]).float() for i in range(0, len(tokens), 256)])
        synchronize(device)
        timings["clip_text"] = time.perf_counter() - start

        summaries = {layer: [] for layer in LAYERS}
        hooks = [getattr(resnet, layer).register_forward_hook(
            lambda m, i, o, layer=layer: summaries[layer].append(o.mean(dim=[2, 3]))) for layer in LAYERS]
        start = time.perf_counter()
        for _, t in batches:
            resnet(t.to(device, non_blocking=True))
        synchronize(device)
        timings["target_forward"] = time.perf_counter() - start
        for h in hooks:
            h.remove()

        start = time.perf_counter()
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        clip_feats = image_features @ text_features.T
        for layer in LAYERS:
            soft_wpmi(clip_feats, torch.cat(summaries[layer])).max(dim=1)
        synchronize(device)
        timings["similarity"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    json.dump(timings, sys.stdout)
    print()


def similarity(args):
    """SoftWPMI on random inputs of the given size, as bench/similarity.cpp makes them."""
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 512, generator=g).to(args.device)
    texts = torch.randn(args.concepts, 512, generator=g).to(args.device)
    activations = torch.randn(args.images, args.neurons, generator=g).clamp(min=0).to(args.device)
    synchronize(args.device)
    with torch.no_grad():
        start = time.perf_counter()
        images = images / images.norm(dim=-1, keepdim=True)
        texts = texts / texts.norm(dim=-1, keepdim=True)
        soft_wpmi(images @ texts.T, activations)
        synchronize(args.device)
    json.dump({"similarity": time.perf_counter() - start}, sys.stdout)
    print()


def preprocess(args):
    torch.set_num_threads(1)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(args.dir, "probe")) for f in fs)
    paths = paths[: args.images]
    dataset = ProbeImages(paths)
    decoded = [Image.open(p).convert("RGB") for p in paths]

    def rate(work):  # best of 3 passes over the images
        best = min(timed(work) for _ in range(3))
        return len(paths) / best

    def timed(work):
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    json.dump({
        "decode": rate(lambda: [Image.open(p).convert("RGB") for p in paths]),
        "clip_geometry_normalize": rate(lambda: [dataset.clip_transform(i) for i in decoded]),
        "imagenet_geometry_normalize": rate(lambda: [dataset.target_transform(i) for i in decoded]),
        "preprocess_batch_both": rate(lambda: [dataset[i] for i in range(len(paths))]),
    }, sys.stdout)
    print()


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-inputs")
    make.add_argument("dir")
    make.add_argument("--images", type=int, default=200)
    make.add_argument("--concepts", type=int, default=2000)
    make.add_argument("--concept-list", required=True)
    go = sub.add_parser("run")
    go.add_argument("dir")
    go.add_argument("--threads", type=int, default=2)
    go.add_argument("--tokens", required=True)
    go.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sim = sub.add_parser("similarity")
    sim.add_argument("--images", type=int, default=50000)
    sim.add_argument("--concepts", type=int, default=20000)
    sim.add_argument("--neurons", type=int, default=2048)
    sim.add_argument("--threads", type=int, default=2)
    sim.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    pre = sub.add_parser("preprocess")
    pre.add_argument("dir")
    pre.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    {"make-inputs": make_inputs, "run": run, "similarity": similarity, "preprocess": preprocess}[args.command](args)


if __name__ == "__main__":
    main()
