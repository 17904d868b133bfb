"""The parts of the GPU check that can be checked without a GPU."""

import importlib.util
from pathlib import Path

# benchmarks/ is not an installed package: load the script by path, as CI runs it.
_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "attention_kernels.py"
_SPEC = importlib.util.spec_from_file_location("attention_kernels", _PATH)
kernels = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(kernels)
attention_kernels, kernel_counts, table = (
    kernels.attention_kernels,
    kernels.kernel_counts,
    kernels.table,
)

HLO = """
%fmha = (bf16[8,12,1024,64]{3,2,1,0}, f32[8,12,1024]{2,1,0}) custom-call(...), custom_call_target="__cudnn$fmhaSoftmax"
%gemm.1 = f32[8192,768]{1,0} custom-call(...), custom_call_target="__cublas$lt$matmul"
%gemm.2 = f32[8192,768]{1,0} custom-call(...), custom_call_target="__cublas$lt$matmul"
%bwd = (bf16[8,12,1024,64]{3,2,1,0}) custom-call(...), custom_call_target="__cudnn$fmhaSoftmaxBackward"
"""


def test_kernel_counts_find_cudnn_attention_among_the_custom_calls():
    counts = kernel_counts(HLO)
    assert counts == {
        "__cudnn$fmhaSoftmax": 1,
        "__cublas$lt$matmul": 2,
        "__cudnn$fmhaSoftmaxBackward": 1,
    }
    assert attention_kernels(counts) == {
        "__cudnn$fmhaSoftmax": 1,
        "__cudnn$fmhaSoftmaxBackward": 1,
    }
    assert kernel_counts("%add = f32[2] add(%a, %b)") == {}


def test_the_table_reports_a_hang_instead_of_figures():
    rows = table(
        [
            {"implementation": "cudnn", "error": "no result after 25 s"},
            {
                "implementation": None,
                "compile_s": 12.3,
                "step_ms": 31.25,
                "attention_kernels": {"__cudnn$fmhaSoftmax": 2},
                "custom_calls": {"__cudnn$fmhaSoftmax": 2, "__cublas$gemm": 40},
            },
        ]
    ).splitlines()
    assert rows[2] == "| 'cudnn' | - | - | no result after 25 s | - |"
    assert rows[3] == "| None | 12.3 | 31.25 | __cudnn$fmhaSoftmax x2 | __cublas$gemm x40 |"
