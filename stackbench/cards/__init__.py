"""The cards stackbench writes, in one place: a dataset's (`dataset`), a trained model's (`model`) and the
board's (`board`), each rendered with huggingface_hub's card classes from a template in the top-level `cards/`
folder, and written by one atomic `save_card` (what `common` holds: licence, citation, the writer)."""
from .common import CARD, save_card

__all__ = ["CARD", "save_card"]
