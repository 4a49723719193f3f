#!/usr/bin/env python
"""Regenerate hub_cards/<name>/README.md for every published model (pretrained cfgs + card facts table).

    python scripts/make_cards.py            # rewrite hub_cards/ (stale folders removed)
    python scripts/make_cards.py --check    # exit 1 if the committed cards differ from a fresh generation
"""
import argparse
import sys
from pathlib import Path

import dcls_zoo  # noqa: F401  (registers the models the cards describe)
from dcls_zoo.hub.cards import diff_cards, write_cards

ROOT = Path(__file__).resolve().parents[1] / "hub_cards"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help=f"cards folder (default {ROOT})")
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args()
    if args.check:
        problems = diff_cards(args.out)
        print("\n".join(problems) if problems else f"{args.out}: cards up to date")
        sys.exit(1 if problems else 0)
    for path in write_cards(args.out, prune=True):
        print(path)
