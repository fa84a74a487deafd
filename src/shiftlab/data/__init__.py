"""Data: in-memory tensor datasets, loaders of real files, shifts, augmentation, episodes."""
