"""`python -m stackbench` (and `accelerate launch -m stackbench ...`)."""
from .cli import main

if __name__ == "__main__":
    main()
