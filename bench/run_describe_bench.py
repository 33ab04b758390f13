#!/usr/bin/python3
"""End-to-end benchmark: `clipdissect describe` next to the PyTorch baseline of the same stages, same inputs,
same run. Random-weight CLIP ViT-B/16 and ResNet-50, synthetic 500x375 JPEGs, the first K words of 20k.txt,
layers conv1 and layer1..layer4, SoftWPMI. Prints medians per stage, peak memory and ratios.

  bench/run_describe_bench.py [--images 200] [--concepts 2000] [--threads 2] [--repeats 3]
  bench/run_describe_bench.py --images 2000 --concepts 20000      # the large setting
  bench/run_describe_bench.py --images 10000 --concepts 20000 --device cuda --threads 16 --repeats 1
      # on a GPU: clipdissect --device cuda (fp16 CLIP, fp32 target, batches of 256) next to PyTorch on cuda
Needs the build (scripts/setup.sh), the fixtures (for 20k.txt and the BPE file) and python3-torch.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = ["decode_and_preprocess", "clip_image", "clip_text", "target_forward", "similarity", "total"]


def measure_in_child(command, env):
    """Peak RSS of exactly this command: a fresh Python child waits for it and reports its ru_maxrss."""
    probe = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
             "sys.stderr.write(r.stderr); r.check_returncode();"
             "print(json.dumps({'out': r.stdout, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    out = subprocess.run([sys.executable, "-c", probe] + command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)  # the command's own error, which the failure alone would hide
        out.check_returncode()
    result = json.loads(out.stdout)
    return result["out"], result["rss"] / 1024.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concepts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--build", default=os.environ.get("BUILD_DIR", os.path.join(ROOT, "build")))
    parser.add_argument("--work", default=os.environ.get("BENCH_DIR", "/tmp/clipdissect-bench"))
    args = parser.parse_args()
    fixtures = os.environ.get("CLIPDISSECT_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    work = os.path.join(args.work, f"describe-{args.images}-{args.concepts}")
    os.makedirs(work, exist_ok=True)
    py = sys.executable

    models = args.work
    if not os.path.exists(os.path.join(models, "clip_vit_b16.pt")):
        subprocess.run([py, os.path.join(HERE, "torch_baseline.py"), "make-models", models], env=env, check=True)
    for name in ("clip_vit_b16.pt", "resnet50.pth"):
        if not os.path.exists(os.path.join(work, name)):
            os.symlink(os.path.join(models, name), os.path.join(work, name))
    if not os.path.exists(os.path.join(work, "concepts.txt")):
        subprocess.run([py, os.path.join(HERE, "torch_describe_baseline.py"), "make-inputs", work, "--images",
                        str(args.images), "--concepts", str(args.concepts), "--concept-list",
                        os.path.join(fixtures, "concepts", "20k.txt")], env=env, check=True)
    bpe = os.path.join(fixtures, "clip", "bpe_simple_vocab_16e6.txt.gz")
    cli = os.path.join(args.build, "clipdissect")
    tokens = os.path.join(work, "tokens.txt")
    with open(os.path.join(work, "concepts.txt")) as f, open(tokens, "w") as out:
        subprocess.run([cli, "tokenize", "--bpe", bpe], stdin=f, stdout=out, check=True)

    ours, theirs = {s: [] for s in STAGES}, {s: [] for s in STAGES}
    ours_rss, theirs_rss = [], []
    for r in range(args.repeats):
        out_dir = os.path.join(work, f"out{r}")
        _, rss = measure_in_child([cli, "describe", "--clip", os.path.join(work, "clip_vit_b16.pt"), "--target",
                                   os.path.join(work, "resnet50.pth"), "--probe", os.path.join(work, "probe"),
                                   "--concepts", os.path.join(work, "concepts.txt"), "--layers",
                                   "conv1,layer1,layer2,layer3,layer4", "--bpe", bpe, "--threads", str(args.threads),
                                   "--no-cache", "--quiet", "--top-images", "0", "--out", out_dir,
                                   "--device", args.device, "--batch-size", "256" if args.device == "cuda" else "32"],
                                  env)
        with open(os.path.join(out_dir, "run.json")) as f:
            seconds = json.load(f)["seconds"]
        for s in STAGES:
            ours[s].append(seconds[s])
        ours_rss.append(rss)
        out, rss = measure_in_child([py, os.path.join(HERE, "torch_describe_baseline.py"), "run", work, "--threads",
                                     str(args.threads), "--tokens", tokens, "--device", args.device], env)
        timings = json.loads(out)
        for s in STAGES:
            theirs[s].append(timings[s])
        theirs_rss.append(rss)

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "unknown")
    if args.device == "cuda":
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip()
        model = f"{gpu} with {model}"
    print(f"machine: {model}, {os.cpu_count()} cores; {args.threads} threads; {args.images} images (500x375 JPEG), "
          f"{args.concepts} concepts, layers conv1,layer1..layer4, SoftWPMI; medians of {args.repeats} runs")
    print("| stage | clipdissect s | PyTorch baseline s | speed-up |")
    print("|---|---|---|---|")
    for s in STAGES:
        a, b = statistics.median(ours[s]), statistics.median(theirs[s])
        print(f"| {s} | {a:.2f} | {b:.2f} | {b / a:.1f}x |" if a > 0 else f"| {s} | {a:.2f} | {b:.2f} | - |")
    print(f"| peak memory MiB | {statistics.median(ours_rss):.0f} | {statistics.median(theirs_rss):.0f} | |")


if __name__ == "__main__":
    main()
