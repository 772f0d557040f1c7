#!/usr/bin/python3
# Writes the image-preprocessing goldens of tests/image_test.cpp: a few tiny test images, the
# preprocessor_config.json variants (configs/*.json) and expected.safetensors, which holds, per
# image, the decoded uint8 pixels (<image>/decoded, HWC as PIL reads them) and the pixel_values
# (<image>/<config>, CHW float32) of HF's ViTImageProcessor / BeitImageProcessor (transformers
# 4.26): PIL resize -> [BEiT: center crop] -> rescale (float64, then float32) -> normalize
# (float32). Needs only Pillow and numpy (Debian: python3-pil python3-numpy); run it from any
# folder with /usr/bin/python3. The outputs are committed; rerun only to change them.
import json
import os
import struct

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    # ViT, bilinear: height 23 -> 32 (upscale), width 37 -> 16 (downscale, antialiased).
    "vit_bilinear": {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                     "size": {"height": 32, "width": 16}, "resample": 2, "do_rescale": True,
                     "rescale_factor": 0.00392156862745098, "do_normalize": True,
                     "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    # The legacy feature extractor: an int size, nearest neighbour, ImageNet mean and std.
    "vit_nearest": {"feature_extractor_type": "ViTFeatureExtractor", "size": 16, "resample": 0,
                    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    # BEiT, bicubic resize then a centre crop.
    "beit_bicubic_crop": {"image_processor_type": "BeitImageProcessor", "do_resize": True,
                          "size": {"height": 30, "width": 24}, "resample": 3, "do_center_crop": True,
                          "crop_size": {"height": 16, "width": 16}, "do_rescale": True,
                          "rescale_factor": 0.00392156862745098, "do_normalize": True,
                          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                          "do_reduce_labels": False},
    # BEiT: [height, width] as a list; a crop taller than the image (zero rows added); no normalize.
    "beit_pad": {"image_processor_type": "BeitImageProcessor", "size": [12, 52], "resample": 3,
                 "do_center_crop": True, "crop_size": {"height": 16, "width": 24}, "do_normalize": False},
    # No resize, no rescale: normalize the raw values with a scalar mean and std.
    "plain": {"do_resize": False, "do_rescale": False, "do_normalize": True, "image_mean": 127.5,
              "image_std": 127.5},
    # Grayscale (a model with num_channels 1).
    "gray_bilinear": {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16},
                      "resample": 2, "image_mean": [0.5], "image_std": [0.5]},
}

VIT_DEFAULTS = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2,
                "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
BEIT_DEFAULTS = dict(VIT_DEFAULTS, size={"height": 256, "width": 256}, resample=3,
                     do_center_crop=True, crop_size={"height": 224, "width": 224})

# Which configs each image is run through.
CASES = {
    "gradient.png": ["vit_bilinear", "vit_nearest", "beit_bicubic_crop", "beit_pad", "plain"],
    "photo.jpg": ["vit_bilinear", "beit_bicubic_crop"],
    "gray.png": ["gray_bilinear"],
    "rgba.png": [],
}


def make_images():
    rng = np.random.default_rng(0)
    h, w = 23, 37
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (w + h - 2)], -1)
    rgb = np.clip(rgb + rng.integers(-40, 41, rgb.shape), 0, 255).astype(np.uint8)
    rgb[5:9, 10:20] = [255, 0, 0]  # a hard edge: overshoot and clipping in bicubic
    Image.fromarray(rgb, "RGB").save(os.path.join(HERE, "gradient.png"))

    h, w = 40, 50
    y, x = np.mgrid[0:h, 0:w]
    photo = np.stack([128 + 100 * np.sin(x / 5.0), 128 + 100 * np.cos(y / 4.0), (x * y) % 256], -1)
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo, "RGB").save(os.path.join(HERE, "photo.jpg"), quality=90)

    gray = ((np.mgrid[0:15, 0:20].sum(0) * 9 + rng.integers(0, 30, (15, 20))) % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(os.path.join(HERE, "gray.png"))

    rgba = np.concatenate([rgb[:15, :20], np.full((15, 20, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(os.path.join(HERE, "rgba.png"))


def size_dict(size):  # transformers.image_processing_utils.get_size_dict (default_to_square)
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, list):
        return {"height": size[0], "width": size[1]}
    return size


def center_crop(image, height, width):  # transformers.image_transforms.center_crop, HWC
    orig_h, orig_w = image.shape[:2]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    bottom, right = top + height, left + width
    if top >= 0 and bottom <= orig_h and left >= 0 and right <= orig_w:
        return image[top:bottom, left:right]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w) + image.shape[2:], image.dtype)
    top_pad, left_pad = (new_h - orig_h) // 2, (new_w - orig_w) // 2
    padded[top_pad:top_pad + orig_h, left_pad:left_pad + orig_w] = image
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[max(0, top):min(new_h, bottom), max(0, left):min(new_w, right)]


def preprocess(pil, config):
    beit = config.get("image_processor_type", "").startswith("Beit")
    c = dict(BEIT_DEFAULTS if beit else VIT_DEFAULTS, **config)
    image = np.array(pil)
    if c["do_resize"]:
        s = size_dict(c["size"])
        image = np.array(pil.resize((s["width"], s["height"]), resample=c["resample"]))
    if beit and c["do_center_crop"]:
        s = size_dict(c["crop_size"])
        image = center_crop(image, s["height"], s["width"])
    if image.ndim == 2:
        image = image[:, :, None]
    if c["do_rescale"]:
        image = (image * c["rescale_factor"]).astype(np.float32)
    if c["do_normalize"]:
        image = image.astype(np.float32)
        channels = image.shape[-1]
        mean, std = c["image_mean"], c["image_std"]
        mean = mean if isinstance(mean, list) else [mean] * channels
        std = std if isinstance(std, list) else [std] * channels
        image = (image - np.array(mean, np.float32)) / np.array(std, np.float32)
    return np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1))


def write_safetensors(path, tensors):
    header, data, offset = {}, b"", 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}[array.dtype]
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def main():
    make_images()
    os.makedirs(os.path.join(HERE, "configs"), exist_ok=True)
    for name, config in CONFIGS.items():
        with open(os.path.join(HERE, "configs", name + ".json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    tensors = {}
    for image_name, configs in CASES.items():
        pil = Image.open(os.path.join(HERE, image_name))
        pil.load()
        decoded = np.array(pil)
        tensors[image_name + "/decoded"] = decoded if decoded.ndim == 3 else decoded[:, :, None]
        for config in configs:
            tensors[image_name + "/" + config] = preprocess(pil, CONFIGS[config])
    write_safetensors(os.path.join(HERE, "expected.safetensors"), tensors)


if __name__ == "__main__":
    main()
