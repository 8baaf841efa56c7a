"""Click commands, one module per command family; each parses, calls the library and prints."""
from .models import models, wall

COMMANDS = [models, wall]
