# Compile-checks the fused kernels (codegen/kernels/*.cu) with NVRTC on a machine without a GPU: each
# body wrapped as MLX's custom_kernel.cpp wraps it (inputs `const T* name`, plus `name_shape` where the
# body mentions it; outputs `T* name`; template arguments as `constexpr int` / `using T`), for bf16 and
# f32, compiled for sm_90. It catches what would otherwise first fail on a lent GPU. Needs pip and the
# network once: NVRTC and the CUDA headers come from NVIDIA's wheels, unpacked into CACHE.
#   usage: python3 codegen/kernels/nvrtc_check.py [CACHE=/tmp/qwen-nvrtc]
import ctypes, os, subprocess, sys, zipfile
CACHE = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qwen-nvrtc"
SITE = f"{CACHE}/site/nvidia"
if not os.path.exists(f"{SITE}/cuda_nvrtc/lib/libnvrtc.so.12"):
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--platform", "manylinux2014_x86_64", "-d", f"{CACHE}/whl",
                    "nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-runtime-cu12==12.9.79",
                    "nvidia-cuda-cccl-cu12==12.9.27"], check=True)
    for w in os.listdir(f"{CACHE}/whl"):
        zipfile.ZipFile(f"{CACHE}/whl/{w}").extractall(f"{CACHE}/site")
nvrtc = ctypes.CDLL(f"{SITE}/cuda_nvrtc/lib/libnvrtc.so.12")
KD = os.path.dirname(os.path.abspath(__file__))
header = open(f"{KD}/common.cuh").read()
kernels = {  # name: (inputs, a (name, type) where the type is fixed; outputs; template ints)
    "ln_modulate": (["x", "shift", "scale"], ["out"], {"D": 3072, "EPS_BITS": 897988541}),
    "gate_residual_ln_modulate": (["x", "y", "gate", "shift", "scale"], ["h", "out"], {"D": 3072, "EPS_BITS": 897988541}),
    "gate_residual": (["x", "y", "gate"], ["out"], {"D": 3072}),
    "gelu_tanh": (["x"], ["out"], {}),
    "joint_qkv_heads": (["t_qkv", "t_bias", "t_wq", "t_wk", ("t_cos", "float"), ("t_sin", "float"),
                         "i_qkv", "i_bias", "i_wq", "i_wk", ("i_cos", "float"), ("i_sin", "float")],
                        ["q", "k", "v"], {"H": 24, "DH": 128, "EPS_BITS": 897988541}),
}
ok = True
for name, (ins, outs, tmpl) in kernels.items():
    body = open(f"{KD}/{name}.cu").read()
    for T in ("__nv_bfloat16", "float"):
        params = []
        for i in ins:
            n, t = (i, T) if isinstance(i, str) else i
            params.append(f"const {t}* {n}")
            if f"{n}_shape" in body:
                params.append(f"const __grid_constant__ Shape {n}_shape")
        params += [f"{T}* {o}" for o in outs]
        consts = "".join(f"  constexpr int {k} = {v};\n" for k, v in tmpl.items())
        src = ("#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n#include <cuda/std/array>\n" + header +
               "\nnamespace mlx::core::cu {\nusing Shape = cuda::std::array<int32_t, 10>;\n"
               f"__global__ void k_{name}({', '.join(params)}) {{\n{consts}  using T = {T};\n{body}\n}}\n}}\n")
        prog = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(), 0, None, None) == 0
        opts = [b"--gpu-architecture=compute_90", b"--std=c++17", b"--device-as-default-execution-space",
                f"-I{SITE}/cuda_runtime/include".encode(), f"-I{SITE}/cuda_cccl/include".encode()]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace").strip()
        print(f"{name} [{T}]: {'ok' if rc == 0 else 'FAILED'}" + (f"\n{text}" if text else ""))
        ok &= rc == 0
sys.exit(0 if ok else 1)
