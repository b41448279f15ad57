"""The fuse-study pipeline: select, register, fuse, write, report."""
