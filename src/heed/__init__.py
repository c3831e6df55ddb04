"""heed: turn a pretrained causal language model into an instruction follower.

The package follows the pipeline: records → prompt text → token ids + labels → batches →
training → generation → evaluation.
"""

__version__ = "0.1.0"
