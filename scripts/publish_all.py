#!/usr/bin/env python
"""Push every converted model folder to its Hub repo (`dcls-zoo/<architecture>.<tag>`).

Expects the folders `dcls-zoo convert` wrote, one per published model, under one root:

    python scripts/publish_all.py outputs/hub --dry-run     # check every folder, list what would be sent
    python scripts/publish_all.py outputs/hub               # push (needs network and a write token)

Folders of models without a facts row are skipped with a note; a folder that fails the checks stops the run.
"""
import argparse
import sys
from pathlib import Path

import dcls_zoo  # noqa: F401  (registers the architectures the configs name)
from dcls_zoo.hub import HUB_ORG, hub_id, published_models, push_folder

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding one converted folder per model, named by model")
    parser.add_argument("--org", default=HUB_ORG, help=f"Hub organisation (default {HUB_ORG})")
    parser.add_argument("--dry-run", action="store_true", help="check and list; send nothing")
    args = parser.parse_args()
    published = {f.name for f in published_models()}
    folders = sorted(p for p in args.root.iterdir() if p.is_dir())
    if not folders:
        sys.exit(f"no converted folders under {args.root}")
    for folder in folders:
        if folder.name not in published:
            print(f"skip {folder}: {folder.name} has no facts row (dcls_zoo.hub.cards.FACTS)")
            continue
        try:
            plan = push_folder(folder, hub_id(folder.name, args.org), dry_run=args.dry_run)
        except (ValueError, RuntimeError) as err:
            sys.exit(f"publish_all: {folder}: {err}")
        print(("would send " if args.dry_run else "sent ") + plan.describe())
