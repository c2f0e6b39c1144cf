"""Shared fixtures: the repo root on sys.path (for tools.lab) and lab services."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
