"""Where the work runs: the device, its number format, its threads, and torchrun's process group.

A process started by torchrun (or by `train.processes` > 1, which starts torchrun's launcher) finds
RANK, WORLD_SIZE and LOCAL_RANK in its environment; without them it is rank 0 of 1 and nothing here
touches torch.distributed.
"""
import ctypes
import datetime
import os
import platform
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import DeviceError, MrisegError


class DistributedError(MrisegError):
    """The processes cannot work together: too few GPUs, a process group that cannot form."""


def pick_device(name="auto", where="params.yaml: train.device"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{where}=cuda, but no CUDA GPU is visible (use auto or cpu)")
    return torch.device(name)


def bf16_is_native(device):
    """Whether the device computes bf16 itself: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX.
    Elsewhere (AVX2 CPUs) PyTorch emulates bf16, 6-12 times slower than fp32
    (benchmarks/results/speed/amp-cpu.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)()
                   for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def autocast(device, amp):
    """bf16 autocast by train.amp: true, false or auto (bf16 where the device computes it natively). bf16
    needs no loss scaling."""
    enabled = bf16_is_native(device) if amp == "auto" else bool(amp)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def inference_amp(trained_amp):
    """The precision a checkpoint predicts in: bf16 where native, whatever it was trained with (fp32 gives a
    bf16-trained network's labels), unless it was trained in fp32 (amp false), which it keeps."""
    return False if trained_amp is False else "auto"


def usable_cores():
    """The cores this process may run on (os.sched_getaffinity exists on Linux only)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_all_cores():
    """Threads for every usable core, unless OMP_NUM_THREADS says otherwise (set by the user, or by the
    train stage for several processes)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cores())


def cpu_name():
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what platform knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "CPU")


def describe_device(device):
    """What trained a model, for the records: the GPU's or the CPU's name, and the torch version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    return {"device": name, "torch": str(torch.__version__)}  # a TorchVersion would not load with weights_only


def launched():
    """(rank, world size, local rank) as torchrun set them; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def die_with_launcher():
    """torchrun starts each process in a session of its own, so a SIGKILL to the launcher's process group
    (a killed `dvc repro`) would leave the ranks training on as orphans, writing outputs nobody waits
    for. On Linux, have the kernel kill this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def join_processes(device_name, where="params.yaml: train.device", timeout_s=600):
    """This process's device, after joining torchrun's process group when there are several processes:
    NCCL and one GPU per local rank on CUDA, gloo on the CPU."""
    rank, world, local = launched()
    device = pick_device(device_name, where)
    if world == 1:
        return device
    die_with_launcher()
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local >= visible:
            raise DistributedError(f"{int(os.environ.get('LOCAL_WORLD_SIZE', local + 1))} processes on this "
                                   f"machine, but {visible} CUDA GPU(s) visible: one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:  # a store or rendezvous that cannot be reached
            first = (str(e).strip().splitlines() or ["no message"])[0]
            raise DistributedError(f"rank {rank} of {world} cannot join the process group "
                                   f"(MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                                   f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {first}") from None
    return device


def rank_and_world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def sum_over_ranks(*tensors):
    """Each tensor summed over every process, in place (no-op in a single process)."""
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors


def broadcast_from_rank0(tensors):
    """Every process's tensors set to rank 0's, in place (no-op in a single process)."""
    if dist.is_initialized():
        for t in tensors:
            dist.broadcast(t, src=0)


def broadcast_object(obj):
    """Rank 0's obj (any picklable object, tensors kept on the CPU) on every process (obj in a single process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_over_ranks(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if dist.is_initialized():
        dist.barrier()


def leave_processes():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
