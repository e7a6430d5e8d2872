"""The Triton conv's backward across programs and in the model's strides, through Triton's interpreter, in a
fresh process (the ``run_interpreted`` fixture)."""
from pathlib import Path

CASES = Path(__file__).with_name("triton_conv_interpreter_cases.py")


def test_conv_backward_geometry_under_the_interpreter(run_interpreted):
    run_interpreted(CASES, timeout=600)
