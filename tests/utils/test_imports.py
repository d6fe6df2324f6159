"""skip_deepspeed_import: the inference tools start without DeepSpeed, and mmengine still works."""
import subprocess
import sys

SCRIPT = r"""
import sys
from omg_llava.utils.imports import skip_deepspeed_import
assert skip_deepspeed_import()
import importlib.util
assert importlib.util.find_spec('deepspeed') is None
import mmengine.runner  # imports DeepSpeed when it can
from omg_llava.inference.chat import OMGLLaVAChat  # noqa: F401
assert sys.modules['deepspeed'] is None
assert not skip_deepspeed_import()  # already decided: left as it is
print('ok')
"""


def test_inference_imports_work_without_deepspeed():
    out = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith('ok')
