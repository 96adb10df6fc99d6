"""Reading a checkpoint's tensors, and checking that they fit a model, key by key, before loading it
strictly: one place for every network whose weights pitrack reads (RAFT, DINOv2, GeoAware, XFeat, ALIKED,
DISK, LightGlue)."""
import collections

from core.errors import WeightsError, shortened


def read_state_dict(path, unwrap=("state_dict", "model"), member=None):
    """The tensors of a checkpoint file (``torch.load(weights_only=True)``; a ``.safetensors`` file by
    safetensors): the dict ``member`` inside it when given (e.g. DISK's 'extractor'), else the dicts named
    by ``unwrap`` it wraps, unwrapped in that order, else the file's dict itself. One WeightsError naming the file when it does not read
    (truncated, not a zip, pickled code) or is not a non-empty dict of tensors."""
    import torch
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's checkpoint problem
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(f"cannot read checkpoint {path}: {type(e).__name__}: {shortened(first)}") from None
    for wrapper in (member,) if member is not None else unwrap:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"checkpoint {path} is not a state dict of tensors")
    return collections.OrderedDict(obj)


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
