#!/usr/bin/env python
"""Push every converted model folder to its Hub repo (`dcls-zoo/<architecture>.<tag>`).

Expects the folders `dcls-zoo convert` wrote, one per published model, named after it, under one root:

    python scripts/publish_all.py outputs/hub --dry-run     # check every folder, list what would be sent
    python scripts/publish_all.py outputs/hub               # push (needs network and a write token)

Folders of models without a facts row (dcls_zoo.hub.cards.FACTS) are skipped with a note; every folder is
checked before the first upload.
"""
import argparse
import sys
from pathlib import Path

import dcls_zoo  # noqa: F401  (registers the architectures the configs name)
from dcls_zoo.hub import HUB_ORG
from dcls_zoo.hub.push import publish_all

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding one converted folder per model, named by model")
    parser.add_argument("--org", default=HUB_ORG, help=f"Hub organisation (default {HUB_ORG})")
    parser.add_argument("--dry-run", action="store_true", help="check and list; send nothing")
    args = parser.parse_args()
    try:
        plans, skipped = publish_all(args.root, org=args.org, dry_run=args.dry_run)
    except (ValueError, RuntimeError, OSError) as err:
        sys.exit(f"publish_all: error: {err}")
    for name in skipped:
        print(f"skipped {name}: not a published model")
    for plan in plans:
        print(("would send " if args.dry_run else "sent ") + plan.describe())
