"""Click commands, one module per command family; each parses, calls the library and prints."""
from .demo import demo, reproduce
from .evaluate import evaluate, methods
from .generate import generate
from .leaderboard import leaderboard, submit
from .models import models, wall
from .publish import publish
from .theory import theory
from .train import train

COMMANDS = [demo, reproduce, models, wall, generate, train, evaluate, methods, submit, leaderboard, publish, theory]
