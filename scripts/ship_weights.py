"""Ship a trained run as a zoo entry's weights: the fp16 safetensors file, its top-1/top-5 measured on the run's own
validation source *as shipped* (fp16 weights, loaded back in fp32), and its model card beside it.

    python scripts/ship_weights.py RUN_DIR            # writes stackbench/weights/<model>.safetensors and .md

Prints the `Weights(...)` line for stackbench/models/zoo.py (file, sha256, metrics).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stackbench.cards.model import render_card
from stackbench.datafolder import atomic_write_bytes
from stackbench.models import load_model
from stackbench.models.loading import _load_state, _read_safetensors
from stackbench.sources import open_source
from stackbench.train import export_weights, val_transform
from stackbench.train.config import TrainConfig

WEIGHTS = Path(__file__).resolve().parent.parent / "stackbench" / "weights"


@torch.no_grad()
def top_k(model, cfg: TrainConfig, batch: int = 50) -> dict:
    """Top-1 and top-5 of `model` on the run's validation source, with the run's validation transform."""
    src = open_source(cfg.val_source or cfg.source, split=cfg.val_split)
    tf = val_transform(cfg)
    hits1 = hits5 = n = 0
    for start in range(0, len(src), batch):
        items = [src.load(i) for i in range(start, min(len(src), start + batch))]
        x = torch.stack([tf(it.image) for it in items])
        y = torch.tensor([it.label for it in items])
        top = model(x).topk(5, dim=1).indices
        hits1 += int((top[:, 0] == y).sum())
        hits5 += int((top == y[:, None]).any(1).sum())
        n += len(items)
    return {"top1": hits1 / n, "top5": hits5 / n, "val_n": n}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    args = ap.parse_args()
    summary = json.loads((args.run / "train.json").read_text())
    cfg = TrainConfig.from_dict(summary["config"])
    name = summary["model"]
    dest = WEIGHTS / f"{name}.safetensors"
    sha = export_weights(args.run, dest)
    model = load_model(f"{name}@random")
    _load_state(model, _read_safetensors(dest, name), name)
    model.eval()
    m = top_k(model, cfg)
    split = f"{summary['sources']['val']['ref']} ({summary['sources']['val']['split']})"
    summary["metrics"] = {**summary["metrics"], **m, "split": split}
    summary["out"] = f"stackbench/weights/{dest.name}"
    card = render_card(summary)
    card.text += (f"\n\nThe metrics above are the shipped fp16 file's ({dest.name}, sha256 {sha}), loaded back in "
                  f"fp32; the run itself ended at {100 * summary['log'][-1]['top1']:.2f}% top-1.\n")
    atomic_write_bytes(WEIGHTS / f"{name}.md", str(card).encode())
    minutes = summary["timing"]["seconds"] / 60
    print(f'Weights(file="{dest.name}", sha256="{sha}",\n        metrics={{"top1": {m["top1"]:.3f}, "top5": '
          f'{m["top5"]:.3f}, "split": "{split}", "recipe": "stackbench train --preset {cfg.preset}'
          f'{"" if name == "minivit-masked" else f" --model {name}"}", "train_minutes": {minutes:.1f}}})')
    return 0


if __name__ == "__main__":
    sys.exit(main())
