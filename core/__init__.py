"""Low-level helpers every stage shares: errors, coordinates, sampling, image resizing, atomic files and
cache validation, weights and cache paths, devices, and the RAFT checkpoint loader. Nothing here imports
a stage; stages import only from here (and from their own package)."""
