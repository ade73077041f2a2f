"""``python -m cachewatchd``."""

from cachewatchd.cli import run

if __name__ == "__main__":
    run()
