"""Speed of the IMPACT feature extractors per frame: MIND and SAM2.1-tiny Hiera layers.

Times one 256 x 256 frame through each extractor (after warm-up), on the CPU and, when one is
there, on the GPU. SAM2.1 is timed with a randomly initialised SAM2.1-tiny (speed does not
depend on the weights; nothing here says anything about accuracy). Prints a table and writes
JSON naming the machine.

    python benchmarks/features.py
    python benchmarks/features.py --repeats 50 --out benchmarks/results/features_gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _time_ms(function, repeats: int, synchronize) -> dict:
    for _ in range(3):
        function()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95))}


def _random_sam21_tiny(folder: Path) -> Path | None:
    try:
        import torch
        from sam2.build_sam import build_sam2
    except ImportError:
        return None
    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = folder / "random_sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def extractors(checkpoint: Path | None):
    """(name, factory) pairs; factories take a device."""
    from impact import MIND, SAM2HieraFeatures

    yield "mind (r1 d2 sigma1 floor1)", lambda device: MIND().to(device)
    if checkpoint is None:
        return
    for size in (256, 512, 1024):
        yield (
            f"sam2.1-tiny layers 0,1 @ {size}",
            lambda device, s=size: SAM2HieraFeatures(checkpoint, input_size=s, device=device),
        )


def main(argv=None) -> int:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "features.json"
    )
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    frame = torch.rand(1, 1, 256, 256)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = _random_sam21_tiny(Path(folder))
        for name, factory in extractors(checkpoint):
            for device in devices:
                model = factory(device).eval()
                x = frame.to(device)
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                with torch.inference_mode():
                    timing = _time_ms(lambda m=model, x=x: m(x), args.repeats, sync)
                rows.append({"extractor": name, "device": device, **timing})
                print(
                    f"{name:<34}{device:<6}{timing['median_ms']:>10.1f} ms median"
                    f"{timing['p95_ms']:>10.1f} ms p95",
                    flush=True,
                )
    report = {
        "benchmark": "features",
        "frame": [256, 256],
        "torch_threads": torch.get_num_threads(),
        "machine": {
            **machine(),
            "gpu": torch.cuda.get_device_name() if "cuda" in devices else None,
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
