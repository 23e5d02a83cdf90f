"""Train a small 2D keypoint regressor on a synthgen run: the model of how synthgen feeds training.

    python examples/train_regressor.py out/quickstart [--epochs 30] [--out train_regressor_out]

1. read the shards with :func:`synthgen.data.load_shards` (``flat=True``: one subject per image);
2. cut HMR2-style square crops from ``center`` / ``scale`` (box side ``scale * 200``, padded);
3. augment as HMR2 does: flip (left/right keypoints swapped), rotation, scale, with the keypoints
   moved by the same affine map as the pixels;
4. train a small pure-torch network (heatmaps + soft-argmax) on samples whose index is not a
   multiple of ``--val-every``; those are held out;
5. report held-out PCK@0.1 (a keypoint counts when within 0.1 x the box side, ``max(w, h)``)
   before and after training, a learning-curve PNG, and, as the last stdout line, JSON with
   ``pck_before`` and ``pck_after``.

Only keypoints inside the image (visibility 1 or 2) are trained on and scored: synthetic labels
are exact even where a body part is hidden.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from synthgen.data import load_shards
from synthgen.errors import UserError

log = logging.getLogger("train_regressor")

STORE = 128      # stored crop side (pixels): the padded box, room for rotation/scale augmentation
STORE_PAD = 1.6  # stored crop = 1.6 x the box side
CROP_PAD = 1.2   # network crop = 1.2 x the box side (HMR2's padding)


# --- data ------------------------------------------------------------------------------------------
def flip_permutation(names: list[str]) -> np.ndarray:
    """(K,) index of each keypoint's mirror (left_* <-> right_*; others map to themselves)."""
    index = {n: k for k, n in enumerate(names)}
    swap = {"left_": "right_", "right_": "left_"}
    out = [index.get(next((swap[p] + n[len(p):] for p in swap if n.startswith(p)), n), k)
           for k, n in enumerate(names)]
    return np.asarray(out)


def box_affine(center: np.ndarray, side: float, out_size: int, rot_deg: float = 0.0,
               flip: bool = False) -> np.ndarray:
    """(2, 3) map from image pixels to an ``out_size`` crop of a square box of ``side`` pixels
    about ``center``, rotated by ``rot_deg`` (counter-clockwise in the crop), mirrored if ``flip``."""
    s = out_size / side
    c, n = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    A = s * np.array([[c, n], [-n, c]])
    if flip:
        A = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ A
    half = (out_size - 1) / 2.0
    return np.hstack([A, (np.array([half, half]) - A @ center)[:, None]])


