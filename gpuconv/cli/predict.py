"""``gpuconv predict``: class probabilities for image files (placeholder, filled below)."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="classify images with a saved model")
    return p
