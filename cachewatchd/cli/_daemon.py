"""Subcommands (placeholder until implemented)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:  # argparse's _SubParsersAction
    """Add this module's subcommands to *sub*."""
    _ = sub, argparse
