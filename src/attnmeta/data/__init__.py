"""Data sets: Omniglot, miniImageNet, text."""
