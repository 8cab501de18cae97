"""The argument checks every door shares: counts and seeds, finite numbers, image batches, layer names, memory.

Each check returns the value it accepted (converted: an ``int`` for a count, a ``float`` for a scale) and raises an
error whose message names the parameter, the bad value and the fix. The error types live in :mod:`workbench.errors`:
:class:`~workbench.errors.ArgumentTypeError` (a ``TypeError``) for a value of the wrong kind, such as ``2.7`` or
``"7"`` where an int is needed, :class:`~workbench.errors.ArgumentValueError` (a ``ValueError``) for a value of the
right kind out of range, and :class:`~workbench.errors.BadInputError` for images that break the image convention.

This module imports only torch and :mod:`workbench.errors`, so every other module can build on it.

Example:
    >>> checked_int(8, "num_inference_steps", minimum=1)
    8
    >>> checked_int(2.7, "num_inference_steps")         # ArgumentTypeError: num_inference_steps=2.7 is not an int
    >>> check_images(torch.rand(2, 3, 32, 32) * 255)    # BadInputError: ... divide by 255
"""
from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentTypeError, ArgumentValueError, BadInputError, NonFiniteResultError

#: Seeds run from 0 to 2**64 - 1: what ``torch.Generator.manual_seed`` and the tiny world's hash tell apart.
MAX_SEED = 2**64 - 1

#: How far outside [0, 1] an image may stray (rounding in a resize or a colour conversion) and still be accepted.
IMAGE_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------ numbers
def checked_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (``operator.index``: ints, numpy ints, 0-d integer tensors), within the bounds.

    Args:
        value: the candidate.
        name: the parameter's name, as the caller wrote it (``"num_samples"``, ``"--num-samples"``).
        minimum, maximum: inclusive bounds, or ``None``.

    Returns:
        ``int``.

    Raises:
        ArgumentTypeError: a float (``2.7``, even ``3.0``), a string (``"7"``), a bool or anything else that is not
            an integer.
        ArgumentValueError: an int outside ``[minimum, maximum]``.

    Example:
        >>> checked_int(np.int64(4), "num_samples", minimum=1)
        4
    """
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{name}={value!r} is a bool; pass an int")
    try:
        out = operator.index(value)
    except TypeError:
        hint = ""
        if isinstance(value, float) and math.isfinite(value):
            hint = (f" (write {int(value)} or {int(value) + 1} yourself: nothing is rounded silently)"
                    if value != int(value) else f" (write {int(value)})")
        elif isinstance(value, str):
            hint = (f" (a string; write {value.strip()} without quotes)" if value.strip().lstrip("-").isdigit()
                    else " (a string)")
        raise ArgumentTypeError(f"{name}={value!r} is not an int{hint}") from None
    if minimum is not None and out < minimum:
        raise ArgumentValueError(f"{name}={out}: must be >= {minimum}")
    if maximum is not None and out > maximum:
        raise ArgumentValueError(f"{name}={out}: must be <= {maximum}")
    return out


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed as a plain ``int`` in ``[0, 2**64 - 1]`` (:data:`MAX_SEED`): numpy ints and 0-d integer tensors are
    converted, so a door that passes the returned value on never hands torch a numpy int. A larger or negative seed
    would wrap around and repeat another's draws, so it is refused.

    Example:
        >>> check_seed(7)
        7
    """
    seed = checked_int(seed, name)
    if not 0 <= seed <= MAX_SEED:
        raise ArgumentValueError(f"{name}={seed}: seeds run from 0 to 2**64 - 1; a seed outside that range would "
                                 "repeat the draws of another")
    return seed


def seeded_generator(seed: Any, name: str = "seed", device: torch.device | str = "cpu") -> torch.Generator:
    """The one way a door turns a seed into randomness: :func:`check_seed` (ints, numpy ints and 0-d integer
    tensors alike), then a fresh ``torch.Generator`` seeded with the plain ``int``. Drawing from it leaves the
    global RNGs alone.

    Example:
        >>> g = seeded_generator(np.int64(7))
        >>> torch.randn(2, generator=g)                   # the same two numbers for every 7
    """
    return torch.Generator(device).manual_seed(check_seed(seed, name))


