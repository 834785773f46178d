"""Data sets for every layout (VAS, VGGSound), the feature sampler, and the paths of a clip's files."""
