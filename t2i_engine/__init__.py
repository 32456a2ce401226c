"""t2i-engine: text-to-image models as training-data factories.

Nothing heavy is imported here: encoder worker processes and the CLI's argument checks must
start without torch.
"""

__version__ = "0.1.0"