def checked_float(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a finite ``float`` within the inclusive bounds.

    Raises:
        ArgumentTypeError: not a real number (a string, a tensor of several values, a bool).
        ArgumentValueError: NaN, an infinity, or a value outside ``[minimum, maximum]``.

    Example:
        >>> checked_float(3, "guidance_scale", minimum=0)
        3.0
    """
    if isinstance(value, (bool, str, bytes)):
        raise ArgumentTypeError(f"{name}={value!r} is not a number")
    try:
        out = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(out):
        raise ArgumentValueError(f"{name}={out}: must be a finite number (NaN or infinity would make every "
                                 "result NaN)")
    if minimum is not None and out < minimum:
        raise ArgumentValueError(f"{name}={out:g}: must be >= {minimum:g}")
    if maximum is not None and out > maximum:
        raise ArgumentValueError(f"{name}={out:g}: must be <= {maximum:g}")
    return out


def check_finite(value: Tensor, name: str) -> Tensor:
    """Raise :class:`~workbench.errors.ArgumentValueError` unless every entry of the tensor ``value`` is finite;
    returns it.

    Example:
        >>> check_finite(torch.ones(3), "direction")
    """
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise ArgumentValueError(f"{name} holds NaN or infinite values ({int(bad.sum())} of {value.numel()}); "
                                 "every result computed from it would be NaN")
    return value


def check_result(value: Tensor, what: str, cause: str) -> Tensor:
    """Raise :class:`~workbench.errors.NonFiniteResultError` if the tensor ``value`` that ``what`` computed holds
    NaN or infinite values; returns it. ``cause`` names the inputs that can make it so, and the fix, e.g.
    ``"guidance_scale=1e+30 (try a value below 20)"``.

    Example:
        >>> check_result(images, "base.sample", f"guidance_scale={guidance_scale:g}")
    """
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        raise NonFiniteResultError(f"{what} returned NaN or infinite values ({int(bad.sum())} of {value.numel()}) "
                                   f"from finite inputs; the likely cause is {cause}")
    return value


# ------------------------------------------------------------------------------------------ images
def check_images(images: Any, name: str = "images", *, channels: int | None = 3,
                 tolerance: float = IMAGE_TOLERANCE) -> Tensor:
    """Raise :class:`~workbench.errors.BadInputError` unless ``images`` is a float ``Tensor[B, channels, H, W]`` with
    finite values in [0, 1] (give or take ``tolerance``); returns it unchanged.

    The message says what to do: ``divide by 255`` for 8-bit data (a ``uint8`` tensor, or floats up to 255), and
    ``expected [0, 1]`` for anything else out of range (normalised images, say: a :class:`~workbench.Classifier`
    normalises by itself).

    Example:
        >>> check_images(torch.rand(2, 3, 32, 32))              # fine
        >>> check_images(torch.rand(2, 3, 32, 32) * 255)        # BadInputError: ... divide by 255
    """
    if not isinstance(images, Tensor):
        raise BadInputError(f"{name} is a {type(images).__name__}, not an image batch Tensor[B, 3, H, W] in [0, 1]")
    if images.ndim != 4:
        hint = f" It looks like one image: add a batch dimension with {name}[None]." if images.ndim == 3 else ""
        raise BadInputError(f"{name} has shape {list(images.shape)}; expected an image batch Tensor[B, 3, H, W].{hint}")
    if not images.is_floating_point():
        raise BadInputError(f"{name} has dtype {images.dtype}; images are floats in [0, 1]: divide 8-bit images by "
                            f"255 ({name}.float() / 255).")
    if channels is not None and images.shape[1] != channels:
        raise BadInputError(f"{name} has shape {list(images.shape)}; expected {channels} channels (RGB) in "
                            f"Tensor[B, {channels}, H, W]. Channels go in dimension 1 (NCHW).")
    if images.numel() == 0:
        return images
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        raise BadInputError(f"{name} holds NaN or Inf values ({int((~finite).sum())} of {images.numel()}).")
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if hi > 1 + tolerance and hi > 2:
        raise BadInputError(f"{name} has values up to {hi:.4g}: they look like 0..255 pixel values; divide by 255 "
                            "(images are floats in [0, 1]).")
    if hi > 1 + tolerance or lo < -tolerance:
        raise BadInputError(f"{name} has values in [{lo:.4g}, {hi:.4g}], expected [0, 1]. Pass images as floats in "
                            "[0, 1], not normalised: a workbench Classifier normalises them itself.")
    return images


# ------------------------------------------------------------------------------------------ names, devices, memory
def check_layer(layer: Any, name: str = "layer") -> str:
    """A layer name as ``model.named_modules()`` prints it (``"stages.3"``); an int or anything else is refused.

    Example:
        >>> check_layer("stages.3")
        'stages.3'
    """
    if not isinstance(layer, str):
        hint = " (a layer index; name it instead)" if isinstance(layer, int) and not isinstance(layer, bool) else ""
        raise ArgumentTypeError(f"{name}={layer!r} is not a layer name{hint}: layers are named as "
                                "model.named_modules() names them, e.g. 'stages.3' or 'blocks.5'; "
                                "wb.layer_table(model) lists them")
    return layer


def check_device(device: Any, name: str = "device") -> torch.device:
    """A device that exists on this machine, as a ``torch.device``: ``"cuda"`` without a GPU is refused with one
    line instead of the driver's error.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentValueError(f"{name}={device!r} is not a device; use 'cpu', 'cuda' or 'cuda:0'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentValueError(f"{name}={device!r}: no CUDA GPU is available here; use {name}=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentValueError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                                     f"numbered from 0")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ArgumentValueError(f"{name}={device!r}: MPS is not available here; use {name}=cpu")
    return dev


#: Where the container's memory controller lives (cgroup v2 ``memory.max``, or v1's ``memory/``).
CGROUP_ROOT = Path("/sys/fs/cgroup")

#: A cgroup limit this large means "no limit" (v1 writes 2**63 rounded down to a page).
_UNLIMITED = 2**60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(stat: Path, key: str) -> int:
    """The page cache the kernel reclaims before it kills (``inactive_file`` of a ``memory.stat``), or 0."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_free(root: Path | None = None) -> int | None:
    """Bytes the container may still take: its memory limit less its working set (usage less the reclaimable page
    cache), from cgroup v2 (``memory.max``, ``memory.current``, ``memory.stat``) or v1 (``memory/`` and its
    ``memory.limit_in_bytes``, ``memory.usage_in_bytes``, ``memory.stat``); ``None`` without a limit or a cgroup."""
    root = CGROUP_ROOT if root is None else root
    for folder, limit_file, usage_file, cache_key in (("", "memory.max", "memory.current", "inactive_file"),
                                                      ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                                                       "total_inactive_file")):
        limit = _read_int(root / folder / limit_file)
        if limit is not None and limit < _UNLIMITED:
            used = (_read_int(root / folder / usage_file) or 0) - _inactive_file(root / folder / "memory.stat",
                                                                                   cache_key)
            return max(limit - max(used, 0), 0)
    return None


def _address_space_free() -> int | None:
    """Bytes of address space left under ``ulimit -v`` (``RLIMIT_AS``), or ``None`` without such a limit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError, ValueError):
        return None
    return max(soft - used, 0)


