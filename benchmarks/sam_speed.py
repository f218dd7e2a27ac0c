"""Speed of the SAM2.1 streaming tracker per frame: SAM2.1-tiny at several model input sizes.

Tracks a 256 x 256 synthetic sequence (a bright disk drifting over a smooth texture) with
:class:`regtrack.sam.SamTracker` and times each :meth:`~regtrack.sam.SamTracker.step`
(preprocessing, image encoder, memory attention, mask decoder, memory encoder, mask back to
the frame grid) after a warm-up that fills the memory bank, on the CPU and, when one is
there, on the GPU. The machine's load average is recorded: on a shared machine it matters. The weights are
random (no checkpoint can be downloaded here): the times hold for SAM2.1-tiny, the masks
mean nothing and no accuracy is claimed. Prints a table and writes JSON naming the machine.

    python benchmarks/sam_speed.py
    python benchmarks/sam_speed.py --sizes 1024 512 --frames 10 --warmup 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def sequence(n_frames: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk drifting over a smooth random texture, and its frame-0 mask."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 4) * 40 + 100
    rows, cols = np.indices((size, size))
    frames, first_mask = [], None
    for t in range(n_frames):
        disk = np.hypot(rows - size / 2 - 2 * t, cols - size / 2) <= 20
        frames.append(texture + 80 * disk + rng.normal(scale=5, size=(size, size)))
        first_mask = disk if first_mask is None else first_mask
    return np.stack(frames).astype(np.float32), first_mask


def random_sam21_tiny(folder: Path) -> Path:
    """SAM2.1-tiny with random weights, saved as the official files are."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    path = folder / "random_sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def time_tracker(checkpoint: Path, size: int, device: str, frames, mask, warmup: int) -> dict:
    """Load at ``size`` on ``device``, track, return step times after ``warmup`` steps."""
    from regtrack.sam import SamTracker, load_sam2_video

    start = time.perf_counter()
    model = load_sam2_video(checkpoint, device=device, image_size=size)
    load_s = time.perf_counter() - start
    tracker = SamTracker(model)
    init_ms = tracker.init(frames[0], mask).ms
    steps = [tracker.step(frame).ms for frame in frames[1:]][warmup:]
    return {
        **_encoder_ms(tracker, frames[0]),
        "image_size": size,
        "device": device,
        "load_s": round(load_s, 2),
        "init_ms": round(init_ms, 1),
        "timed_frames": len(steps),
        "median_ms": float(np.median(steps)),
        "min_ms": float(np.min(steps)),
        "max_ms": float(np.max(steps)),
        "stored_frames": tracker.stored_frames,
        "memory_frames": tracker.memory_frames,
    }


def _encoder_ms(tracker, frame: np.ndarray, repeats: int = 3) -> dict:
    """Median time of the image encoder alone (the rest of a step is mostly the memory
    attention, whose cost grows with the number of memory frames up to num_maskmem)."""
    import torch

    sync = torch.cuda.synchronize if tracker.device.type == "cuda" else (lambda: None)
    times = []
    with tracker._context():
        x = tracker._prepare(frame)
        for _ in range(repeats):
            start = time.perf_counter()
            tracker.model.forward_image(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return {"encoder_ms": float(np.median(times))}


def main(argv=None) -> int:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 512, 256, 128])
    parser.add_argument("--frames", type=int, default=3, help="timed frames per size")
    parser.add_argument(
        "--warmup",
        type=int,
        default=6,
        help="untimed steps; 6 fills SAM2.1's memory bank (num_maskmem - 1)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "sam_speed.json"
    )
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    frames, mask = sequence(1 + args.warmup + args.frames)
    print(
        "SAM2.1-tiny, RANDOM weights: timing only, no accuracy claimed; 256 x 256 frames, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(
        f"{'device':<7}{'image_size':>11}{'median ms':>11}{'min ms':>9}{'max ms':>9}"
        f"{'encoder ms':>12}{'init ms':>9}{'stored':>8}"
    )
    rows, load_before = [], os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = random_sam21_tiny(Path(folder))
        for device in devices:
            for size in args.sizes:
                row = time_tracker(checkpoint, size, device, frames, mask, args.warmup)
                rows.append(row)
                print(
                    f"{device:<7}{size:>11}{row['median_ms']:>11.1f}{row['min_ms']:>9.1f}"
                    f"{row['max_ms']:>9.1f}{row['encoder_ms']:>12.1f}{row['init_ms']:>9.1f}"
                    f"{row['stored_frames']:>8}",
                    flush=True,
                )
    gpu = torch.cuda.get_device_name() if "cuda" in devices else None
    report = {
        "benchmark": "sam_speed",
        "model": "SAM2.1-tiny, random weights (timing only)",
        "frame": [256, 256],
        "warmup_frames": args.warmup,
        "torch_threads": torch.get_num_threads(),
        "machine": {**machine(), "gpu": gpu},
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "results": rows,
    }
    report["machine"]["versions"]["sam2"] = _version("sam2")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")
    return 0


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
