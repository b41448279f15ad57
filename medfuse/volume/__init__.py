"""Volume work: the volume type, registration, intensity mapping, slice dispatch."""