def free_memory(device: torch.device | str = "cpu", *, cgroup_root: Path | None = None) -> int | None:
    """Bytes free for a new tensor on ``device``. On a CPU, the least of ``MemAvailable`` in ``/proc/meminfo``, the
    container's limit less its usage (:func:`cgroup_free`: a 2 GiB container is not told it has the host's 22 GiB)
    and what ``ulimit -v`` leaves; on a GPU, its free memory; ``None`` when it cannot be told."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    found = [cgroup_free(CGROUP_ROOT if cgroup_root is None else cgroup_root), _address_space_free()]
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    known = [v for v in found if v is not None]
    return min(known) if known else None


def check_allocation(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, what: str) -> None:
    """Refuse to build a tensor of ``shape`` that would take more than half the free memory of ``device`` (the other
    half is what using it takes), saying how large it would be, instead of letting the process be killed.

    Example:
        >>> check_allocation((1, 10**6, 192, 4, 4), torch.float32, "cpu", "interpolate(n_steps=1000000)")
    """
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    free = free_memory(device)
    if free is not None and nbytes > free / 2:
        raise ArgumentValueError(f"{what} would build a Tensor{list(shape)} of {nbytes / 2**30:.1f} GiB, more than "
                                 f"half the {free / 2**30:.1f} GiB free on {torch.device(device)} (the rest is needed "
                                 "to use it); ask for fewer")


def check_image_count(count: Any, name: str, *, copies: int = 1, size: int = 32,
                      device: torch.device | str = "cpu") -> int:
    """``count`` as an int >= 1, refused up front (before any model loads) when ``count * copies`` float32 images
    of ``3 x size x size`` cannot fit (:func:`check_allocation`): ``--num-samples 100000`` is told its size instead
    of being killed half-way. ``size`` defaults to the tiny world's 32 px, a lower bound for larger models.

    Example:
        >>> check_image_count(10**8, "--num-images")      # ArgumentValueError: --num-images 100000000 would build ...
    """
    count = checked_int(count, name, minimum=1)
    check_allocation((count * copies, 3, size, size), torch.float32, device, f"{name} {count}")
    return count