def apply_affine(M: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, 2) points through the (2, 3) affine ``M``."""
    return points @ M[:, :2].T + M[:, 2]


def _count(run: str) -> int | None:
    """Samples in a run folder (its manifest), for the progress bar; None for a shard path."""
    manifest = Path(run) / "manifest.json"
    return json.loads(manifest.read_text()).get("num_samples_written") if manifest.is_file() else None


def load_crops(run: str, limit: int | None) -> dict:
    """Every sample's padded crop (N, STORE, STORE, 3) uint8, keypoints in crop pixels (N, K, 2),
    visibility (N, K), box side in crop pixels (N,), sample index (N,), keypoint names."""
    crops, points, vis, index, names = [], [], [], [], None
    total = min(filter(None, [limit, _count(run)]), default=None)
    for item in tqdm(load_shards(run, flat=True), total=total, desc="read", unit="sample"):
        side = float(item["scale"]) * 200.0
        if side < 2:
            continue  # subject not seen
        M = box_affine(item["center"], STORE_PAD * side, STORE)
        crops.append(cv2.warpAffine(item["image"], M, (STORE, STORE), flags=cv2.INTER_AREA))
        points.append(apply_affine(M, item["keypoints_2d"][:, :2]))
        vis.append(item["keypoints_2d"][:, 2] > 0)
        index.append(item["labels"]["index"])
        names = names or list(item["instances"][0]["keypoint_names"])
        if limit and len(crops) >= limit:
            break
    if not crops:
        raise UserError(f"{run}: no sample shows its subject; nothing to train on")
    return {"crops": np.stack(crops), "points": np.float32(points), "vis": np.stack(vis),
            "index": np.asarray(index), "names": names, "side": STORE / STORE_PAD}


def batch(data: dict, rows: np.ndarray, size: int, rng: np.random.Generator | None, flip_perm: np.ndarray):
    """Network inputs (B, 3, size, size) float32, targets (B, K, 2) in [-0.5, 0.5] crop units,
    visibility (B, K). ``rng`` None = no augmentation. HMR2's ranges: scale 1 +- 0.3, rotation
    +-60 deg (N(0, 30) clipped, 60% of the time), flip half the time."""
    images, targets, vis = [], [], []
    centre = np.full(2, (STORE - 1) / 2.0)
    for r in rows:
        scale, rot, flip = 1.0, 0.0, False
        if rng is not None:
            scale = 1.0 + 0.3 * float(np.clip(rng.standard_normal(), -1, 1))
            rot = 30.0 * float(np.clip(rng.standard_normal(), -2, 2)) if rng.random() < 0.6 else 0.0
            flip = rng.random() < 0.5
        M = box_affine(centre, CROP_PAD * data["side"] * scale, size, rot, flip)
        image = cv2.warpAffine(data["crops"][r], M, (size, size), flags=cv2.INTER_LINEAR)
        pts, v = apply_affine(M, data["points"][r]), data["vis"][r]
        if flip:
            pts, v = pts[flip_perm], v[flip_perm]
        images.append(image)
        targets.append(pts / size - 0.5)
        vis.append(v & (np.abs(pts / size - 0.5) < 0.5).all(axis=1))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(np.float32(targets)), torch.from_numpy(np.stack(vis))


# --- model -----------------------------------------------------------------------------------------
def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class KeypointNet(nn.Module):
    """(B, 3, S, S) -> (B, K, 2) keypoints in [-0.5, 0.5] crop units: heatmaps at S/4, soft-argmax."""

    def __init__(self, num_keypoints: int, width: int = 32):
        super().__init__()
        self.down4 = nn.Sequential(conv(3, width, 2), conv(width, width), conv(width, 2 * width, 2),
                                   conv(2 * width, 2 * width))
        self.down16 = nn.Sequential(conv(2 * width, 4 * width, 2), conv(4 * width, 4 * width),
                                    conv(4 * width, 4 * width, 2), conv(4 * width, 4 * width))
        self.head = nn.Sequential(conv(6 * width, 2 * width), nn.Conv2d(2 * width, num_keypoints, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.down4(x)
        coarse = nn.functional.interpolate(self.down16(fine), size=fine.shape[-2:], mode="bilinear",
                                           align_corners=False)
        heat = self.head(torch.cat([fine, coarse], dim=1))
        b, k, h, w = heat.shape
        prob = heat.flatten(2).softmax(-1).view(b, k, h, w)
        xs = (torch.arange(w, dtype=heat.dtype) + 0.5) / w - 0.5
        ys = (torch.arange(h, dtype=heat.dtype) + 0.5) / h - 0.5
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


# --- training and scoring --------------------------------------------------------------------------
@torch.no_grad()
def pck(model: nn.Module, data: dict, rows: np.ndarray, size: int, flip_perm: np.ndarray) -> float:
    """Held-out PCK@0.1: share of in-image keypoints within 0.1 x the box side (unaugmented crops)."""
    model.eval()
    hits = total = 0
    for start in range(0, len(rows), 64):
        x, target, vis = batch(data, rows[start:start + 64], size, None, flip_perm)
        err = (model(x) - target).norm(dim=-1) * CROP_PAD  # in box sides (the crop is 1.2 boxes)
        hits += int(((err < 0.1) & vis).sum())
        total += int(vis.sum())
    return hits / max(total, 1)


def train(data: dict, args) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # softmax tails underflow to denormals: 10-100x slower CPU arithmetic
    rng = np.random.default_rng(args.seed)
    held = data["index"] % args.val_every == 0
    train_rows, val_rows = np.flatnonzero(~held), np.flatnonzero(held)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise UserError(f"--val-every {args.val_every}: leaves {len(train_rows)} training and {len(val_rows)} "
                        f"held-out samples; use more samples or another --val-every")
    flip_perm = flip_permutation(data["names"])
    model = KeypointNet(len(data["names"]), args.width)
    steps = args.epochs * math.ceil(len(train_rows) / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    curve = {"epoch": [0], "loss": [float("nan")], "pck": [pck(model, data, val_rows, args.size, flip_perm)]}
    log.info("%d training / %d held-out samples, %d keypoints; untrained held-out PCK@0.1 %.3f",
             len(train_rows), len(val_rows), len(data["names"]), curve["pck"][0])
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses = []
        for rows in np.array_split(rng.permutation(train_rows), math.ceil(len(train_rows) / args.batch_size)):
            x, target, vis = batch(data, rows, args.size, rng, flip_perm)
            loss = ((model(x) - target).abs().sum(-1) * vis).sum() / vis.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        score = pck(model, data, val_rows, args.size, flip_perm) if epoch % args.eval_every == 0 or \
            epoch == args.epochs else float("nan")
        curve["epoch"].append(epoch), curve["loss"].append(float(np.mean(losses))), curve["pck"].append(score)
        log.info("epoch %d/%d  loss %.4f  held-out PCK@0.1 %s  (%.0f s)", epoch, args.epochs, np.mean(losses),
                 "-" if math.isnan(score) else f"{score:.3f}", time.perf_counter() - start)
    return {"curve": curve, "train_samples": len(train_rows), "val_samples": len(val_rows), "model": model}


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["epoch"][1:], curve["loss"][1:], color="tab:blue", label="training loss (L1, crop units)")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    pts = [(e, p) for e, p in zip(curve["epoch"], curve["pck"]) if not math.isnan(p)]
    ax2.plot(*zip(*pts), "o-", color="tab:orange", label="held-out PCK@0.1")
    ax2.set_ylabel("held-out PCK@0.1", color="tab:orange"), ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the --out folder of a synthgen run (or a shard .tar)")
    p.add_argument("--out", default="train_regressor_out", help="folder for the learning curve and weights")
    p.add_argument("--max-samples", type=int, default=None, help="read at most this many samples")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=64, help="network input side, pixels")
    p.add_argument("--width", type=int, default=16, help="channels of the first layer")
    p.add_argument("--val-every", type=int, default=5, help="samples whose index is a multiple of this are held out")
    p.add_argument("--eval-every", type=int, default=5, help="held-out PCK every this many epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads; on a shared 2-core machine two "
                   "OpenMP threads ran a step 25x slower than one (they spin-wait for each other)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "size", "width", "val_every", "eval_every", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        data = load_crops(args.run, args.max_samples)
        result = train(data, args)
    except UserError as exc:
        sys.stderr.write(f"train_regressor: error: {exc}\n")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(result["curve"], out / "learning_curve.png")
    torch.save(result["model"].state_dict(), out / "keypoint_net.pt")
    curve = result["curve"]
    summary = {"pck_before": round(curve["pck"][0], 4), "pck_after": round(curve["pck"][-1], 4),
               "train_samples": result["train_samples"], "val_samples": result["val_samples"],
               "epochs": args.epochs, "keypoints": len(data["names"]), "seconds": round(time.perf_counter() - start, 1),
               "learning_curve": str(out / "learning_curve.png")}
    log.info("held-out PCK@0.1 %.3f -> %.3f; learning curve %s", summary["pck_before"], summary["pck_after"],
             summary["learning_curve"])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
