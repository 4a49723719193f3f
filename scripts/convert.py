#!/usr/bin/env python
"""Convert an original checkpoint into a Hub-ready folder; same as `dcls-zoo convert`.

    python scripts/convert.py dcls_convnext_tiny.bilinear_in1k convnext_dcls_tiny_1k_224_ema.pth \
        out/dcls_convnext_tiny.bilinear_in1k
"""
import sys

from dcls_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
