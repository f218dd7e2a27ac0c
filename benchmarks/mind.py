"""MIND-SSC per frame, three ways: impact.MIND (torch), regtrack.mind (OpenCV) and numba.

The tracking path computes MIND for every frame before elastix starts, so its cost is paid on
every frame. This times one frame of each size (after warm-up; the numba kernel is compiled
first), checks that each agrees with impact.MIND, the reference the TorchScript export
keeps, and writes JSON naming the machine. numba is not a regtrack dependency: its row is
skipped, saying so, where it is not installed (``pip install numba`` to include it).

    python benchmarks/mind.py
    python benchmarks/mind.py --repeats 200 --out benchmarks/results/mind.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def numba_mind():
    """MIND-SSC with the defaults (r1, d2, sigma 1, variance floor 1) as one numba kernel,
    or None without numba. Same formula and float32 arithmetic as impact.MIND."""
    try:
        import numba
    except ImportError:
        return None
    from regtrack.mind import MIND_PAIRS, _gaussian

    pairs = np.array(MIND_PAIRS, np.int64).reshape(4, 4)
    kernel = _gaussian(1.0)

    @numba.njit(cache=False, fastmath=False)
    def mind(image, pairs, kernel, d, r, floor):
        rows, cols = image.shape
        low, high = image.min(), image.max()
        x = (image - low) / np.float32(high - low + 1e-6)
        half = kernel.size // 2
        tmp = np.empty_like(x)
        for i in range(rows):  # rows then columns, replicate borders
            for j in range(cols):
                acc = np.float32(0)
                for k in range(kernel.size):
                    acc += kernel[k] * x[i, min(max(j + k - half, 0), cols - 1)]
                tmp[i, j] = acc
        smooth = np.empty_like(x)
        for i in range(rows):
            for j in range(cols):
                acc = np.float32(0)
                for k in range(kernel.size):
                    acc += kernel[k] * tmp[min(max(i + k - half, 0), rows - 1), j]
                smooth[i, j] = acc
        sq = np.empty((4, rows, cols), np.float32)
        for c in range(4):
            ay, ax, by, bx = pairs[c]
            for i in range(rows):
                for j in range(cols):
                    a = smooth[min(max(i + ay * d, 0), rows - 1), min(max(j + ax * d, 0), cols - 1)]
                    b = smooth[min(max(i + by * d, 0), rows - 1), min(max(j + bx * d, 0), cols - 1)]
                    sq[c, i, j] = (a - b) * (a - b)
        dist = np.empty_like(sq)
        n = np.float32((2 * r + 1) ** 2)
        for c in range(4):
            for i in range(rows):
                for j in range(cols):
                    acc = np.float32(0)
                    for u in range(-r, r + 1):
                        for v in range(-r, r + 1):
                            acc += sq[c, min(max(i + u, 0), rows - 1), min(max(j + v, 0), cols - 1)]
                    dist[c, i, j] = acc / n
        var = np.empty((rows, cols), np.float32)
        for i in range(rows):
            for j in range(cols):
                low_d = min(dist[0, i, j], dist[1, i, j], dist[2, i, j], dist[3, i, j])
                total = np.float32(0)
                for c in range(4):
                    dist[c, i, j] -= low_d
                    total += dist[c, i, j]
                var[i, j] = total / np.float32(4)
        mean = np.float32(var.astype(np.float64).mean())
        for i in range(rows):
            for j in range(cols):
                v = min(max(var[i, j], mean * floor), mean * np.float32(1e3)) + np.float32(1e-9)
                for c in range(4):
                    dist[c, i, j] = np.exp(-dist[c, i, j] / v)
        return dist

    def run(image):
        return mind(np.asarray(image, np.float32), pairs, kernel, 2, 1, np.float32(1.0))

    return run


def main(argv=None) -> int:
    import torch

    from impact import MIND
    from regtrack.mind import mind_descriptors

    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import machine
    from features import _time_ms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mind.json")
    args = parser.parse_args(argv)
    reference_module = MIND()
    numba_version = numba_mind()
    rows = []
    for size in (256, 350):
        image = np.random.default_rng(0).random((size, size), dtype=np.float32) * 255

        def reference(image=image):
            with torch.inference_mode():
                return reference_module(torch.from_numpy(image)[None, None])[0][0].numpy()

        ways = {"impact.MIND (torch)": reference, "regtrack.mind (OpenCV)": mind_descriptors}
        if numba_version is not None:
            ways["numba kernel"] = numba_version
        expected = reference()
        for name, function in ways.items():
            timing = _time_ms(lambda f=function, x=image: f(x), args.repeats, lambda: None)
            difference = float(np.abs(function(image) - expected).max())
            rows.append({"way": name, "size": size, "max_abs_difference": difference, **timing})
            print(
                f"{name:<26}{size:>4} px {timing['median_ms']:>8.2f} ms median "
                f"{timing['p95_ms']:>8.2f} ms p95   max |diff| {difference:.1e}",
                flush=True,
            )
    if numba_version is None:
        print("numba is not installed: its row is left out (pip install numba)")
    report = {
        "benchmark": "mind",
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": __import__("cv2").getNumThreads(),
        "load_average": os.getloadavg(),
        "machine": machine(("numba",)),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
