"""``gpuconv evaluate``: test-set report of a saved model (placeholder, filled below)."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="report a saved model's test-set accuracy")
    return p
