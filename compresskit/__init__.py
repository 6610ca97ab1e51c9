"""compresskit: train VGG-family CNNs on small image sets, analyze them per layer, and shrink them."""

import logging

from compresskit.api import analyze
from compresskit.errors import CompresskitError

# torch-pruning imports torch.utils.cpp_extension, which logs a warning about CUDA_HOME on every
# machine without a CUDA toolkit; it says nothing about compresskit's own use of torch.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__all__ = ["CompresskitError", "analyze"]
__version__ = "0.1.0"


# Model compression and checkpoints for any nn.Module. Thin wrappers: torch and torch-pruning load
# on the first call, not at `import compresskit` (`load` never needs torch-pruning).
def prune(model, example_inputs, ratio=0.5, importance="l1", allocate=None, calibration=None,
          ignored_layers=None, round_to=None, *, seed=0):  # fmt: skip
    """A pruned copy of any model; see `compresskit.compress.prune_any.prune_model`."""
    from compresskit.compress.prune_any import prune_model

    return prune_model(model, example_inputs, ratio, importance, allocate, calibration, ignored_layers,
                       round_to, seed=seed)  # fmt: skip


def lowrank(model, *, energy=None, rank_ratio=None, layers=None, only_if_cheaper=True, example_inputs=None):
    """A low-rank factorized copy of any model and its plan; see
    `compresskit.compress.lowrank_any.lowrank_model`."""
    from compresskit.compress.lowrank_any import lowrank_model

    return lowrank_model(model, energy=energy, rank_ratio=rank_ratio, layers=layers,
                         only_if_cheaper=only_if_cheaper, example_inputs=example_inputs)  # fmt: skip


def save(model, path, *, factory=None, factory_kwargs=None, spec=None, meta=None):
    """Write any model (compressed or not) as a checkpoint; see `compresskit.model_io.save`."""
    from compresskit.model_io import save as save_model

    return save_model(model, path, factory=factory, factory_kwargs=factory_kwargs, spec=spec, meta=meta)


def load(path, *, trust_factory=None, device="cpu"):
    """The model of a checkpoint, without torch-pruning; see `compresskit.model_io.load`."""
    from compresskit.model_io import load as load_model

    return load_model(path, trust_factory=trust_factory, device=device)


__all__ += ["load", "lowrank", "prune", "save"]
