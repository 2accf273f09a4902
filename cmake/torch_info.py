"""Print what the wmpo build needs to know about the installed torch, as CMake `set()` lines.

Run by CMakeLists.txt with the Python that runs the build; it replaces find_package(Torch), whose
CUDA discovery aborts the whole configure (CPU extension included) when torch has CUDA and the
machine has no usable CUDA toolkit.
"""
import os
import sys

import torch
from torch.utils import cpp_extension


def cmake_list(items):
    return ";".join(str(i).replace("\\", "/") for i in items)


lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
facts = {
    "WMPO_TORCH_VERSION_DETECTED": torch.__version__.split("+")[0],
    "WMPO_TORCH_CUDA_VERSION_DETECTED": torch.version.cuda or "",
    "WMPO_TORCH_INCLUDE_DIRS": cmake_list(cpp_extension.include_paths()),
    "WMPO_TORCH_LIB_DIR": lib_dir.replace("\\", "/"),
    "WMPO_TORCH_CXX11_ABI": int(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
}
sys.stdout.write("".join(f'set({k} "{v}")\n' for k, v in facts.items()))
