"""timm model families. Importing a family module registers its models with timm."""
# from . import dcls_convnext  # (lands shortly)
# family modules are added above this line, one import each
