"""Zero-shot CLIP check that both generated objects show the class (`--verify`, `--min-verify`)."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import StackbenchError, first_line

TEMPLATE = "a photo of a {}"


class ClipVerifier:
    """Scores image crops against every class name; the score of a crop is the softmax probability of
    the item's own class among all classes (so it is comparable across class counts)."""

    def __init__(self, ref: str, class_names: Sequence[str], device: str | torch.device = "cpu",
                 template: str = TEMPLATE):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(ref).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(ref)
        except (OSError, ValueError) as e:
            raise StackbenchError(f"--verify-model {ref}: not a loadable CLIP model and processor "
                                  f"({first_line(e, 160)}); give a Hub id or a folder saved with "
                                  "CLIPModel.save_pretrained + CLIPProcessor.save_pretrained") from None
        self.device = torch.device(device)
        text = self.processor(text=[template.format(n) for n in class_names], return_tensors="pt", padding=True)
        with torch.no_grad():
            feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in text.items()})
        feats = getattr(feats, "pooler_output", feats)
        self.text = torch.nn.functional.normalize(feats, dim=-1)

    @torch.no_grad()
    def scores(self, crops: list, labels: Sequence[int]) -> list[float]:
        """One score per (crop, label)."""
        pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        feats = self.model.get_image_features(pixel_values=pixels)
        feats = torch.nn.functional.normalize(getattr(feats, "pooler_output", feats), dim=-1)
        probs = (self.model.logit_scale.exp() * feats @ self.text.T).softmax(dim=-1)
        return [round(float(probs[i, lab]), 6) for i, lab in enumerate(labels)]
