"""The engine: recipe -> plan -> generator -> shard writer -> manifest.

Submodules are imported where used; importing this package loads neither torch nor diffusers.
"""
