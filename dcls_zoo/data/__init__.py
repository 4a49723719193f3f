"""Small reference data shipped with the package (label names) and data-set readers (`spikes`: SHD/SSC)."""
