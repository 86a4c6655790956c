"""Choosing the torch device, counting usable CPU cores, seeding torch from a
``random_state``, and bringing a user's tensors to the host."""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._validation import check_tensor_has_data, unmasked

SUPPORTED_DEVICE_TYPES = ("cpu", "cuda", "mps")


def fork_safe_lock():
    """A reentrant lock that a forked process gets anew.

    A process forked while another thread holds a lock inherits it held, by a thread
    the fork does not have, and would wait for it forever.
    """
    lock = threading.RLock()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lock._at_fork_reinit)
    return lock


# torch's global RNG and default dtype are shared by every thread of the process: two
# fits in threads (joblib's threading backend, a web server) that seed or switch them
# at once would draw each other's numbers. Blocks that change them hold this lock; it
# is reentrant because those blocks nest.
GLOBAL_TORCH_STATE_LOCK = fork_safe_lock()


def parsed_device(device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked for its form only, not for whether
    this machine has it (``"auto"`` is resolved, though).

    For a parameter that some clusterers ignore: a typo is an error at once, while
    ``"cuda"`` on a machine without one is left to the clusterers that use it.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device; "
            f"got {device!r} of type {type(device).__name__}."
        )
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(
            f"device={device!r} is not a device name; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if resolved.type not in SUPPORTED_DEVICE_TYPES:  # e.g. "meta" or "xla", which fail later deep in torch
        raise ValueError(
            f"device={device!r} is not supported; use 'auto', 'cpu', 'cuda', 'cuda:N', 'mps', "
            "or a torch.device of one of those types."
        )
    return resolved


def resolve_device(device) -> torch.device:
    """Turn a user's ``device`` parameter into a :class:`torch.device`.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"} or torch.device
        ``"auto"`` picks CUDA when a CUDA device is present, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If ``device`` is not a device name, is of a type other than CPU, CUDA or
        MPS, or names a CUDA device that this machine does not have.
    """
    resolved = parsed_device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but no CUDA device is available on this machine; "
                "use device='auto' or device='cpu'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA "
                "device(s); pick an index below that."
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available; use device='cpu'.")
    return resolved


def checked_random_state(random_state):
    """scikit-learn's ``check_random_state``, with an error that names the parameter."""
    try:
        return check_random_state(random_state)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "random_state must be None, an int in [0, 2**32 - 1] or a "
            f"numpy.random.RandomState instance; got {random_state!r}."
        ) from exc


def torch_seed_from(random_state) -> int:
    """Draw a torch seed from a scikit-learn ``random_state`` (None, int or RandomState)."""
    return int(checked_random_state(random_state).randint(np.iinfo(np.int32).max))


@contextlib.contextmanager
def seeded_torch(random_state, *, seed=True):
    """Run a block with torch's global RNG seeded from ``random_state``, then restore it.

    Random weight initialisation in timm uses the global torch RNG; forking it keeps
    the caller's own random stream untouched. With ``seed=False`` the stream is
    only forked, for a block whose random draws are all replaced afterwards:
    ``random_state`` is then not drawn from (scikit-learn draws from numpy's global
    stream only when randomness is used). Blocks in other threads that do the same
    wait for this one; other code that draws from torch's global stream in another
    thread meanwhile is not held back, and changes what this block draws.
    """
    with GLOBAL_TORCH_STATE_LOCK, torch.random.fork_rng(devices=[]):
        if seed:
            # The CPU generator only, whose state the fork restores: torch.manual_seed
            # would also reseed every CUDA device (or queue that until CUDA starts),
            # changing the caller's GPU stream for good.
            torch.default_generator.manual_seed(torch_seed_from(random_state))
        yield


def host_array(data, name):
    """``data`` as a CPU numpy array when it is a torch tensor, else ``data`` itself.

    A masked array without masked values is its data; masked values, and tensors
    without readable values (meta, nested, sparse), are refused, naming ``name``.

    Features from a user's own torch code may sit on a GPU, be bfloat16, or still
    require grad, and numpy takes none of these (its message for bfloat16 is "Got
    unsupported ScalarType BFloat16"). Float types numpy lacks (bfloat16, float8)
    become float32; the others keep their dtype, so that a tensor is treated as the
    same numpy array would be. The tensor itself is left as it was.
    """
    data = unmasked(data, name)
    if not isinstance(data, torch.Tensor):
        return data
    data = check_tensor_has_data(data, name).detach()
    if data.is_floating_point() and data.dtype not in (torch.float16, torch.float32, torch.float64):
        return data.to("cpu", torch.float32).numpy()
    return data.cpu().resolve_conj().resolve_neg().numpy()


def cpu_computes_in_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), with which
    oneDNN runs a backbone in bfloat16 faster than in float32; elsewhere it is emulated."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def cpu_computes_in_float16() -> bool:
    """Whether this CPU has float16 matrix instructions (AMX-FP16); elsewhere float16
    is emulated, slowly."""
    return bool(getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)())


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# A container's memory limit as cgroup v2, then v1, keep it: the files of the limit,
# the use and the statistics, and the statistic of file pages not used lately (v1's
# "total_" counts the groups below too). v1 writes no limit as a number near 2**63.
_CGROUP_MEMORY_FILES = (
    ("", "memory.max", "memory.current", "inactive_file"),
    ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
)
_NO_CGROUP_LIMIT = 2 ** 60


def _cgroup_memory_left(cgroup="/sys/fs/cgroup"):
    """What a Linux cgroup (a container's memory limit) lets this process still
    take, or None where no limit is set or none can be read. The files it has read
    and not used since count as free: the kernel drops them first."""
    for folder, limit_file, used_file, inactive in _CGROUP_MEMORY_FILES:
        folder = os.path.join(cgroup, folder)
        try:
            with open(os.path.join(folder, limit_file)) as limit, open(os.path.join(folder, used_file)) as used, \
                    open(os.path.join(folder, "memory.stat")) as stat:
                maximum = limit.read().strip()
                if maximum == "max" or int(maximum) >= _NO_CGROUP_LIMIT:
                    return None
                reclaimable = next((int(line.split()[1]) for line in stat if line.startswith(f"{inactive} ")), 0)
                return int(maximum) - int(used.read()) + reclaimable
        except (OSError, ValueError):
            continue
    return None


def available_memory(meminfo="/proc/meminfo") -> int | None:
    """Bytes of memory this process may take without swapping: Linux's MemAvailable
    (less where a container's limit says so), elsewhere the physical memory; None
    where neither can be read (Windows)."""
    available = None
    try:
        with open(meminfo) as lines:
            available = next((int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        pass
    if available is None:  # not Linux, or a kernel older than 3.14
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            pass
    known = [memory for memory in (available, _cgroup_memory_left()) if memory is not None]
    return min(known) if known else None
