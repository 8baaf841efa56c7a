"""Names and numbers the command line shows before any work starts (option choices, defaults, help text).

They live here, on the ground floor, because `stackbench --help` must not import torch: the heavy modules that
own the behaviour import these values from here (or a test checks that they agree), never the other way round.
This module imports nothing."""
from __future__ import annotations

# The 8 dihedral orientations of the square input, in `stackbench.wall.ORIENTATIONS`' order (a test checks it).
ORIENTATION_NAMES = ("identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "antitranspose")

# `stackbench.train.PRESETS`' names (a test checks it).
TRAIN_PRESETS = ("mini", "mini-vit", "paper")

# Every zoo model takes RGB in [0, 1] normalised with ImageNet's statistics (torchvision's convention); here, not in
# models/vgg.py, so that listing the methods does not import the model code (and huggingface_hub with it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The embedded `shapes` source's classes in label order (`stackbench.sources.shapes.CLASSES`); the mini models'
# outputs are these classes.
SHAPES_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "heart", "arrow", "lightning")

SOURCE_HELP = "shapes[:N][@SEED], imagefolder:PATH or hf:REPO[:CONFIG]"

# `stackbench demo`: images per set, and how many of them also get the board's axes (a seeded sample).
DEMO_IMAGES, QUICK_IMAGES = 100, 16
# The board's axes cost three explanations per image (Opti-CAM: 3 x 50 forward-backward passes), too many for a
# few minutes on a CPU: the demo measures them on a seeded sample of each set (the board on every image).
DEMO_AXES, QUICK_AXES = 20, 4
