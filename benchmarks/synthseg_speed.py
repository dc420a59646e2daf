"""Time and peak memory of one SynthSeg segmentation (port), for the README numbers.

    python benchmarks/synthseg_speed.py --weights tests/data/synthseg/synthseg2_tiny.h5 --threads 2
    python benchmarks/synthseg_speed.py --official 2.0 --threads 2     # random weights, official widths

Runs on nilearn's 1 mm MNI template (197 x 233 x 189) when nilearn is installed, else on a
synthetic 1 mm head. Peak memory is the process's maximum resident set size, so run one
configuration per process.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _test_volume() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        import nibabel as nib
        import nilearn.datasets

        path = Path(nilearn.datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        img = nib.load(path)
        return np.asarray(img.dataobj).astype(np.float32), img.affine, "MNI152 2009a 1 mm"
    except Exception:  # pragma: no cover - nilearn missing
        shape = (197, 233, 189)
        grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        r = np.sqrt(sum(g ** 2 for g in grid))
        return (100.0 * (r < 0.8) + 50.0 * (r < 0.5)).astype(np.float32), np.eye(4), "synthetic 1 mm head"


def _official_network(version: str):
    """Official architecture with random weights: same compute and memory as the real file."""
    from .model import SynthSegNetwork
    from .unet import UNetSpec

    def spec(prefix, cin, width, kernel, labels, concat=(True,) * 4):
        return UNetSpec(prefix, cin, tuple(width * 2 ** i for i in range(5)), kernel, 2, concat, labels)

    if version == "robust":
        specs = [spec("unet", 1, 24, 3, 5), spec("l2l", 5, 16, 5, 5, (True, True, False, False)),
                 spec("unet2", 6, 24, 3, 33)]
    else:
        specs = [spec("unet", 1, 24, 3, 33)]
    net = SynthSegNetwork(specs)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.mul_(0.5)
    return net.eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="SynthSeg .h5 or .safetensors")
    parser.add_argument("--official", choices=["2.0", "robust"], help="random weights at official widths")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crop", default="head", choices=["head", "auto", "none"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from .model import load_network
    from .pipeline import segment

    image, affine, source = _test_volume()
    net = _official_network(args.official) if args.official else load_network(args.weights)
    base = _peak_mib()
    start = time.perf_counter()
    result = segment(image, affine, net, robust=net.robust, device=args.device, threads=args.threads,
                     crop=None if args.crop == "none" else args.crop)
    seconds = time.perf_counter() - start
    report = {
        "model": net.name, "widths": [s.features[0] for s in net.specs], "input": source,
        "input_shape": list(image.shape), "window": list(result.info["window_shape"]), "crop": args.crop,
        "threads": args.threads, "device": args.device, "seconds": round(seconds, 1),
        "peak_rss_mib": round(_peak_mib()), "rss_before_mib": round(base),
    }
    if args.device.startswith("cuda"):
        report["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
