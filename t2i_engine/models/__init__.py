"""Models: the registry of every model the engine knows, their architecture configs, the tiny
random-weight test models, FLOP counting, and the plain diffusers pipeline of a registry model
(pipelines.py). Nothing here knows about kernels, backends or datasets.

Submodules are imported where used; importing this package loads neither torch nor diffusers.
"""
