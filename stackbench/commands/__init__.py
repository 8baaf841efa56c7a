"""Click commands, one module per command family; each parses, calls the library and prints."""
from .models import models, wall
from .theory import theory
from .generate import generate
from .publish import publish

COMMANDS = [models, wall]
COMMANDS.append(theory)
COMMANDS.append(generate)
COMMANDS.append(publish)
from .evaluate import evaluate, methods  # noqa: E402
COMMANDS += [evaluate, methods]
from .train import train  # noqa: E402
COMMANDS.append(train)
