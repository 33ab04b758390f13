#!/usr/bin/python3
"""Writes the small hand-made seed inputs of fuzz/seeds/<target>/ (Debian's torch and Pillow; run with /usr/bin/python3).

Small seeds keep each fuzzing run fast; scripts/fuzz.sh adds fixture files (read in place) as further seeds."""
import collections
import io
import json
import struct
import zipfile
from pathlib import Path

import torch
from PIL import Image

SEEDS = Path(__file__).resolve().parent / "seeds"


def write(target, name, data):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def saved(obj, **kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def state_dicts():
    torch.manual_seed(0)
    plain = collections.OrderedDict(
        weight=torch.randn(2, 3), bias=torch.arange(3, dtype=torch.float16), steps=torch.tensor(7))
    strided = {"t": torch.randn(3, 4).t(), "view": torch.randn(6)[2:5], "flag": torch.tensor([True, False])}
    nested = {"epoch": 3, "state_dict": {"module.fc.weight": torch.randn(2, 2).double()}, "arch": "resnet"}
    return {"plain": plain, "strided": strided, "nested": nested}


def torch_seeds():
    for name, obj in state_dicts().items():
        archive = saved(obj)
        write("torch_zip", f"{name}.pt", archive)
        write("zip_archive", f"{name}.pt", archive)
        with zipfile.ZipFile(io.BytesIO(archive)) as zip_file:
            pickle = next(n for n in zip_file.namelist() if n.endswith("/data.pkl"))
            write("unpickler", f"{name}.pkl", zip_file.read(pickle))
        write("torch_legacy", f"{name}.pth.tar", saved(obj, _use_new_zipfile_serialization=False))
    script = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    buffer = io.BytesIO()
    torch.jit.save(script, buffer)
    write("torch_zip", "script.jit.pt", buffer.getvalue())
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zip_file:
        zip_file.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 20)
        zip_file.writestr("archive/stored", b"raw", compress_type=zipfile.ZIP_STORED)
    write("zip_archive", "deflated.zip", deflated.getvalue())


def safetensors_seed(name, tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    write("safetensors", name, struct.pack("<Q", len(text)) + text + data)


def image_seeds():
    gradient = Image.linear_gradient("L").resize((12, 10))
    rgb = Image.merge("RGB", [gradient, gradient.rotate(90), gradient.transpose(Image.FLIP_LEFT_RIGHT)])
    modes = {
        "1": gradient.convert("1"), "L": gradient, "LA": Image.merge("LA", [gradient, gradient]),
        "P": rgb.convert("P", palette=Image.ADAPTIVE, colors=5), "RGB": rgb, "RGBA": rgb.convert("RGBA"),
        "I16": gradient.convert("I").point(lambda v: v * 300).convert("I;16"),
    }
    for mode, picture in modes.items():
        out = io.BytesIO()
        picture.save(out, "PNG", **({"transparency": 2} if mode == "P" else {}))
        write("image", f"{mode}.png", out.getvalue())
    for name, picture, options in [("L", gradient, {}), ("rgb444", rgb, {"subsampling": 0}),
                                   ("rgb420", rgb, {"subsampling": 2}), ("progressive", rgb, {"progressive": True}),
                                   ("cmyk", rgb.convert("CMYK"), {})]:
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=80, **options)
        write("image", f"{name}.jpg", out.getvalue())


def text_seeds():
    write("label_files", "descriptions.csv",
          b'layer,unit,description,similarity\nfc,0,dog,0.5\nfc,1,"cat, tabby",0.25\nlayer4,0,"say ""hi""",0.1\n')
    write("label_files", "netdissect.csv", b"unit,category,label,score\r\n1,object,dog,0.1\r\n2,color,red,0.2\r\n")
    write("label_files", "broden_index.csv", b"image,split,ih,iw,sh,sw,color\nade20k/a.jpg,train,1,1,1,1,x.png\n")
    write("label_files", "labels.txt", b"tench, Tinca tinca\ngoldfish\r\ngreat white shark\n")
    for name, text in [("ascii", "a photo of a dog, 2 cats & the <|endoftext|> man's"),
                       ("unicode", "Ünïcödé naïve café ½ 日本語 İstanbul ΣΑΣ 👍🏽 &amp;amp; \t\u00a0x")]:
        for target in ("clip_bpe_text", "wordpiece_text"):
            write(target, f"{name}.txt", text.encode())


def main():
    torch_seeds()
    safetensors_seed("small.safetensors",
                     {"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), "b": ("F16", [2], b"\x00\x3c\x00\x40"),
                      "i": ("I64", [], struct.pack("<q", 5)), "e": ("U8", [0, 3], b"")},
                     {"format": "pt"})
    image_seeds()
    text_seeds()


if __name__ == "__main__":
    main()
