"""Neural network building blocks: attention, normalization, backbones."""
