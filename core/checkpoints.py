"""Checking that a checkpoint's tensors fit a model, key by key, before loading it strictly."""
from core.errors import WeightsError


def check_fits(state, target, what, hint=""):
    """WeightsError naming ``what`` (e.g. 'checkpoint X does not fit Y') and the first key that does not fit:
    a key of ``state`` the model lacks, a shape that differs from ``target``'s, or a model key ``state`` lacks."""
    hint = f" {hint}" if hint else ""
    for k, v in state.items():
        if k not in target:
            raise WeightsError(f"{what}: key '{k}' (shape {tuple(v.shape)}) has no counterpart in the model{hint}")
        if tuple(v.shape) != tuple(target[k].shape):
            raise WeightsError(f"{what}: key '{k}' has shape {tuple(v.shape)}, the model needs "
                               f"{tuple(target[k].shape)}{hint}")
    missing = [k for k in target if k not in state]
    if missing:
        raise WeightsError(f"{what}: {len(missing)} model tensors missing, first '{missing[0]}' "
                           f"(shape {tuple(target[missing[0]].shape)}){hint}")


def load_strictly(model, state, what):
    """Load ``state`` into ``model`` after :func:`check_fits` and a check that every value is finite; a
    failure is one WeightsError naming ``what``."""
    import torch
    check_fits(state, model.state_dict(), what)
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise WeightsError(f"{what}: holds non-finite weights")
    model.load_state_dict(state, strict=True)
    return model
