#!/usr/bin/env python3
"""Compiles the CUDA kernels offline (no GPU needed) and prints each kernel's registers, spills and shared memory.

Uses NVRTC and ptxas from the nvidia-cuda-nvrtc-cu12 / nvidia-cuda-nvcc-cu12 wheels, so kernel edits can be
checked on a machine without CUDA before spending GPU time:

    pip download --no-deps -d /tmp/nvrtc nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12
    (cd /tmp/nvrtc && for w in *.whl; do python3 -m zipfile -e "$w" x/; done; chmod +x x/nvidia/cuda_nvcc/bin/*)
    python3 native-decode/gpu/nvrtc_check.py --wheels /tmp/nvrtc/x [--arch sm_90] [--filter attn_decode]
"""
import argparse
import ctypes
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Same order as KERNEL_SOURCES in native-decode/src/cuda/device.rs.
SOURCES = ["kernels/common.cu", "kernels/layers.cu", "kernels/attention.cu"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", required=True, help="folder the two wheels were unpacked into")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--filter", default="", help="only report kernels whose name contains this")
    a = ap.parse_args()
    wheels = pathlib.Path(a.wheels)
    nvrtc = ctypes.CDLL(str(next(wheels.glob("nvidia/cuda_nvrtc/lib/libnvrtc.so*"))))
    src = "".join((ROOT / s).read_text() for s in SOURCES).encode()
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"baton_kernels.cu", 0, None, None):
        print("nvrtcCreateProgram failed")
        return 1
    opts = [f"--gpu-architecture={a.arch}".encode()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if log.value.strip():
        print(log.value.decode())
    if rc:
        print(f"NVRTC compile failed ({rc})")
        return 1
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "k.ptx"
        p.write_bytes(ptx.value)
        out = subprocess.run(
            [str(wheels / "nvidia/cuda_nvcc/bin/ptxas"), f"-arch={a.arch}", "-v", str(p), "-o", str(p) + ".cubin"],
            capture_output=True, text=True)
    if out.returncode:
        print(out.stderr)
        return 1
    name = None
    for line in out.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        elif name and a.filter in name and ("registers" in line or "spill" in line):
            print(f"{name:32s} {line.split(':', 1)[-1].strip()}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
