"""Images per second: skdeepclust's ImageEmbedder against the naive way, in one run.

Three ways to embed the same host uint8 array (N, 224, 224, 3), random weights:

* model only: timm's model and a resident input already on the device, both in
              the compute dtype (bf16 on CUDA, float32 on the CPU) and the
              package's memory format (channels-last for convolutional nets);
              the ceiling;
* package:    ``ImageEmbedder(...).transform(array)`` with its defaults (the
              batch size it picks is used for all three);
* baseline:   the way many users write it: a torchvision ``transforms`` pipeline per
              image in a ``DataLoader``, float32, ``model(x)`` per batch.

With ``--compile`` the model-only and package rows both use ``torch.compile``.

Achieved model FLOP/s are counted with ``torch.utils.flop_counter`` on one batch.
On CUDA their share of a peak bf16 rate is printed; the default peak, 790 TFLOP/s,
is the dense bf16 matrix rate measured on this workplace's H200/H100 machines
(``--peak-tflops`` sets another).

    python benchmarks/bench_embed.py --device cpu --n-images 128
    python benchmarks/bench_embed.py --device cuda --n-images 8192 [--compile]
"""

from __future__ import annotations

import argparse

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from _timing import synchronize, timed
from skdeepclust import ImageEmbedder
from skdeepclust._device import resolve_device

MODELS = ("vit_small_patch16_224", "vit_base_patch16_224", "resnet18")


def best_times(functions, device, repeats):
    """Best wall time of each function over ``repeats`` rounds, after one warm-up call each.

    Each round calls every function once, so that a slow spell of a shared
    machine hits all of them alike rather than whichever ran during it.
    """
    best = dict.fromkeys(functions, float("inf"))
    for round_number in range(repeats + 1):
        for name, function in functions.items():
            synchronize(device)
            seconds, _ = timed(function, device)
            if round_number > 0:
                best[name] = min(best[name], seconds)
    return best


class _NaiveDataset(Dataset):
    def __init__(self, array, mean, std):
        self.array = array
        self.transform = transforms.Compose(
            [transforms.ToPILImage(), transforms.Resize(224), transforms.CenterCrop(224),
             transforms.ToTensor(), transforms.Normalize(mean, std)]
        )

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        return self.transform(self.array[index])


def naive_embed(model, array, mean, std, batch_size, device, workers):
    loader = DataLoader(_NaiveDataset(array, mean, std), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    outputs = []
    with torch.no_grad():
        for batch in loader:
            outputs.append(model(batch.to(device)).cpu())
    return torch.cat(outputs)


def flops_per_image(model, device):
    probe = torch.zeros(8, 3, 224, 224, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(probe)
    return counter.get_total_flops() / 8


def bench_model(name, args, device):
    torch.manual_seed(0)
    array = np.random.default_rng(0).integers(0, 256, (args.n_images, 224, 224, 3), dtype=np.uint8)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    embedder = ImageEmbedder(name, pretrained=False, batch_size=batch_size, device=device,
                             compile=args.compile, random_state=0)
    embedder.fit(array[:1])
    runtime = embedder._runtime_on(device)
    batch_size, compute_dtype = runtime.batch_size, runtime.dtype

    model = timm.create_model(name, pretrained=False, num_classes=0).eval().to(device)
    config = timm.data.resolve_model_data_config(model)
    flops = flops_per_image(model, device)
    # The ceiling runs in the package's memory format (channels-last for a
    # convolutional net), so that package / model only compares the feeding alone.
    resident = torch.randn(batch_size, 3, 224, 224, device=device, dtype=compute_dtype)
    resident = resident.contiguous(memory_format=runtime.memory_format)
    model_for_dtype = model.to(compute_dtype, memory_format=runtime.memory_format)
    if args.compile:
        model_for_dtype = torch.compile(model_for_dtype)
    batches = max(1, args.n_images // batch_size)

    def model_only():
        with torch.inference_mode():
            for _ in range(batches):
                model_for_dtype(resident)

    baseline_model = timm.create_model(name, pretrained=False, num_classes=0).eval().to(device)
    seconds = best_times(
        {
            "model_only": model_only,
            "package": lambda: embedder.transform(array),
            "baseline": lambda: naive_embed(baseline_model, array, config["mean"], config["std"], batch_size,
                                            device, args.baseline_workers),
        },
        device,
        args.repeats,
    )
    model_seconds = seconds["model_only"] / (batches * batch_size)
    package_seconds = seconds["package"] / args.n_images
    baseline_seconds = seconds["baseline"] / args.n_images

    row = dict(
        model=name,
        batch_size=batch_size,
        model_only=1 / model_seconds,
        package=1 / package_seconds,
        baseline=1 / baseline_seconds,
        gflop_per_image=flops / 1e9,
    )
    row["package_vs_baseline"] = row["package"] / row["baseline"]
    row["package_vs_model_only"] = row["package"] / row["model_only"]
    row["package_tflops"] = row["package"] * flops / 1e12
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--batch-size", default="auto", help="an integer, or 'auto' (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model-only and package rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-workers", type=int, default=0,
                        help="DataLoader workers of the naive baseline (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="peak bf16 TFLOP/s of the GPU, for the share column (default: %(default)s)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; {args.n_images} images of 224x224, batch {args.batch_size}, "
          f"{'compiled' if args.compile else 'eager'}, best of {args.repeats} interleaved rounds; "
          f"torch {torch.__version__}, timm {timm.__version__}")
    header = (f"{'model':24} {'batch':>5} {'model only':>11} {'package':>9} {'baseline':>9} {'pkg/base':>9} "
              f"{'pkg/model':>10} {'GFLOP/img':>10} {'pkg TFLOP/s':>12}")
    if device.type == "cuda":
        header += f" {'% of peak':>10}"
    print(header + "   (images/s)")
    for name in args.models:
        row = bench_model(name, args, device)
        line = (f"{row['model']:24} {row['batch_size']:5d} {row['model_only']:11.1f} {row['package']:9.1f} {row['baseline']:9.1f} "
                f"{row['package_vs_baseline']:9.2f} {row['package_vs_model_only']:10.2f} "
                f"{row['gflop_per_image']:10.2f} {row['package_tflops']:12.3f}")
        if device.type == "cuda":
            line += f" {100 * row['package_tflops'] / args.peak_tflops:10.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
